"""Generating a clip with a video generator: prompt, frame-count and size checks, sampling, saving.

This module must not import Kedro: it also runs from the console script and in notebooks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from machining_t2v.generation.generator import VideoGenerator

logger = logging.getLogger(__name__)

DEFAULT_FPS = 8.0


def require_text(prompt: str | None, what: str = "prompt") -> str:
    """Return the stripped prompt.

    Raises:
        ValueError: the prompt is empty or only whitespace.
    """
    text = (prompt or "").strip()
    if not text:
        raise ValueError(f"The {what} is empty: describe the process to show, "
                         "e.g. 'mtv face the steel bar on the lathe'.")
    return text


def check_prompt(prompt: str | None, tokenizer: Any, what: str = "prompt") -> str:
    """Return the stripped prompt; refuse an empty one, warn when it will be truncated.

    The text encoder reads at most ``tokenizer.model_max_length`` tokens (77 for CLIP), start
    and end tokens included; longer prompts are truncated by the pipeline and the dropped words
    are named in a warning.

    Raises:
        ValueError: the prompt is empty or only whitespace.
    """
    text = require_text(prompt, what)
    limit = int(tokenizer.model_max_length)
    # An explicit max_length keeps transformers from warning about the length itself.
    ids = tokenizer(text, truncation=False, max_length=len(text) * 8 + 16)["input_ids"]
    if len(ids) > limit:
        dropped = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True).strip()
        shown = dropped if len(dropped) <= 120 else f"{dropped[:120]}..."
        logger.warning("The %s is %d tokens long but the text encoder reads at most %d (start/end tokens "
                       "included): it is truncated, dropping %r", what, len(ids), limit, shown)
    return text


def check_num_frames(generator: VideoGenerator, num_frames: int) -> int:
    """Refuse frame counts the motion adapter cannot generate in one clip.

    Raises:
        ValueError: ``num_frames < 1`` or more than the adapter's ``motion_max_seq_length``.
    """
    num_frames = int(num_frames)
    if num_frames < 1:
        raise ValueError(f"frames must be at least 1, got {num_frames}")
    if num_frames > generator.max_frames:
        raise ValueError(f"{num_frames} frames is more than the motion adapter {generator.motion_adapter_source} "
                         f"handles: its motion_max_seq_length is {generator.max_frames}; ask for at most "
                         f"{generator.max_frames} frames (AnimateDiff adapters are trained on 16)")
    return num_frames


def check_size(generator: VideoGenerator, size: int | None) -> int:
    """The frame side in pixels: ``size`` or the base model's native size; a multiple of 8.

    Raises:
        ValueError: not a positive multiple of the VAE's scale factor (8).
    """
    factor = int(generator.pipe.vae_scale_factor)
    value = generator.default_size if size in (None, 0) else int(size)
    if value < factor or value % factor:
        raise ValueError(f"size must be a positive multiple of {factor} pixels, got {size}")
    return value


@torch.no_grad()
def generate_video(
    generator: VideoGenerator,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_frames: int = 16,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    size: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Generate one clip with the currently active LoRAs; uint8 RGB frames ``(F, H, W, 3)``.

    The prompt is encoded at the generator's ``clip_skip``.

    The initial noise comes from a CPU ``torch.Generator`` seeded with ``seed``, so the same
    seed gives the same noise on any device and for every LoRA variant. ``on_step(done, total)``
    is called after each denoising step (a progress bar, e.g. the web page's).

    Raises:
        ValueError: empty prompt, too many frames, bad size or step count.
    """
    prompt = check_prompt(prompt, generator.tokenizer)
    negative = negative_prompt.strip() if negative_prompt else ""
    if negative:
        check_prompt(negative, generator.tokenizer, what="negative prompt")
    num_frames = check_num_frames(generator, num_frames)
    side = check_size(generator, size)
    if int(num_inference_steps) < 1:
        raise ValueError(f"steps must be at least 1, got {num_inference_steps}")
    from machining_t2v.diffusion.text_encoding import prompt_embeddings

    noise = torch.Generator("cpu").manual_seed(int(seed))
    steps = int(num_inference_steps)

    def step_done(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(step + 1, steps)
        return tensors

    result = generator.pipe(
        **prompt_embeddings(generator.pipe, prompt, negative, generator.clip_skip),
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=float(guidance_scale),
        height=side,
        width=side,
        generator=noise,
        output_type="np",
        callback_on_step_end=step_done if on_step else None,
    )
    frames = np.asarray(result.frames[0], dtype=np.float32)
    return (np.nan_to_num(frames) * 255).round().clip(0, 255).astype(np.uint8)


def save_video(frames: np.ndarray, out: str | Path, fps: float = DEFAULT_FPS) -> tuple[Path, Path]:
    """Write ``out`` as a browser-playable H.264 .mp4 and a looping .gif beside it.

    Returns:
        (mp4 path, gif path).

    Raises:
        ValueError: ``out`` has an extension other than ``.mp4`` (none gets ``.mp4``).
    """
    from machining_t2v.data.video_io import write_gif, write_h264

    out = Path(out).expanduser()
    if out.suffix == "":
        out = out.with_suffix(".mp4")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"output {out} must end in .mp4 (an H.264 .mp4 and a .gif beside it are written)")
    mp4 = write_h264(out, frames, fps)
    gif = write_gif(out.with_suffix(".gif"), frames, fps)
    return mp4, gif


def prompt_slug(prompt: str, max_length: int = 60) -> str:
    """A file-name-safe name for a prompt: lower case words joined by ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "video"
