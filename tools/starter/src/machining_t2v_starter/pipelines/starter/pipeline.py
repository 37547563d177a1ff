"""``starter`` pipeline: render the generic world, pretrain VAE -> UNet -> motion adapter,
train the in-world evaluator, publish the starter folder and check it against its targets.

Run once by the maintainers (``kedro run --pipelines=starter`` in ``tools/starter``); every training stage
checkpoints, so an interrupted run picks up where it stopped. Not part of ``__default__``:
the published folder is committed and is what the fine-tuning pipelines load.
``starter_check`` measures the published folder again without retraining it.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    check_starter,
    describe_published_starter,
    encode_starter_world,
    pretrain_motion_adapter,
    pretrain_unet,
    pretrain_vae,
    publish_starter,
    render_starter_world,
    train_starter_evaluator,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(render_starter_world, "params:starter", "starter_world", name="render_starter_world"),
            Node(pretrain_vae, ["starter_world", "params:starter"], ["starter_vae", "starter_vae_metrics"],
                 name="pretrain_starter_vae"),
            Node(encode_starter_world, ["starter_world", "starter_vae", "params:starter"], "starter_world_latents",
                 name="encode_starter_world"),
            Node(pretrain_unet, ["starter_world", "starter_world_latents", "params:starter"],
                 ["starter_unet", "starter_unet_text_encoder"], name="pretrain_starter_unet"),
            Node(pretrain_motion_adapter,
                 ["starter_world", "starter_world_latents", "starter_vae", "starter_unet",
                  "starter_unet_text_encoder", "params:starter"],
                 ["starter_motion_adapter", "starter_text_encoder", "starter_published_unet"],
                 name="pretrain_starter_motion_adapter"),
            Node(train_starter_evaluator, ["starter_vae", "params:starter"], "starter_evaluator",
                 name="train_inworld_evaluator"),
            Node(publish_starter,
                 ["starter_vae", "starter_published_unet", "starter_text_encoder", "starter_motion_adapter",
                  "starter_evaluator", "starter_vae_metrics", "params:starter"],
                 "starter_model", name="publish_starter"),
            Node(check_starter, ["starter_model", "params:starter"], "starter_report", name="check_starter"),
        ]
    )


def create_check_pipeline(**kwargs) -> Pipeline:
    """Measure the published starter folder (``starter.output_dir``) against its targets."""
    return Pipeline(
        [
            Node(describe_published_starter, "params:starter", "published_starter", name="describe_published_starter"),
            Node(check_starter, ["published_starter", "params:starter"], "starter_report", name="check_starter"),
        ]
    )
