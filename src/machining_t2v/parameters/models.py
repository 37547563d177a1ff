"""One typed model per top-level parameter key (one per pipeline), and the parts they share.

The defaults are those of conf/base (a test keeps them equal); the prompt lists and the
validation blocks have none: conf/base is their one source. The choices listed here (``Literal``)
are also defined beside the code that uses them (e.g. ``machining_t2v.training``); a test checks
that both agree.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _number_to_text(value: Any) -> Any:
    # `--params generate.name=2024` reaches the run as the number 2024.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_number_to_text)]
"""A string; a number is accepted as its text (``--params`` reads ``name=2024`` as a number)."""

Scalar = Union[str, int, float, bool, None]  # noqa: UP007 - a runtime alias, also for Python 3.10

LrScheduler = Literal["constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial",
                      "piecewise_constant"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Optimizer = Literal["adamw", "adamw8bit", "prodigy"]
Sampler = Literal["ddim", "euler", "dpm++"]
MotionMode = Literal["temporal", "dual"]
Variant = Literal["base", "image", "motion", "both", "dreambooth", "textual_inversion"]
ImageMethod = Literal["lora", "dreambooth_lora", "textual_inversion"]
Split = Literal["seen", "held_out"]


class Params(BaseModel):
    """Base of every parameter model: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- shared parts


class TrainingParams(Params):
    """``<pipeline>.training``: the shared training core (``machining_t2v.training.TrainingConfig``).

    The field defaults are ``TrainingConfig``'s; each pipeline's default instance carries its
    conf/base values. ``num_train_epochs`` (if set) decides ``max_steps``.
    """

    max_steps: int = 200
    num_train_epochs: float | None = None
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    lr_step_rules: Text | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: MixedPrecision = "auto"
    optimizer: Optimizer = "adamw"
    checkpoint_every: int = 50
    checkpoints_total_limit: int | None = 2
    resume: Text | None = None
    log_every: int = 1


class LossParams(Params):
    """``<pipeline>.loss``: how the noise-prediction loss is formed (``machining_t2v.diffusion.loss.LossConfig``).

    The field defaults are ``LossConfig``'s; each pipeline's default instance carries its conf/base values.
    """

    caption_dropout: float = 0.0
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    appearance_debias: float | None = None
    top_timestep_share: float = 0.0
    top_timestep_window: int = 100


class ValidationParams(Params):
    """``<pipeline>.validation``: the fixed-batch validation loss and the sample grids/videos.

    No defaults: each pipeline's conf/base gives the whole block.
    """

    every: int
    batch_size: int
    prompts: list[Text]
    num_inference_steps: int
    guidance_scale: float
    seed: int


# --------------------------------------------------------------------------- pipelines


class BaseModelParams(Params):
    """``base_model``: the base model and motion adapter every pipeline that generates or trains loads."""

    pretrained: Text = "models/starter"
    motion_adapter: Text = "models/starter/motion_adapter"
    tiny_model_dir: Text = "data/06_models/tiny-sd"
    revision: Text | None = None
    variant: Text | None = None
    clip_skip: int = 1


class CaptionsParams(Params):
    """``captions``: how each video's caption is made."""

    trigger: Text | None = "mtv"
    template: Text = "{trigger} {operation} {process} on a {machine}, {material} workpiece"
    defaults: dict[str, Scalar] = Field(default_factory=lambda: {
        "process": "machining", "operation": "", "machine": "machine tool", "material": "metal"})
    model: Text | None = None
    max_new_tokens: int = 30
    write_sidecars: bool = False


class FramesParams(Params):
    """``frames``: stills and clips cut from the raw videos."""

    resolution: int = 64
    still_resolution: int | None = None
    clip_resolution: int | None = None
    num_frames: int = 8
    frame_stride: int = 2
    target_fps: float | None = None
    clips_per_video: int = 3
    stills_per_video: int = 4
    min_motion: float = 0.5
    # Only named in the "no video files" error; which files are videos is the raw_videos
    # dataset's choice (its `extensions` argument in catalog.yml).
    video_extensions: list[Text] = Field(default_factory=lambda: [".mp4", ".mov", ".avi", ".webm", ".mkv"])


