"""The starter project's ``starter`` parameters as a typed model, checked like the product's.

The defaults are conf/base/parameters_starter.yml's (paths relative to tools/starter); a test
keeps them equal.
"""

from __future__ import annotations

from typing import Literal

from kedro.framework.hooks import hook_impl
from pydantic import Field

from machining_t2v.parameters import Params, check_parameters
from machining_t2v.parameters.models import Text, TrainingParams


class StarterNoiseScheduleParams(Params):
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    zero_terminal_snr: bool = True


class StarterWorldParams(Params):
    machine_clips: int = 1200
    shape_clips: int = 1200
    direction_words: Literal["order", "distinct"] = "distinct"
    shape_motions: Text | list[Text] = "all"


def _starter_training(max_steps: int, batch_size: int, learning_rate: float, lr_warmup_steps: int) -> TrainingParams:
    return TrainingParams(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                          lr_scheduler="cosine", lr_warmup_steps=lr_warmup_steps, seed=0, mixed_precision="auto",
                          checkpoint_every=100, checkpoints_total_limit=1, resume="latest")


class StarterVaeParams(Params):
    stills_per_clip: int = 2
    crop: int = 32
    kl_weight: float = 1.0e-6
    training: TrainingParams = _starter_training(800, 32, 2.0e-3, 20)


class StarterUnetParams(Params):
    stills_per_clip: int = 4
    caption_dropout: float = 0.1
    text_encoder_learning_rate: float | None = None
    training: TrainingParams = _starter_training(1000, 32, 1.0e-3, 50)


class StarterMotionAdapterParams(Params):
    caption_dropout: float = 0.1
    text_encoder_learning_rate: float | None = None
    train_cross_attention: bool = True
    top_timestep_share: float = 0.5
    new_world_every: int = 0
    training: TrainingParams = _starter_training(1500, 4, 1.0e-3, 50)


class StarterEvaluatorParams(Params):
    train: bool = True
    neutral_clips: int = 300
    shop_clips: int = 300
    shape_clips: int = 300
    shimmer_clips: int = 150
    shimmer: list[float] = Field(default_factory=lambda: [0.0, 0.5])
    sample_video_clips: int = 300
    epochs: int = 8


class StarterCheckParams(Params):
    seed: int = 0
    seeds_per_prompt: int = 4
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    scene_prompts: list[Text]
    motion_prompts: list[Text]
    machine_prompts: list[Text]


class StarterParams(Params):
    """``starter``: pretraining the committed starter model (maintainers only)."""

    seed: int = 0
    output_dir: Text = "../../models/starter"
    checkpoint_dir: Text = "../../data/06_models/checkpoints/starter"
    continue_from: Text | None = None
    noise_schedule: StarterNoiseScheduleParams = StarterNoiseScheduleParams()
    world: StarterWorldParams = StarterWorldParams()
    vae: StarterVaeParams = StarterVaeParams()
    unet: StarterUnetParams = StarterUnetParams()
    motion_adapter: StarterMotionAdapterParams = StarterMotionAdapterParams()
    evaluator: StarterEvaluatorParams = StarterEvaluatorParams()
    check: StarterCheckParams


#: The one top-level parameter key of the starter project (it reads only its own conf/).
STARTER_PARAMETERS: dict[str, type[Params]] = {"starter": StarterParams}


class StarterParameterCheck:
    """Fail a starter run whose parameters have an unknown key or a value of the wrong type, before its first node."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, catalog) -> None:
        check_parameters(catalog.load("parameters"), STARTER_PARAMETERS)
