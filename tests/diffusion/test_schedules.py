"""The video sampler's noise schedule, which the motion LoRA trains under, and the image sampler's settings."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from machining_t2v.diffusion.schedules import schedule_info, video_noise_scheduler
from machining_t2v.fixtures.tiny_model import sd15_noise_scheduler, tiny_model_source


def _snr(scheduler: DDPMScheduler, t: int) -> float:
    alpha_bar = scheduler.alphas_cumprod[t]
    return float(alpha_bar / (1 - alpha_bar))


def test_video_schedule_is_animatediffs_linear_betas_on_sd15():
    sd15 = sd15_noise_scheduler("scaled_linear")
    video = video_noise_scheduler(sd15)
    assert video.config.beta_schedule == "linear" and video.config.clip_sample is False
    # AnimateDiff's betas: linear from 0.00085 to 0.012 over 1,000 steps.
    torch.testing.assert_close(video.betas, torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32))
    # At equal timesteps SD1.5's own schedule keeps more signal: the gap the motion LoRA must not train under.
    assert _snr(sd15, 100) / _snr(video, 100) == pytest.approx(1.3, abs=0.1)
    assert _snr(sd15, 500) / _snr(video, 500) == pytest.approx(2.0, abs=0.2)
    assert _snr(sd15, 999) / _snr(video, 999) == pytest.approx(3.0, abs=0.3)


def test_video_schedule_keeps_the_base_models_prediction_and_rescaling():
    base = DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
                         timestep_spacing="trailing")
    video = video_noise_scheduler(base)
    assert schedule_info(video) == {"beta_schedule": "linear", "prediction_type": "v_prediction"}
    torch.testing.assert_close(video.alphas_cumprod, base.alphas_cumprod)


def test_video_schedule_turns_off_clip_sample_from_a_config_without_the_key():
    # A checkpoint config without clip_sample gets DDPM's default, True.
    base = DDPMScheduler.from_config({"beta_schedule": "scaled_linear", "num_train_timesteps": 1000})
    assert base.config.clip_sample is True
    assert video_noise_scheduler(base).config.clip_sample is False


def test_image_and_video_samplers_never_clip_the_sample(tmp_path):
    from machining_t2v.diffusion.sampling import image_pipeline, video_pipeline
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

    base = load_base_model(tiny_model_source("builtin:tiny", tmp_path / "tiny"))
    base.noise_scheduler = DDPMScheduler.from_config({"beta_schedule": "scaled_linear"})  # clip_sample: True
    assert image_pipeline(base, base.unet).scheduler.config.clip_sample is False
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tmp_path / "tiny", motion_adapter=True))
    video = video_pipeline(base, build_motion_unet(base.unet, adapter), adapter).scheduler.config
    assert video.clip_sample is False and video.beta_schedule == "linear"
    assert video.timestep_spacing == "linspace" and video.steps_offset == 1