class ImageLoraParams(Params):
    """``image_ft.lora``."""

    rank: int = 8
    alpha: float = 8
    dropout: float = 0.0
    target_modules: Text | list[Text] | None = "default"


class DreamBoothParams(Params):
    """``image_ft.dreambooth``: the class-prior images and the prior-preservation loss (``method: dreambooth_lora``)."""

    class_prompt: Text = "a milling machine or a lathe"
    num_class_images: int = 16
    prior_loss_weight: float = 1.0
    guidance_scale: float = 4.0
    num_inference_steps: int = 20
    seed: int = 0
    class_data_dir: Text = "data/05_model_input/class_images"
    cpu_threads: int | None = 1


class TextualInversionParams(Params):
    """``image_ft.textual_inversion``: the new token and the word its embedding starts from."""

    placeholder_token: Text = "<mtv>"
    initializer_token: Text = "machine"


class ImageFtParams(Params):
    """``image_ft``: the image (spatial) fine-tuning: LoRA, DreamBooth-LoRA or textual inversion."""

    method: ImageMethod = "lora"
    lora: ImageLoraParams = ImageLoraParams()
    loss: LossParams = LossParams(caption_dropout=0.1, snr_gamma=None, noise_offset=0.0)
    training: TrainingParams = TrainingParams(
        max_steps=900, batch_size=8, learning_rate=1.0e-3, lr_scheduler="cosine", lr_warmup_steps=20,
        mixed_precision="auto", log_every=10, checkpoint_every=100, checkpoints_total_limit=2)
    dreambooth: DreamBoothParams = DreamBoothParams()
    textual_inversion: TextualInversionParams = TextualInversionParams()
    gradient_checkpointing: bool = False
    checkpoint_dir: Text = "data/06_models/checkpoints/image_ft"
    validation: ValidationParams


class MotionLoraParams(Params):
    """``motion_ft.lora``: the temporal LoRA."""

    rank: int = 8
    alpha: float = 8
    dropout: float = 0.0


class DualParams(Params):
    """``motion_ft.dual``: MotionDirector's spatial LoRA and debiased loss (``mode: dual`` only)."""

    spatial_rank: int = 8
    spatial_alpha: float = 8
    spatial_learning_rate: float = 1.0e-3
    spatial_dropout: float = 0.2
    appearance_debias: float = 1.0


class MotionConceptParams(Params):
    """One of ``motion_ft.concepts``: which clips teach this motion, by exactly one rule
    (``machining_t2v.data.concepts`` checks that)."""

    column: Text | None = None
    equals: Text | None = None
    caption: Text | None = None
    folder: Text | None = None


class MotionFtParams(Params):
    """``motion_ft``: the motion (temporal) LoRA, or one per concept."""

    concepts: dict[Text, MotionConceptParams] = Field(default_factory=dict)
    mode: MotionMode = "temporal"
    num_frames: int | None = None
    image_lora_scale: float = 1.0
    lora: MotionLoraParams = MotionLoraParams()
    dual: DualParams = DualParams()
    loss: LossParams = LossParams(caption_dropout=0.1, snr_gamma=None, noise_offset=0.0, top_timestep_share=0.0)
    training: TrainingParams = TrainingParams(
        max_steps=200, batch_size=2, learning_rate=2.0e-3, lr_scheduler="cosine", lr_warmup_steps=10,
        mixed_precision="auto", log_every=10, checkpoint_every=100, checkpoints_total_limit=2)
    gradient_checkpointing: bool = False
    checkpoint_dir: Text = "data/06_models/checkpoints/motion_ft"
    validation: ValidationParams


class LoraScalesParams(Params):
    """``evaluation.lora_scales``."""

    image: float = 1.0
    motion: float = 1.0


