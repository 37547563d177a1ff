"""``generate`` pipeline: a prompt (``generate.prompt``) -> a GIF and an H.264 mp4 in
data/07_model_output/generated, with the project's LoRAs (or LoRAs given by path).

    kedro run --pipelines=generate \
        --params "generate.prompt=pocket milling on a milling machine with a steel workpiece"
"""

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from .nodes import generate_clip


def _inputs(concepts: Sequence[str]) -> dict[str, str]:
    """The node's inputs by argument name: with motion concepts, also each concept's LoRA, by concept
    name (``generate.motion_concept`` picks one)."""
    inputs = {"image_lora": "image_lora", "motion_lora": "motion_lora", "base": "base_model",
              "adapter": "motion_adapter", "base_model": "params:base_model", "trigger": "params:captions.trigger",
              "params": "params:generate", "image_embedding": "image_embedding"}
    return inputs | {concept: f"{concept}.motion_lora" for concept in concepts}


def create_pipeline(concepts: Sequence[str] = (), **kwargs) -> Pipeline:
    """``concepts``: names of ``motion_ft.concepts``, whose LoRAs ``generate.motion_concept`` can pick."""
    return Pipeline(
        [
            Node(
                generate_clip,
                inputs=_inputs(concepts),
                outputs=["generated_videos", "generation_record"],
                name="generate_clip",
            )
        ]
    )
