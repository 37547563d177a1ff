"""Noise schedules: the video sampler's (AnimateDiff's linear betas) and what a LoRA records about its own.

No Kedro import.
"""

from __future__ import annotations

from diffusers import DDPMScheduler

__all__ = ["VIDEO_BETA_SCHEDULE", "schedule_info", "video_noise_scheduler"]


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
