"""``generate`` pipeline: a prompt (``generate.prompt``) -> a GIF and an H.264 mp4 in
data/07_model_output/generated, with the project's LoRAs (or LoRAs given by path).

    kedro run --pipelines=generate \
        --params "generate.prompt=pocket milling on a milling machine with a steel workpiece"
"""

from kedro.pipeline import Node, Pipeline

from .nodes import generate_clip


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_clip,
                inputs=["image_lora", "motion_lora", "base_model", "motion_adapter", "params:base_model",
                        "params:captions.trigger", "params:generate", "image_embedding"],
                outputs=["generated_videos", "generation_record"],
                name="generate_clip",
            )
        ]
    )
