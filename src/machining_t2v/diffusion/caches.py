"""The latent and text caches the trainers compute once per run: VAE latents and CLIP text states.

Stills are latents shaped (N, C, h, w); clips are (N, C, F, h, w). Samples may come as
``LazySamples``, read from disk one at a time while they are encoded, so a large set never
sits in host memory as pixels. No Kedro import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from machining_t2v.diffusion.text_encoding import text_hidden_states

__all__ = ["LazySamples", "TrainingCache", "build_cache", "encode_frames", "encode_text", "images_to_tensor"]


@dataclass(frozen=True)
class LazySamples:
    """uint8 stills (N, H, W, 3) or clips (N, F, H, W, 3) that are loaded one at a time when iterated.

    It stands in for the stacked array where only its size is needed (``len``, ``shape``,
    ``ndim``), so ``build_cache`` holds one sample of pixels at a time instead of all of them.
    """

    ids: Sequence[str]
    load: Callable[[str], np.ndarray]  # sample id -> its uint8 pixels, read afresh on every call
    sample_shape: tuple[int, ...]  # (H, W, 3) or (F, H, W, 3), the same for every sample

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ids), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[np.ndarray]:
        for sample_id in self.ids:
            sample = self.load(sample_id)
            if sample.shape != self.sample_shape:
                raise ValueError(f"{sample_id} has shape {sample.shape} now but {self.sample_shape} when the "
                                 "samples were listed; was the dataset rewritten during the run?")
            yield sample


@dataclass
class TrainingCache:
    """Everything the loss needs per sample, computed once per run instead of every step."""

    latents: torch.Tensor  # (N, C, h, w) for stills or (N, C, F, h, w) for clips, already scaled
    text_embeddings: torch.Tensor  # (N, L, D), one per sample
    empty_text_embedding: torch.Tensor  # (1, L, D): the unconditional caption used for caption dropout


def images_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) frames -> float (..., 3, H, W) in [-1, 1], the VAE's input range."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return tensor.movedim(-1, -3)


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 32,
                clip_skip: int = 1) -> torch.Tensor:
    """CLIP hidden states for each prompt, padded to the tokenizer's max length (SD1.5 style).

    ``clip_skip`` picks the layer (see :mod:`machining_t2v.diffusion.text_encoding`).
    """
    device = next(text_encoder.parameters()).device
    states = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[start : start + batch_size]), padding="max_length",
                           max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        states.append(text_hidden_states(text_encoder, tokens.input_ids.to(device), clip_skip))
    return torch.cat(states)


def _batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive (H, W, 3) frames stacked ``batch_size`` at a time (the last batch may be smaller)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.no_grad()
def encode_frames(vae, frames: np.ndarray | Iterable[np.ndarray], batch_size: int = 16) -> torch.Tensor:
    """VAE latents (mean of the posterior, times the scaling factor) of uint8 (N, H, W, 3) frames.

    ``frames`` may be any iterable of (H, W, 3) frames; only one batch of them is held at a time.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    latents = []
    for batch in _batches(frames, batch_size):
        height, width = batch.shape[1:3]
        if height % factor or width % factor:
            raise ValueError(f"Frame size {width}x{height} is not divisible by the VAE scale factor {factor}; "
                             f"set frames.still_resolution or frames.clip_resolution (or frames.resolution) "
                             f"to a multiple of {factor}.")
        pixels = images_to_tensor(batch).to(device, dtype)
        # Each batch leaves the GPU at once: the cache of a long run lives in host memory.
        latents.append((vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor).float().cpu())
    return torch.cat(latents)


def build_cache(
    tokenizer, text_encoder, vae, samples: np.ndarray | LazySamples, captions: Sequence[str], clip_skip: int = 1
) -> TrainingCache:
    """Encode every still (N, H, W, 3) or clip (N, F, H, W, 3) and caption once.

    Identical captions are encoded once; clips are encoded frame by frame and laid out as
    (N, C, F, h, w). With ``LazySamples`` only the latents and about one batch of pixels are
    in memory at any time; the latents are the same as for the stacked array. The captions are
    encoded at ``clip_skip`` (1: the text encoder's last layer).
    """
    if len(samples) != len(captions):
        raise ValueError(f"{len(samples)} samples but {len(captions)} captions")
    if samples.ndim == 5:
        num_clips, num_frames = samples.shape[:2]
        flat = encode_frames(vae, (frame for clip in samples for frame in clip))
        latents = flat.reshape(num_clips, num_frames, *flat.shape[1:]).movedim(1, 2)
    else:
        latents = encode_frames(vae, samples)
    unique = sorted(set(captions))
    unique_states = encode_text(tokenizer, text_encoder, unique + [""], clip_skip=clip_skip).float().cpu()
    index = {caption: i for i, caption in enumerate(unique)}
    text_embeddings = unique_states[[index[c] for c in captions]]
    return TrainingCache(latents=latents, text_embeddings=text_embeddings, empty_text_embedding=unique_states[-1:])
