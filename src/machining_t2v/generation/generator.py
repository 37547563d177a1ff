"""The video generator: a base model and motion adapter in an ``AnimateDiffPipeline``.

One code path serves the ``generate`` pipeline, the ``machining-t2v`` console script and the
``evaluation`` pipeline, so what a user runs is what is tested (LoRAs: :mod:`.loras`; prompts,
frames and files: :mod:`.video`):

    folder = tiny_model_source("builtin:tiny", "data/06_models/tiny-sd")   # or any diffusers folder
    generator = build_generator(load_base_model(folder), load_motion_adapter(f"{folder}/motion_adapter"),
                                base_spec="builtin:tiny", motion_adapter_spec="builtin:tiny")
    # or, from what a user names (the console script and the web page):
    generator = open_generator("builtin:tiny", "builtin:tiny", tiny_model_dir="data/06_models/tiny-sd")
    load_lora(generator, "data/06_models/image_lora", "image")      # pipe.load_lora_weights(...)
    load_lora(generator, "data/06_models/motion_lora", "motion")
    set_lora_scales(generator, {"image": 0.8, "motion": 1.0})         # pipe.set_adapters(...)
    frames = generate_video(generator, "mtv face the steel bar on the lathe", num_frames=16)
    save_video(frames, "clip.mp4")                                    # clip.mp4 (H.264) + clip.gif

This module must not import Kedro: it also runs from the console script and in notebooks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from machining_t2v.fixtures.tiny_model import tiny_model_exists, tiny_model_source
from machining_t2v.models.loading import (
    BaseModel,
    build_motion_unet,
    load_base_model,
    load_motion_adapter,
)
from machining_t2v.models.sources import TINY_MODEL

if TYPE_CHECKING:
    from diffusers import MotionAdapter

    from machining_t2v.generation.loras import LoadedLora

logger = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "euler", "dpm++")
"""Sampler names accepted by :func:`build_generator` (``--scheduler`` of the console script)."""


@dataclass
class VideoGenerator:
    """An ``AnimateDiffPipeline`` (base model + motion adapter) and the LoRAs loaded into it."""

    pipe: Any
    base_source: str
    """The folder or hub id the base model was loaded from."""
    base_spec: str
    """What was asked for (e.g. ``builtin:tiny``)."""
    motion_adapter_source: str
    scheduler: str
    max_frames: int
    """The motion adapter's ``motion_max_seq_length``: the most frames one clip may have."""
    base_is_tiny: bool
    clip_skip: int = 1
    """Which text-encoder layer conditions the UNet (1: the last; see ``diffusion.text_encoding``)."""
    loras: dict[str, LoadedLora] = field(default_factory=dict)
    embeddings: dict[str, str] = field(default_factory=dict)
    """Textual-inversion tokens loaded, and their files."""

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def default_size(self) -> int:
        """The base model's native resolution in pixels (64 for the tiny model, 512 for SD1.5)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def describe(self) -> dict[str, Any]:
        """Which models this generator runs (for reports, run records and the console)."""
        return {
            "base_model": self.base_spec,
            "base_model_source": self.base_source,
            "base_model_note": "built-in tiny model with random weights (untrained)" if self.base_is_tiny else "",
            "motion_adapter": self.motion_adapter_source,
            "motion_max_seq_length": self.max_frames,
            "scheduler": self.scheduler,
            "clip_skip": self.clip_skip,
            "loras": {name: lora.describe() for name, lora in self.loras.items()},
            "embeddings": dict(self.embeddings),
        }


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Let torch use ``count`` CPU threads inside the block and restore the previous count after
    (``None`` or 0: leave torch's setting alone).

    Small models on small CPUs run faster on one thread: the tiny model's 8-frame clip took
    ~1 s with 1 thread and 5-10 s with 2 on the project's 2-core VM.
    """
    if not count:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """``auto`` (float16 on CUDA, float32 elsewhere), ``float32``, ``float16`` or ``bfloat16``."""
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in choices:
        raise ValueError(f"dtype must be auto or one of {sorted(choices)}, got {name!r}")
    return choices[name]


def make_scheduler(name: str, ddim_scheduler: Any) -> Any:
    """The sampler ``name`` (``ddim``, ``euler`` or ``dpm++``), configured like ``ddim_scheduler``.

    The DDIM scheduler comes from :func:`machining_t2v.diffusion.sampling.video_pipeline` (AnimateDiff's
    settings: linear betas, linspace timesteps); the others reuse its config.
    """
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim":
        return ddim_scheduler
    if name == "euler":
        return EulerDiscreteScheduler.from_config(ddim_scheduler.config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(ddim_scheduler.config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def build_generator(
    base: BaseModel,
    adapter: MotionAdapter,
    *,
    base_spec: str,
    motion_adapter_spec: str,
    scheduler: str = "ddim",
    device: str | None = None,
    dtype: str | None = "auto",
    clip_skip: int = 1,
) -> VideoGenerator:
    """Put a loaded base model and motion adapter (:mod:`machining_t2v.models.loading`) into an
    ``AnimateDiffPipeline`` with the motion UNet, cast to the generation dtype.

    Args:
        base, adapter: the loaded models; they become part of the generator (cast and moved
            in place).
        base_spec, motion_adapter_spec: what was asked for (``builtin:tiny``, a folder or a hub
            id), as the generator's records name it.
        scheduler: ``ddim``, ``euler`` or ``dpm++``.
        device: ``cuda``/``cpu``; default CUDA when available.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``.
        clip_skip: the text-encoder layer every prompt is encoded at (1: the last), as in training.

    Raises:
        ValueError: an unknown scheduler, or ``clip_skip`` beyond the text encoder's layers.
    """
    from machining_t2v.diffusion.sampling import video_pipeline
    from machining_t2v.diffusion.text_encoding import check_clip_skip

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    check_clip_skip(base.text_encoder, clip_skip)
    device = device or _default_device()
    torch_dtype = resolve_dtype(dtype, device)
    for module in (base.text_encoder, base.vae, base.unet, adapter):
        module.to(dtype=torch_dtype)
    unet = build_motion_unet(base.unet, adapter)
    pipe = video_pipeline(base, unet, adapter)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    pipe.to(device)
    adapter_source = (
        str(Path(base.source) / "motion_adapter") if motion_adapter_spec == TINY_MODEL else str(motion_adapter_spec)
    )
    return VideoGenerator(
        pipe=pipe,
        base_source=base.source,
        base_spec=str(base_spec),
        motion_adapter_source=adapter_source,
        scheduler=scheduler,
        max_frames=int(adapter.config.motion_max_seq_length),
        base_is_tiny=tiny_model_exists(base.source),
        clip_skip=clip_skip,
    )



def open_generator(
    base: str,
    motion_adapter: str,
    tiny_model_dir: str | Path,
    *,
    scheduler: str = "ddim",
    device: str | None = None,
    dtype: str | None = "auto",
    revision: str | None = None,
    variant: str | None = None,
    clip_skip: int = 1,
) -> VideoGenerator:
    """Load the base model and motion adapter a user names (a folder, a hub id or ``builtin:tiny``, which
    is built in ``tiny_model_dir``) and put them into a generator (:func:`build_generator`)."""
    return build_generator(
        load_base_model(tiny_model_source(base, tiny_model_dir), revision=revision, variant=variant),
        load_motion_adapter(tiny_model_source(motion_adapter, tiny_model_dir, motion_adapter=True)),
        base_spec=base, motion_adapter_spec=motion_adapter, scheduler=scheduler, device=device, dtype=dtype,
        clip_skip=clip_skip,
    )  # fmt: skip
