"""Image (spatial) fine-tuning on still frames: a LoRA, a DreamBooth-LoRA or a textual-inversion token."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import NOT_TRAINED, NotTrained, TrainedEmbedding, TrainedLora

# torch, diffusers, transformers and peft are imported inside the node: registering the pipelines
# (every `kedro run`, `kedro registry list`, `kedro viz`) must not pay for them.
if TYPE_CHECKING:
    from machining_t2v.models.loading import BaseModel

logger = logging.getLogger(__name__)

METHODS = ("lora", "dreambooth_lora", "textual_inversion")
COLUMN = {"lora": "image LoRA", "dreambooth_lora": "DreamBooth LoRA", "textual_inversion": "textual inversion"}


def _lora_targets(spec: Any) -> str | list[str]:
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS

    return IMAGE_LORA_TARGETS if spec in (None, "default") else spec


def train_image_lora(
    stills: dict[str, Callable[[], Image.Image]],
    captions: pd.DataFrame,
    base: BaseModel,
    base_model: dict[str, Any],
    params: dict[str, Any],
    trigger: str | None = None,
) -> tuple[TrainedLora | NotTrained, dict[str, Image.Image], dict[str, Any], TrainedLora | NotTrained,
           TrainedEmbedding | NotTrained]:
    """Fine-tune by ``image_ft.method`` with the base model frozen, on the one training core.

    ``lora``: a LoRA on the UNet's spatial attention. ``dreambooth_lora``: the same LoRA trained with
    prior preservation on class images the base model draws once. ``textual_inversion``: only the
    embedding of a new placeholder token trains; it stands in for ``trigger`` in the captions.

    ``base`` is the catalog's freshly loaded base model, which gets the LoRA layers; of ``base_model``
    (the parameters, which kedro-mlflow logs with the run) only ``clip_skip`` is read here.
    Exception to I/O-free nodes, on purpose: the training core writes resumable checkpoints to
    ``checkpoint_dir`` (``<checkpoint_dir>-<method>`` for the other methods), live per-step metrics to
    MLflow while it trains, and DreamBooth keeps its class images in ``dreambooth.class_data_dir``.

    Returns:
        the LoRA (``lora``), validation grids (base vs trained, same seeds) per validation step, a
        summary of the run (losses, speed, memory, which models were used), the DreamBooth LoRA and
        the textual-inversion embedding; the outputs of the methods not run are ``NOT_TRAINED``
        (their datasets keep what an earlier run left).
    """
    from machining_t2v.diffusion.caches import build_cache
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.diffusion.sampling import comparison_grid, image_pipeline, sample_images
    from machining_t2v.diffusion.schedules import schedule_info
    from machining_t2v.models.checks import warn_if_low_resolution
    from machining_t2v.training import finetune
    from machining_t2v.training.memory import check_training_memory

    method = params.get("method", "lora")
    if method not in METHODS:
        raise ValueError(f"image_ft.method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "dreambooth_lora":
        from machining_t2v.training.dreambooth import check_dreambooth

        check_dreambooth(params["dreambooth"])
    config = finetune.training_config_from_params(params["training"], num_samples=len(stills))
    images, texts = finetune.collect_captioned_stills(stills, captions)
    warn_if_low_resolution(base.unet.config, base.vae.config, images.shape[1], "image LoRA training")
    device = finetune.training_device()
    frozen_dtype = finetune.place_frozen([base.vae, base.text_encoder, base.unet], config, device)
    clip_skip = base_model.get("clip_skip", 1)
    validation = params["validation"]
    options = {"seed": int(validation["seed"]), "num_inference_steps": int(validation["num_inference_steps"]),
               "guidance_scale": float(validation["guidance_scale"]), "resolution": images.shape[1],
               "clip_skip": clip_skip}
    loss_config = LossConfig(**params.get("loss", {}))
    fit_options: dict[str, Any] = {}
    extra: dict[str, Any] = {"method": method}
    if method == "textual_inversion":
        from machining_t2v.training import textual_inversion as ti

        settings = params["textual_inversion"]
        token = str(settings["placeholder_token"])
        ti.add_placeholder_token(base.tokenizer, base.text_encoder, token, str(settings["initializer_token"]))
        finetune.trainable_in_fp32(base.text_encoder)
        texts = [ti.with_placeholder(text, trigger, token) for text in texts]
        # The latents and the empty caption are cached; the captions are encoded live (the token learns).
        cache = build_cache(base.tokenizer, base.text_encoder, base.vae, images, texts, clip_skip)
        encode = ti.caption_encoder(base.tokenizer, base.text_encoder, texts, clip_skip)
        fit_options = {"trained": base.text_encoder, "text_states": encode,
                       "compute_loss": _text_states_loss(base, cache, encode, loss_config, device)}
        trained_part = base.text_encoder
    else:
        lora_config = _add_image_lora(base, params, config.seed)
        if params.get("gradient_checkpointing"):
            finetune.enable_gradient_checkpointing(base.unet)
        # Encode every still and caption once; training then never touches the VAE or text encoder.
        cache = build_cache(base.tokenizer, base.text_encoder, base.vae, images, texts, clip_skip)
        if method == "dreambooth_lora" and int(params["dreambooth"]["num_class_images"]) > 0:
            fit_options["compute_loss"], extra["class_images_generated"] = _prior_preservation(
                base, cache, params, options, loss_config, device, frozen_dtype)
        trained_part = base.unet
    check_training_memory(base.unet, [base.vae, base.text_encoder], device, batch_size=config.batch_size,
                          latent_size=images.shape[1] // base.vae_scale_factor, num_frames=None, dtype=frozen_dtype,
                          checkpointing=bool(params.get("gradient_checkpointing")), optimizer=config.optimizer,
                          what="image LoRA training")
    grids: dict[str, Image.Image] = {}

    def sample_grid(step: int) -> None:
        pipe = image_pipeline(base, base.unet)
        prompts = list(validation["prompts"])
        with finetune.inference_autocast(device, frozen_dtype):
            if method == "textual_inversion":
                base_images = sample_images(pipe, prompts, **options)
                trained_images = sample_images(pipe, [ti.with_placeholder(p, trigger, token) for p in prompts],
                                               **options)
            else:
                base.unet.disable_adapters()
                base_images = sample_images(pipe, prompts, **options)
                base.unet.enable_adapters()
                trained_images = sample_images(pipe, prompts, **options)
        grids[f"step_{step:06d}"] = comparison_grid({"base": base_images, COLUMN[method]: trained_images}, prompts)

    schedule = schedule_info(base.noise_scheduler)
    tracking.set_tags({"base_model": base.source, "lora_kind": "image", "image_ft.method": method})
    tracking.log_params({f"image_ft.{key}": value for key, value in schedule.items()})
    logger.info("Training image_ft.method %s on %d stills for %d steps on %s", method, len(images), config.max_steps,
                device)
    checkpoint_dir = params["checkpoint_dir"] if method == "lora" else f"{params['checkpoint_dir']}-{method}"
    fit = finetune.fit_lora(
        base.unet, base.noise_scheduler, cache, loss_config, config, checkpoint_dir,
        validation_batch_size=int(validation["batch_size"]), validate_every=int(validation["every"]),
        on_validate=sample_grid, on_log=lambda step, metrics: tracking.log_metrics(metrics, step=step,
                                                                                   prefix="image_ft."),
        description=COLUMN[method], **fit_options,
    )  # fmt: skip
    final_step = fit.training.global_step
    if f"step_{final_step:06d}" not in grids:
        trained_part.eval()
        sample_grid(final_step)

    summary = finetune.run_summary(fit, base.source, "image", config, str(device), num_samples=len(images),
                                   extra={**schedule, **extra})
    first_val, last_val = fit.validation_losses[0], fit.validation_losses[final_step]
    tracking.log_metrics({"validation_loss_start": first_val, "validation_loss_end": last_val,
                          "steps_per_second": fit.training.steps_per_second,
                          "peak_memory_mb": fit.training.peak_memory_mb}, prefix="image_ft.")
    logger.info("%s done: fixed-batch validation loss %.4f -> %.4f, %.2f steps/s", COLUMN[method], first_val,
                last_val, fit.training.steps_per_second)
    info = {"base_model": base.source, "steps": final_step, "method": method, "clip_skip": clip_skip, **schedule}
    if method == "textual_inversion":
        embedding = TrainedEmbedding(token=token, vector=ti.learned_vector(base.text_encoder), replaces=trigger or None,
                                     info={**info, "initializer_token": str(settings["initializer_token"])})
        return NOT_TRAINED, grids, summary, NOT_TRAINED, embedding
    from machining_t2v.lora.injection import lora_state_dict

    trained = TrainedLora(
        state_dict={k: v.detach().cpu().contiguous() for k, v in lora_state_dict(base.unet).items()},
        lora_config=lora_config.to_dict(), kind="image",
        info={**info, "num_samples": len(images), "trigger_captions": sorted(set(texts))[:20]},
    )  # fmt: skip
    if method == "dreambooth_lora":
        return NOT_TRAINED, grids, summary, trained, NOT_TRAINED
    return trained, grids, summary, NOT_TRAINED, NOT_TRAINED


def _add_image_lora(base: BaseModel, params: dict[str, Any], seed: int):
    """LoRA layers on the UNet's spatial attention (``image_ft.lora``), the only trainable part."""
    from machining_t2v.lora.injection import add_lora
    from machining_t2v.training import finetune

    lora_params = params["lora"]
    with finetune.seeded_lora_init(seed):
        lora_config = add_lora(base.unet, rank=int(lora_params["rank"]), alpha=float(lora_params["alpha"]),
                               dropout=float(lora_params.get("dropout", 0.0)),
                               target_modules=_lora_targets(lora_params.get("target_modules")))
    finetune.trainable_in_fp32(base.unet)
    return lora_config


