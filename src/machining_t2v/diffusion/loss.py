"""The noise-prediction loss shared by the image and motion LoRA trainers.

The training-loop core (the ``training`` package) knows nothing about diffusion; this module gives it
the loss: cached VAE latents and text embeddings in (:mod:`machining_t2v.diffusion.caches`),
noise-prediction MSE out. For clips (N, C, F, h, w) the text states are repeated per frame, as
``UNetMotionModel`` expects. No Kedro import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from machining_t2v.training import LossRandomness

__all__ = ["LossConfig", "appearance_debiased", "draw_timesteps", "noise_prediction_loss", "prior_preservation_loss"]


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


def prior_preservation_loss(instance_losses: torch.Tensor, prior_losses: torch.Tensor,
                            prior_loss_weight: float) -> torch.Tensor:
    """DreamBooth's loss: the mean loss on the instance samples plus ``prior_loss_weight`` times the
    mean on the class-prior samples the base model generated (which keeps the class as it was)."""
    return instance_losses.mean() + prior_loss_weight * prior_losses.mean()


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
