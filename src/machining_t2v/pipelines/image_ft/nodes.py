"""Image (spatial) LoRA training on still frames."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import TrainedLora

# torch, diffusers, transformers and peft are imported inside the node: registering the pipelines
# (every `kedro run`, `kedro registry list`, `kedro viz`) must not pay for them.
if TYPE_CHECKING:
    from machining_t2v.models.loading import BaseModel

logger = logging.getLogger(__name__)


def _lora_targets(spec: Any) -> str | list[str]:
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS

    return IMAGE_LORA_TARGETS if spec in (None, "default") else spec


def train_image_lora(
    stills: dict[str, Callable[[], Image.Image]],
    captions: pd.DataFrame,
    base: BaseModel,
    base_model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[TrainedLora, dict[str, Image.Image], dict[str, Any]]:
    """Train an image LoRA on the UNet's spatial attention with the base model frozen.

    ``base`` is the catalog's freshly loaded base model, which gets the LoRA layers; of ``base_model``
    (the parameters, which kedro-mlflow logs with the run) only ``clip_skip`` is read here.
    Exception to I/O-free nodes, on purpose: the training core writes resumable checkpoints to
    ``checkpoint_dir`` and live per-step metrics to MLflow while it trains.

    Returns:
        the trained LoRA, validation grids (base vs LoRA, same seeds) per validation step,
        and a summary of the run (losses, speed, memory, which models were used).
    """
    from machining_t2v.diffusion.caches import build_cache
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.diffusion.sampling import comparison_grid, image_pipeline, sample_images
    from machining_t2v.diffusion.schedules import schedule_info
    from machining_t2v.lora.injection import add_lora, lora_state_dict
    from machining_t2v.models.checks import warn_if_low_resolution
    from machining_t2v.training import finetune
    from machining_t2v.training.memory import check_training_memory

    config = finetune.training_config_from_params(params["training"], num_samples=len(stills))
    images, texts = finetune.collect_captioned_stills(stills, captions)
    # The base model stays frozen; LoRA is the only trainable part.
    warn_if_low_resolution(base.unet.config, base.vae.config, images.shape[1], "image LoRA training")
    device = finetune.training_device()
    frozen_dtype = finetune.place_frozen([base.vae, base.text_encoder, base.unet], config, device)
    lora_params = params["lora"]
    with finetune.seeded_lora_init(config.seed):
        lora_config = add_lora(base.unet, rank=int(lora_params["rank"]), alpha=float(lora_params["alpha"]),
                               dropout=float(lora_params.get("dropout", 0.0)),
                               target_modules=_lora_targets(lora_params.get("target_modules")))
    finetune.trainable_in_fp32(base.unet)
    if params.get("gradient_checkpointing"):
        finetune.enable_gradient_checkpointing(base.unet)

    check_training_memory(base.unet, [base.vae, base.text_encoder], device, batch_size=config.batch_size,
                          latent_size=images.shape[1] // base.vae_scale_factor, num_frames=None, dtype=frozen_dtype,
                          checkpointing=bool(params.get("gradient_checkpointing")), optimizer=config.optimizer,
                          what="image LoRA training")

    # Encode every still and caption once; training then never touches the VAE or text encoder.
    clip_skip = base_model.get("clip_skip", 1)
    cache = build_cache(base.tokenizer, base.text_encoder, base.vae, images, texts, clip_skip)
    validation = params["validation"]
    grids: dict[str, Image.Image] = {}

    def sample_grid(step: int) -> None:
        pipe = image_pipeline(base, base.unet)
        options = {"seed": int(validation["seed"]), "num_inference_steps": int(validation["num_inference_steps"]),
                   "guidance_scale": float(validation["guidance_scale"]), "resolution": images.shape[1],
                   "clip_skip": clip_skip}
        with finetune.inference_autocast(device, frozen_dtype):
            base.unet.disable_adapters()
            base_images = sample_images(pipe, validation["prompts"], **options)
            base.unet.enable_adapters()
            lora_images = sample_images(pipe, validation["prompts"], **options)
        grids[f"step_{step:06d}"] = comparison_grid({"base": base_images, "image LoRA": lora_images},
                                                    validation["prompts"])

    schedule = schedule_info(base.noise_scheduler)
    tracking.set_tags({"base_model": base.source, "lora_kind": "image"})
    tracking.log_params({f"image_ft.{key}": value for key, value in schedule.items()})
    logger.info("Training an image LoRA (rank %s) on %d stills for %d steps on %s", lora_config.r, len(images),
                config.max_steps, device)
    fit = finetune.fit_lora(
        base.unet, base.noise_scheduler, cache, LossConfig(**params.get("loss", {})), config,
        params["checkpoint_dir"], validation_batch_size=int(validation["batch_size"]),
        validate_every=int(validation["every"]), on_validate=sample_grid,
        on_log=lambda step, metrics: tracking.log_metrics(metrics, step=step, prefix="image_ft."),
        description="image LoRA",
    )  # fmt: skip
    final_step = fit.training.global_step
    if f"step_{final_step:06d}" not in grids:
        base.unet.eval()
        sample_grid(final_step)

    summary = finetune.run_summary(fit, base.source, "image", config, str(device), num_samples=len(images), extra=schedule)
    first_val, last_val = fit.validation_losses[0], fit.validation_losses[final_step]
    tracking.log_metrics({"validation_loss_start": first_val, "validation_loss_end": last_val,
                          "steps_per_second": fit.training.steps_per_second,
                          "peak_memory_mb": fit.training.peak_memory_mb}, prefix="image_ft.")
    logger.info("Image LoRA done: fixed-batch validation loss %.4f -> %.4f, %.2f steps/s", first_val, last_val,
                fit.training.steps_per_second)
    trained = TrainedLora(
        state_dict={k: v.detach().cpu().contiguous() for k, v in lora_state_dict(base.unet).items()},
        lora_config=lora_config.to_dict(), kind="image",
        info={"base_model": base.source, "steps": final_step, "trigger_captions": sorted(set(texts))[:20], **schedule},
    )  # fmt: skip
    return trained, grids, summary
