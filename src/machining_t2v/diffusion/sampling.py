"""Sample images from a (LoRA-carrying) SD1.5-family UNet and lay them out as comparison grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def image_pipeline(base, unet):
    """A ``StableDiffusionPipeline`` over loaded components, DDIM-sampled, without safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # clip_sample is set here: a checkpoint config without the key would inherit DDPM's True.
    scheduler = DDIMScheduler.from_config(base.noise_scheduler.config, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_images(pipe, prompts: Sequence[str], *, seed: int, num_inference_steps: int, guidance_scale: float,
                  resolution: int, clip_skip: int = 1) -> list[np.ndarray]:
    """One uint8 image per prompt; prompt ``i`` always uses seed ``seed + i`` so variants compare.

    ``clip_skip`` counts as in :mod:`machining_t2v.diffusion.text_encoding` (1: the last layer).
    """
    from machining_t2v.diffusion.text_encoding import prompt_embeddings

    images = []
    for offset, prompt in enumerate(prompts):
        generator = torch.Generator("cpu").manual_seed(seed + offset)
        result = pipe(**prompt_embeddings(pipe, prompt, None, clip_skip), num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, height=resolution, width=resolution, generator=generator,
                      output_type="np")
        images.append((result.images[0] * 255).round().clip(0, 255).astype(np.uint8))
    return images


def comparison_grid(columns: dict[str, Sequence[np.ndarray]], row_labels: Sequence[str], scale: int = 2) -> Image.Image:
    """A labelled grid: one column per variant (e.g. base, LoRA), one row per prompt."""
    names = list(columns)
    height, width = np.asarray(columns[names[0]][0]).shape[:2]
    cell_h, cell_w, header, label_w = height * scale, width * scale, 16, 220
    grid = Image.new("RGB", (label_w + cell_w * len(names), header + cell_h * len(row_labels)), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(names):
        draw.text((label_w + col * cell_w + 4, 2), name, fill="black")
        for row, image in enumerate(columns[name]):
            tile = Image.fromarray(np.asarray(image)).resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(tile, (label_w + col * cell_w, header + row * cell_h))
    for row, label in enumerate(row_labels):
        draw.text((4, header + row * cell_h + 4), _wrap(label, 34), fill="black")
    return grid


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def video_pipeline(base, motion_unet, motion_adapter):
    """An ``AnimateDiffPipeline`` over loaded components (motion UNet already built), DDIM-sampled."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from machining_t2v.diffusion.schedules import video_noise_scheduler

    # AnimateDiff's sampler: the motion modules' linear betas, linspace timesteps, offset 1.
    scheduler = DDIMScheduler.from_config(video_noise_scheduler(base.noise_scheduler).config,
                                          timestep_spacing="linspace", steps_offset=1)
    pipe = AnimateDiffPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                               unet=motion_unet, motion_adapter=motion_adapter, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_videos(pipe, prompts: Sequence[str], *, seed: int, num_inference_steps: int, guidance_scale: float,
                  num_frames: int, resolution: int, clip_skip: int = 1) -> list[np.ndarray]:
    """One uint8 clip (F, H, W, 3) per prompt; prompt ``i`` always uses seed ``seed + i``."""
    from machining_t2v.diffusion.text_encoding import prompt_embeddings

    videos = []
    for offset, prompt in enumerate(prompts):
        generator = torch.Generator("cpu").manual_seed(seed + offset)
        result = pipe(**prompt_embeddings(pipe, prompt, None, clip_skip), num_frames=num_frames,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=resolution,
                      width=resolution, generator=generator, output_type="np")
        videos.append((np.asarray(result.frames[0]) * 255).round().clip(0, 255).astype(np.uint8))
    return videos


def side_by_side(videos: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Clips of equal length and height laid next to each other (white gap), for base-vs-LoRA videos."""
    frames, height = videos[0].shape[0], videos[0].shape[1]
    spacer = np.full((frames, height, gap, 3), 255, np.uint8)
    parts = [part for video in videos for part in (video, spacer)][:-1]
    return np.concatenate(parts, axis=2)