def _text_states_loss(base: BaseModel, cache, encode: Callable, loss_config, device) -> Callable:
    """Textual inversion's loss: the noise-prediction loss with the captions encoded in the step."""
    from machining_t2v.diffusion.loss import noise_prediction_loss

    def compute_loss(model, indices, randomness):
        return noise_prediction_loss(base.unet, base.noise_scheduler, cache.latents[indices].to(device),
                                     encode(indices), randomness, loss_config, cache.empty_text_embedding)

    return compute_loss


def _prior_preservation(base: BaseModel, cache, params: dict[str, Any], options: dict[str, Any], loss_config,
                        device, frozen_dtype) -> tuple[Callable, int]:
    """DreamBooth's loss, after drawing (or reusing) the class-prior images with the LoRA switched off;
    and how many images were drawn now."""
    from machining_t2v.diffusion.caches import build_cache
    from machining_t2v.diffusion.sampling import image_pipeline, sample_images
    from machining_t2v.generation.generator import cpu_threads
    from machining_t2v.training import finetune
    from machining_t2v.training.dreambooth import class_prior_images, dreambooth_loss

    settings = params["dreambooth"]
    key = {"class_prompt": str(settings["class_prompt"]), "num_class_images": int(settings["num_class_images"]),
           "guidance_scale": float(settings["guidance_scale"]),
           "num_inference_steps": int(settings["num_inference_steps"]), "seed": int(settings["seed"]),
           "resolution": options["resolution"], "clip_skip": options["clip_skip"], "base_model": base.source}

    def sample(prompts: list[str]):
        base.unet.disable_adapters()
        try:
            with cpu_threads(settings.get("cpu_threads")), finetune.inference_autocast(device, frozen_dtype):
                return sample_images(image_pipeline(base, base.unet), prompts, seed=key["seed"],
                                     num_inference_steps=key["num_inference_steps"],
                                     guidance_scale=key["guidance_scale"], resolution=key["resolution"],
                                     clip_skip=key["clip_skip"])
        finally:
            base.unet.enable_adapters()

    images, generated = class_prior_images(sample, settings["class_data_dir"], key)
    tracking.log_metrics({"class_images_generated": generated}, prefix="image_ft.")
    prior = build_cache(base.tokenizer, base.text_encoder, base.vae, images, [key["class_prompt"]] * len(images),
                        key["clip_skip"])
    loss = dreambooth_loss(base.noise_scheduler, cache, prior, loss_config, float(settings["prior_loss_weight"]),
                           device)
    return loss, generated
