"""``motion_ft`` pipeline: clips (+ stills) + captions (+ the image LoRA) -> motion LoRA, videos, summary.

Chained after data prep in ``pipeline_registry``. It reads ``image_lora`` from the catalog, so
Kedro-Viz shows the edge from ``image_ft``; when no image LoRA exists yet it trains on the base.

With motion concepts (``motion_ft.concepts``) it trains one motion LoRA per concept, each in a
Kedro namespace of the concept's name: ``<concept>.motion_lora``, ``<concept>.motion_ft_samples``,
... (the catalog's ``{concept}.*`` dataset factories put them under ``motion_concepts/<concept>/``).
Without concepts it is the one LoRA on every clip, ``motion_lora``.
"""

from collections.abc import Sequence
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from .nodes import select_concept_clips, train_motion_lora

_OUTPUTS = ["motion_lora", "motion_ft_spatial_lora", "motion_ft_samples", "motion_ft_summary"]
_SHARED_INPUTS = {"clips", "frame_manifest", "captions", "raw_videos", "stills", "image_lora", "base_model",
                  "motion_adapter"}


def _for_concept(function, concept: str):
    """``function`` with its ``concept`` argument bound, keeping its name for Kedro's logs."""
    return update_wrapper(partial(function, concept=concept), function)


def _concept_pipeline(concept: str) -> Pipeline:
    """The motion LoRA of one concept, in the namespace ``concept``."""
    return Pipeline(
        [
            Node(_for_concept(select_concept_clips, concept),
                 inputs=["clips", "frame_manifest", "captions", "raw_videos", "params:concept"],
                 outputs="concept_clips", name="select_concept_clips"),
            Node(_for_concept(train_motion_lora, concept),
                 inputs=["concept_clips", "stills", "captions", "image_lora", "base_model", "motion_adapter",
                         "params:base_model", "params:motion_ft"],
                 outputs=_OUTPUTS, name="train_motion_lora"),
        ],
        namespace=concept,
        inputs=_SHARED_INPUTS,
        parameters={"params:base_model": "params:base_model", "params:motion_ft": "params:motion_ft",
                    "params:concept": f"params:motion_ft.concepts.{concept}"},
    )


def create_pipeline(concepts: Sequence[str] = (), **kwargs) -> Pipeline:
    """One motion LoRA on every clip, or one per concept of ``concepts`` (names of ``motion_ft.concepts``)."""
    if concepts:
        return sum((_concept_pipeline(concept) for concept in concepts), Pipeline([]))
    return Pipeline(
        [
            Node(
                train_motion_lora,
                inputs=["clips", "stills", "captions", "image_lora", "base_model", "motion_adapter", "params:base_model",
                        "params:motion_ft"],
                outputs=_OUTPUTS,
                name="train_motion_lora",
            )
        ]
    )
