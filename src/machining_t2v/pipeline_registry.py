"""Project pipelines.

Single steps (``sample_data``, ``frames``, ``captions``) run on their own; the user-facing
fine-tuning pipelines chain what they need, so ``kedro run --pipelines=image_ft`` on a fresh
clone goes from sample videos to a trained LoRA. ``sample_data`` writes nothing when the raw
folder already holds videos.

Pipelines are imported explicitly rather than with ``find_pipelines``: Kedro only discovers
the pipelines named on the command line, and the chains need their upstream steps.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from machining_t2v.pipelines import captions, frames, image_ft, motion_ft, sample_data


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines."""
    data_prep = sample_data.create_pipeline() + frames.create_pipeline() + captions.create_pipeline()
    image_chain = data_prep + image_ft.create_pipeline()
    motion_chain = data_prep + motion_ft.create_pipeline()
    return {
        "sample_data": sample_data.create_pipeline(),
        "frames": frames.create_pipeline(),
        "captions": captions.create_pipeline(),
        "data_prep": data_prep,
        "image_ft": image_chain,
        "motion_ft": motion_chain,
        # image_ft runs before motion_ft: its LoRA is merged into the motion training's base.
        "__default__": image_chain + motion_chain,
    }
