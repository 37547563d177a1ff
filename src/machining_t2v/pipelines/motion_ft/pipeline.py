"""``motion_ft`` pipeline: clips (+ stills) + captions (+ the image LoRA) -> motion LoRA, videos, summary.

Chained after data prep in ``pipeline_registry``. It reads ``image_lora`` from the catalog, so
Kedro-Viz shows the edge from ``image_ft``; when no image LoRA exists yet it trains on the base.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import train_motion_lora


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_motion_lora,
                inputs=["clips", "stills", "captions", "image_lora", "base_model", "motion_adapter", "params:base_model",
                        "params:motion_ft"],
                outputs=["motion_lora", "motion_ft_spatial_lora", "motion_ft_samples", "motion_ft_summary"],
                name="train_motion_lora",
            )
        ]
    )