class EvaluationSamplingParams(Params):
    """``evaluation.sampling``: how every variant's videos are generated."""

    num_frames: int = 8
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    size: int | None = 64
    scheduler: Sampler = "ddim"
    seed: int = 0
    seeds_per_prompt: int = 4
    negative_prompt: Text | None = ""


class EvaluationPrompt(Params):
    """One of ``evaluation.prompts``."""

    id: Text
    text: Text
    process: Text
    split: Split


class ReferenceParams(Params):
    """``evaluation.reference``."""

    max_clips_per_process: int | None = 24


class ReportParams(Params):
    """``evaluation.report``."""

    title: Text = "Evaluation report"
    strip_frames: int = 8
    strip_scale: int = 1
    plots_folder: Text = "evaluation_plots"
    strips_folder: Text = "evaluation_strips"
    videos_folder: Text = "evaluation_videos"


class ComfyUIParams(Params):
    """``evaluation.model_cards.comfyui``: the model files the ComfyUI workflow loads."""

    checkpoint: Text = "v1-5-pruned-emaonly.safetensors"
    motion_module: Text = "mm_sd15_v3.safetensors"
    frame_rate: float = 8.0


class ModelCardsParams(Params):
    """``evaluation.model_cards``: the cards and the ComfyUI workflow beside the LoRAs."""

    comfyui: ComfyUIParams = ComfyUIParams()


class EvaluationParams(Params):
    """``evaluation``: base vs fine-tuned, scored on the same prompts and seeds."""

    clip_model: Text = "builtin:standin-clip"
    clip_standin_dir: Text | None = "data/06_models/standin-clip"
    variants: list[Variant] = Field(default_factory=lambda: ["base", "image", "motion", "both", "dreambooth",
                                                             "textual_inversion"])
    lora_scales: LoraScalesParams = LoraScalesParams()
    sampling: EvaluationSamplingParams = EvaluationSamplingParams()
    prompts: list[EvaluationPrompt]
    processes: dict[Text, list[Text]]
    reference: ReferenceParams = ReferenceParams()
    report: ReportParams = ReportParams()
    model_cards: ModelCardsParams = ModelCardsParams()
    cpu_threads: int | None = 1


class GenerateParams(Params):
    """``generate``: one text-to-video generation with the project's LoRAs."""

    prompt: Text = "turning on a lathe, brass bar spinning in the chuck, fixed turning tool"
    prepend_trigger: bool = True
    negative_prompt: Text | None = ""
    use_image_lora: bool = True
    use_motion_lora: bool = True
    use_image_embedding: bool = True
    image_lora_path: Text | None = None
    motion_lora_path: Text | None = None
    motion_concept: Text | None = None
    scale_image: float = 0.8
    scale_motion: float = 1.0
    num_frames: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seed: int = 0
    size: int | None = None
    scheduler: Sampler = "ddim"
    name: Text | None = None
    cpu_threads: int | None = 1


class SampleDataParams(Params):
    """``sample_data``: the synthetic milling and turning videos."""

    num_clips: int = 24
    seed: int = 0
    width: int = 256
    height: int = 256
    fps: int = 12
    min_seconds: float = 2.0
    max_seconds: float = 4.0
    webm_fraction: float = 0.5
    close_up: float = 1.0
    feed_scale: float = 1.0


# --------------------------------------------------------------------------- the whole project


PIPELINE_PARAMETERS: dict[str, type[Params]] = {
    "base_model": BaseModelParams,
    "captions": CaptionsParams,
    "frames": FramesParams,
    "image_ft": ImageFtParams,
    "motion_ft": MotionFtParams,
    "evaluation": EvaluationParams,
    "generate": GenerateParams,
    "sample_data": SampleDataParams,
}
"""Every top-level parameter key of the product (one per pipeline) and its model. The starter's
pretraining project (tools/starter) adds its own ``starter`` key."""
