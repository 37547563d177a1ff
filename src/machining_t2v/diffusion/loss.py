"""Diffusion-specific pieces shared by the image and motion LoRA trainers.

The training-loop core (the ``training`` package) knows nothing about diffusion; this module gives it
the loss: cached VAE latents and text embeddings in, noise-prediction MSE out. Stills are
latents shaped (N, C, h, w); clips are (N, C, F, h, w) and their text states are repeated per
frame, as ``UNetMotionModel`` expects. Samples may come as ``LazySamples``, read from disk one at
a time while they are encoded, so a large set never sits in host memory as pixels. No Kedro import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from machining_t2v.training import LossRandomness

logger = logging.getLogger(__name__)


# AnimateDiff trains and samples its motion modules with linear betas, while SD1.5's scheduler
# config says scaled_linear; at equal timesteps scaled_linear's signal-to-noise ratio is 1.3x
# (t=100) to 3x (t=999) linear's. A motion LoRA trains under the schedule the video sampler uses.
VIDEO_BETA_SCHEDULE = "linear"


def video_noise_scheduler(image_scheduler: DDPMScheduler) -> DDPMScheduler:
    """The noise schedule of the video sampler: the base model's, with AnimateDiff's linear betas.

    Everything else (beta range, prediction type, zero-terminal-SNR rescaling) stays the base
    model's. ``clip_sample`` is set off explicitly: DDPM's default is on, and a checkpoint config
    without the key would otherwise clip the predicted sample.
    """
    return DDPMScheduler.from_config(image_scheduler.config, beta_schedule=VIDEO_BETA_SCHEDULE, clip_sample=False)


def schedule_info(noise_scheduler) -> dict[str, str]:
    """What a LoRA records about the schedule it trained under (lora_info.json, MLflow params)."""
    return {"beta_schedule": str(noise_scheduler.config.beta_schedule),
            "prediction_type": str(noise_scheduler.config.prediction_type)}


@dataclass
class LossConfig:
    """How the noise-prediction loss is formed (see diffusers' text-to-image LoRA example)."""

    caption_dropout: float = 0.0  # share of samples trained with the empty caption (keeps CFG working)
    snr_gamma: float | None = None  # min-SNR weighting (Hang et al. 2023); None = plain MSE
    noise_offset: float = 0.0  # offset noise for darker/brighter images; 0 = off
    appearance_debias: float | None = None  # clips only: MotionDirector's beta; None = plain loss
    top_timestep_share: float = 0.0  # share of samples whose timestep is drawn from the noisiest ones only
    top_timestep_window: int = 100  # how many of the noisiest timesteps those are drawn from

    def __post_init__(self) -> None:
        if not 0.0 <= self.top_timestep_share <= 1.0:
            raise ValueError(f"top_timestep_share must lie in [0, 1], got {self.top_timestep_share}")
        if self.top_timestep_window < 1:
            raise ValueError(f"top_timestep_window must be at least 1, got {self.top_timestep_window}")


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
def encode_text(tokenizer, text_encoder, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """CLIP last hidden states for each prompt, padded to the tokenizer's max length (SD1.5 style)."""
    device = next(text_encoder.parameters()).device
    states = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[start : start + batch_size]), padding="max_length",
                           max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        states.append(text_encoder(tokens.input_ids.to(device))[0])
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
    tokenizer, text_encoder, vae, samples: np.ndarray | LazySamples, captions: Sequence[str]
) -> TrainingCache:
    """Encode every still (N, H, W, 3) or clip (N, F, H, W, 3) and caption once.

    Identical captions are encoded once; clips are encoded frame by frame and laid out as
    (N, C, F, h, w). With ``LazySamples`` only the latents and about one batch of pixels are
    in memory at any time; the latents are the same as for the stacked array.
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
    unique_states = encode_text(tokenizer, text_encoder, unique + [""]).float().cpu()
    index = {caption: i for i, caption in enumerate(unique)}
    text_embeddings = unique_states[[index[c] for c in captions]]
    return TrainingCache(latents=latents, text_embeddings=text_embeddings, empty_text_embedding=unique_states[-1:])


def draw_timesteps(randomness: LossRandomness, num_train_timesteps: int, config: LossConfig) -> torch.LongTensor:
    """One training timestep per sample: uniform, or for ``config.top_timestep_share`` of the
    samples one of the ``top_timestep_window`` noisiest.

    Only near pure noise does the caption alone decide what the clip becomes (which way a shape
    moves); lower down the noisy clip already shows it, so uniform timesteps teach it seldom.
    With a share of 0 nothing more is drawn, so earlier runs draw exactly what they drew.
    """
    timesteps = randomness.randint(num_train_timesteps)
    if config.top_timestep_share > 0:
        window = min(config.top_timestep_window, num_train_timesteps)
        from_top = randomness.rand() < config.top_timestep_share
        top = num_train_timesteps - window + randomness.randint(window)
        timesteps = torch.where(from_top, top, timesteps)
    return timesteps


def noise_prediction_loss(
    unet: torch.nn.Module,
    noise_scheduler,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    randomness: LossRandomness,
    config: LossConfig,
    empty_text_embedding: torch.Tensor | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """One denoising-loss evaluation on a batch of cached latents.

    All randomness (noise, noise offset, timesteps, caption dropout, the debiasing anchor
    frame) is drawn per sample from ``randomness`` (one generator per sample of the batch,
    in a fixed order, on the CPU), so a resumed run draws exactly what an uninterrupted one
    would have, and a sample draws the same on whichever process computes it.
    """
    device = latents.device
    batch = latents.shape[0]
    if len(randomness) != batch:
        raise ValueError(f"randomness has {len(randomness)} sample generator(s) for a batch of {batch}")
    # Sample noise (optionally offset per channel) and a timestep per sample.
    noise = randomness.randn(*latents.shape[1:]).to(device)
    if config.noise_offset:
        offset_shape = (latents.shape[1],) + (1,) * (latents.ndim - 2)
        noise = noise + config.noise_offset * randomness.randn(*offset_shape).to(device)
    timesteps = draw_timesteps(randomness, noise_scheduler.config.num_train_timesteps, config).to(device)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    # Caption dropout: some samples see the empty caption, so classifier-free guidance still works.
    if config.caption_dropout > 0 and empty_text_embedding is not None:
        drop = randomness.rand() < config.caption_dropout
        text_embeddings = torch.where(drop.to(device)[:, None, None], empty_text_embedding.to(device), text_embeddings)

    # Clips: the motion UNet takes (B, C, F, h, w) latents and one text state per frame.
    if latents.ndim == 5:
        text_embeddings = text_embeddings.repeat_interleave(latents.shape[2], dim=0)
    prediction = unet(noisy_latents, timesteps, encoder_hidden_states=text_embeddings).sample

    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r} in the scheduler config")

    loss = _per_sample_mse(prediction, target)
    if config.appearance_debias is not None and latents.ndim == 5:
        # MotionDirector: also match the frame-to-frame differences, which carry motion, not look.
        anchor = randomness.randint(latents.shape[2])
        loss = loss + _per_sample_mse(appearance_debiased(prediction, config.appearance_debias, anchor),
                                      appearance_debiased(target, config.appearance_debias, anchor))
    if config.snr_gamma is not None:
        # min-SNR-gamma: down-weight easy (low-noise) timesteps.
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        weights = weights / (snr + 1) if prediction_type == "v_prediction" else weights / snr
        loss = loss * weights
    return loss if per_sample else loss.mean()


def _per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return squared.mean(dim=list(range(1, squared.ndim)))


def appearance_debiased(noise: torch.Tensor, beta: float = 1.0, anchor: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """MotionDirector's appearance-debiased transform of clip noise (B, C, F, h, w).

    phi(e_i) = sqrt(beta^2 + 1) * e_i - beta * e_anchor, with one anchor frame per clip
    (random unless ``anchor`` gives the frame indices). Subtracting the anchor frame removes
    what all frames share (appearance), leaving what differs between frames (motion).
    """
    batch, _, frames = noise.shape[:3]
    if anchor is None:
        anchor = torch.randint(0, frames, (batch,), generator=generator)
    anchor_frames = noise[torch.arange(batch), :, anchor.to(noise.device)].unsqueeze(2)
    return (beta**2 + 1) ** 0.5 * noise - beta * anchor_frames
