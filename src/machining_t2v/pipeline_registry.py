"""Project pipelines.

Single steps (``sample_data``, ``frames``, ``captions``) run on their own; the user-facing
fine-tuning pipelines chain what they need, so ``kedro run --pipelines=image_ft`` on a fresh
clone goes from sample videos to a trained LoRA. ``sample_data`` writes nothing when the raw
folder already holds videos.

Pipelines are imported explicitly rather than with ``find_pipelines``: Kedro only discovers
the pipelines named on the command line, and the chains need their upstream steps.

With motion concepts in the conf files (``motion_ft.concepts``), ``motion_ft`` trains one motion
LoRA per concept, each in its own namespace, and the evaluation compares them
(:mod:`machining_t2v.kedro_glue.concepts`).

The starter model's pretraining (``starter``, ``starter_check``) is a separate Kedro project for
maintainers, in ``tools/starter``; nothing here imports it.
"""

from __future__ import annotations

import warnings

from kedro.pipeline import Pipeline

from machining_t2v.kedro_glue.concepts import configured_concepts
from machining_t2v.pipelines import (
    captions,
    evaluation,
    frames,
    generate,
    image_ft,
    motion_ft,
    sample_data,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines."""
    concepts = configured_concepts()
    with warnings.catch_warnings():
        # The evaluation and generate nodes read each concept's LoRA by its namespaced name
        # (<concept>.motion_lora) from outside the namespace. Kedro warns about dotted dataset names
        # because they look like namespace outputs; these are namespace outputs.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'", category=UserWarning)
        evaluation_pipeline = evaluation.create_pipeline(concepts)
        generate_pipeline = generate.create_pipeline(concepts)
    data_prep = sample_data.create_pipeline() + frames.create_pipeline() + captions.create_pipeline()
    # Each training chain ends with the evaluation of the LoRAs on disk (what it just trained).
    image_chain = data_prep + image_ft.create_pipeline() + evaluation_pipeline
    motion_chain = data_prep + motion_ft.create_pipeline(concepts) + evaluation_pipeline
    return {
        "sample_data": sample_data.create_pipeline(),
        "frames": frames.create_pipeline(),
        "captions": captions.create_pipeline(),
        "data_prep": data_prep,
        "image_ft": image_chain,
        "motion_ft": motion_chain,
        "evaluation": evaluation_pipeline,
        "generate": generate_pipeline,
        # image_ft runs before motion_ft: its LoRA is merged into the motion training's base.
        # The evaluation nodes appear once and run last (they read both LoRAs).
        "__default__": image_chain + motion_chain,
    }
