"""DreamBooth-LoRA: a LoRA trained on the instance stills plus class-prior images with prior preservation.

The base model draws the class-prior images once for the class prompt, before any LoRA is added;
they are kept in a folder named after everything that decides them (prompt, count, guidance,
steps, seed, resolution, clip skip, base model), so a rerun with the same settings generates none
and a changed setting generates a new set. The loss is the instance loss plus the weighted loss
on the class images (:func:`machining_t2v.diffusion.loss.prior_preservation_loss`). No Kedro import.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from machining_t2v.diffusion.caches import TrainingCache
from machining_t2v.diffusion.loss import LossConfig, noise_prediction_loss, prior_preservation_loss

__all__ = ["check_dreambooth", "class_prior_images", "dreambooth_loss"]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


def check_dreambooth(settings: dict[str, Any]) -> None:
    """Refuse ``image_ft.dreambooth`` settings that cannot train, before any model work.

    Raises:
        ValueError: an empty class prompt, a negative count or weight, or no class images with
            a positive prior weight.
    """
    if not str(settings.get("class_prompt") or "").strip():
        raise ValueError("image_ft.dreambooth.class_prompt is empty but image_ft.method is dreambooth_lora: "
                         "describe the class the stills belong to, e.g. 'a milling machine'.")
    count, weight = int(settings["num_class_images"]), float(settings["prior_loss_weight"])
    if count < 0 or weight < 0:
        raise ValueError(f"image_ft.dreambooth.num_class_images ({count}) and prior_loss_weight ({weight}) "
                         "must not be negative.")
    if count == 0 and weight > 0:
        raise ValueError(f"image_ft.dreambooth.num_class_images is 0 but prior_loss_weight is {weight}: the prior-"
                         "preservation loss needs class images; set num_class_images > 0 or prior_loss_weight: 0.")


def _cache_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def class_prior_images(sample: Callable[[list[str]], list[np.ndarray]], folder: str | Path,
                       settings: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The class-prior images of ``settings``: read from ``folder`` if made before, else drawn by ``sample``.

    Args:
        sample: draws one uint8 image per prompt of a list (the base model, no LoRA).
        folder: where the sets live, one subfolder per distinct ``settings``.
        settings: everything that decides the images; ``class_prompt`` and ``num_class_images``
            are used here, the rest only names the set.

    Returns:
        the images (N, H, W, 3) and how many were generated now (0 on reuse).
    """
    count = int(settings["num_class_images"])
    target = Path(folder) / _cache_key(settings)
    paths = [target / f"class_{number:04d}.png" for number in range(count)]
    done = target / SETTINGS_FILE
    if done.is_file() and all(path.is_file() for path in paths):
        logger.info("Reusing %d class-prior images from %s", count, target)
        return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths]), 0
    logger.info("Generating %d class-prior images for %r into %s", count, settings["class_prompt"], target)
    images = sample([str(settings["class_prompt"])] * count)
    target.mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    # Written last: a set without it was interrupted and is drawn again.
    done.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
    return np.stack(images), count


def dreambooth_loss(noise_scheduler, instance: TrainingCache, prior: TrainingCache, loss_config: LossConfig,
                    prior_loss_weight: float, device: torch.device) -> Callable:
    """``compute_loss(model, indices, randomness)`` for the training core: instance plus weighted prior loss.

    Instance sample ``i`` is paired with class image ``i % len(prior)``, as diffusers' DreamBooth
    example pairs them; the prior samples draw their noise and timesteps from the same per-sample
    generators, after the instance sample's draws.
    """
    num_prior = prior.latents.shape[0]

    def compute_loss(model, indices, randomness):
        instance_losses = noise_prediction_loss(
            model, noise_scheduler, instance.latents[indices].to(device), instance.text_embeddings[indices].to(device),
            randomness, loss_config, instance.empty_text_embedding, per_sample=True)
        if not num_prior or not prior_loss_weight:
            return instance_losses.mean()
        paired = indices % num_prior
        prior_losses = noise_prediction_loss(
            model, noise_scheduler, prior.latents[paired].to(device), prior.text_embeddings[paired].to(device),
            randomness, loss_config, prior.empty_text_embedding, per_sample=True)
        return prior_preservation_loss(instance_losses, prior_losses, prior_loss_weight)

    return compute_loss
