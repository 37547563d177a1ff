"""``image_ft`` pipeline: stills + captions -> image LoRA (or DreamBooth LoRA, or textual-inversion
embedding, by ``image_ft.method``), validation grids and a run summary.

Registered on its own and, in ``pipeline_registry``, chained after sample data, frames and
captions, so ``kedro run --pipelines=image_ft`` runs the whole chain.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import train_image_lora


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_image_lora,
                inputs=["stills", "captions", "base_model", "params:base_model", "params:image_ft",
                        "params:captions.trigger"],
                outputs=["image_lora", "image_ft_samples", "image_ft_summary", "image_dreambooth_lora",
                         "image_embedding"],
                name="train_image_lora",
            )
        ]
    )
