"""What image-LoRA and motion-LoRA fine-tuning share above the training-loop core.

``fit_lora`` turns a cache of latents and text embeddings into a trained LoRA: it builds the
noise-prediction loss, runs ``training.train`` and tracks a loss on a fixed validation batch
(same samples, noise and timesteps every time), so "the loss falls" is measured, not guessed.
The callers decide which modules carry LoRA and what the samples are (stills or clips).
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from machining_t2v.diffusion.caches import LazySamples, TrainingCache
from machining_t2v.diffusion.loss import LossConfig, noise_prediction_loss
from machining_t2v.training import (
    LossRandomness,
    TrainingConfig,
    TrainingResult,
    choose_mixed_precision,
    train,
    weight_dtype,
)

logger = logging.getLogger(__name__)


def collect_captioned_stills(
    stills: dict[str, Callable[[], Image.Image]], captions: pd.DataFrame
) -> tuple[LazySamples, list[str]]:
    """Pair every still of the ``stills`` dataset with its caption from ``captions``.

    Returns:
        the stills (N, S, S, 3) in sample-id order, read from the dataset one at a time when
        iterated (``build_cache`` takes them), and their captions.
    """
    if not stills:
        raise ValueError("The 'stills' dataset is empty: run the frames pipeline first "
                         "(`kedro run --pipelines=frames`) or check data/05_model_input/stills.")
    if captions.empty:
        raise ValueError("The 'captions' dataset is empty: run the captions pipeline first "
                         "(`kedro run --pipelines=captions`).")
    caption_of = dict(zip(captions["sample_id"], captions["caption"], strict=True))
    missing = sorted(set(stills) - set(caption_of))
    if missing:
        raise ValueError(f"{len(missing)} stills have no row in the 'captions' dataset (e.g. {missing[:3]}); "
                         "rerun the captions pipeline.")
    ids = sorted(stills)

    def load(sample_id: str) -> np.ndarray:
        return np.asarray(stills[sample_id]().convert("RGB"))

    size = _one_size({sample_id: load(sample_id).shape for sample_id in ids}, "stills")
    return LazySamples(ids, load, size), [str(caption_of[sample_id]) for sample_id in ids]


def collect_captioned_clips(
    clips: dict[str, Callable[[], np.ndarray]], captions: pd.DataFrame, num_frames: int | None
) -> tuple[LazySamples, list[str]]:
    """Pair every clip of the ``clips`` dataset with its caption, cut to ``num_frames`` frames.

    Every clip is read once here to check its length and frame size (one clip in memory at a time).

    Returns:
        the clips (N, F, S, S, 3) in sample-id order, read from the dataset one at a time when
        iterated (``build_cache`` takes them), and their captions.
    """
    if not clips:
        raise ValueError("The 'clips' dataset is empty: run the frames pipeline first "
                         "(`kedro run --pipelines=frames`); lower frames.min_motion if every clip was static.")
    if captions.empty:
        raise ValueError("The 'captions' dataset is empty: run the captions pipeline first.")
    caption_of = dict(zip(captions["sample_id"], captions["caption"], strict=True))
    ids = sorted(clips)
    missing = [sample_id for sample_id in ids if sample_id not in caption_of]
    if missing:
        raise ValueError(f"{len(missing)} clips have no row in the 'captions' dataset (e.g. {missing[:3]}); "
                         "rerun the captions pipeline.")
    shapes = {sample_id: clips[sample_id]().shape for sample_id in ids}
    num_frames = num_frames or min(shape[0] for shape in shapes.values())
    short = {sample_id: shape[0] for sample_id, shape in shapes.items() if shape[0] < num_frames}
    if short:
        raise ValueError(f"motion_ft.num_frames is {num_frames} but {len(short)} clips of the 'clips' dataset are "
                         f"shorter (e.g. {dict(list(short.items())[:3])}); raise frames.num_frames and rerun "
                         "the frames pipeline, or lower motion_ft.num_frames.")
    frame_size = _one_size({sample_id: shape[1:] for sample_id, shape in shapes.items()}, "clips")

    def load(sample_id: str) -> np.ndarray:
        return clips[sample_id]()[:num_frames]

    return LazySamples(ids, load, (num_frames, *frame_size)), [str(caption_of[i]) for i in ids]


def _one_size(shapes: dict[str, tuple[int, ...]], dataset: str) -> tuple[int, ...]:
    """The one shape all samples share, or a ``ValueError`` naming samples of each size."""
    example_of = {shape: sample_id for sample_id, shape in reversed(shapes.items())}
    if len(example_of) > 1:
        examples = ", ".join(f"{sample_id} {shape}" for shape, sample_id in sorted(example_of.items())[:3])
        raise ValueError(f"The '{dataset}' dataset mixes frame sizes (e.g. {examples}); rerun the frames "
                         "pipeline so that every sample has the same resolution.")
    return next(iter(example_of))


@contextlib.contextmanager
def seeded_lora_init(seed: int) -> Iterator[None]:
    """Initialise LoRA weights (added inside this block) from ``seed`` alone.

    peft draws the initial LoRA weights from torch's global RNG; without this, the start of a
    run, and so whether a resumed run matches an uninterrupted one, depends on what ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass
class FitResult:
    """The training result plus the fixed-batch validation losses, by step."""

    training: TrainingResult
    validation_losses: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


def training_device() -> torch.device:
    """Where training runs: the CUDA GPU when there is one (as accelerate picks), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_config_from_params(params: dict[str, Any], num_samples: int) -> TrainingConfig:
    """A ``TrainingConfig`` from the ``training`` parameters, checked before any model is loaded.

    ``num_train_epochs`` (if set) decides ``max_steps``; ``mixed_precision`` is resolved for
    this machine by :func:`choose_mixed_precision` and the choice is logged with its reason.

    Raises:
        ValueError: an unknown key or value, or ``optimizer: adamw8bit`` without a CUDA GPU.
    """
    params = dict(params)
    epochs = params.pop("num_train_epochs", None)
    cuda = torch.cuda.is_available()
    native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    requested = params.get("mixed_precision", "auto")
    precision, reason = choose_mixed_precision(requested, cuda=cuda, native_bf16=native_bf16)
    # A fall-back from what was asked for is a warning; auto's choice is information.
    (logger.info if requested in ("auto", precision) else logger.warning)("Mixed precision: %s (%s)", precision, reason)
    params["mixed_precision"] = precision
    config = TrainingConfig.from_dict(params)
    if config.optimizer == "adamw8bit" and not cuda:
        raise ValueError("training.optimizer 'adamw8bit' (bitsandbytes) needs a CUDA GPU and this machine has "
                         "none; use optimizer: adamw.")
    if epochs:
        samples_per_step = config.batch_size * config.gradient_accumulation_steps
        config = replace(config, max_steps=math.ceil(epochs * num_samples / samples_per_step))
    return config


def place_frozen(modules: list[torch.nn.Module], config: TrainingConfig, device: torch.device) -> torch.dtype:
    """Freeze ``modules`` and move them to ``device`` in the dtype of ``config``'s mixed precision.

    Frozen weights in bf16/fp16 halve their memory (diffusers' LoRA examples do the same); the
    LoRA weights added afterwards are kept in fp32 by :func:`trainable_in_fp32`.

    Returns:
        the frozen weights' dtype.
    """
    dtype = weight_dtype(config.mixed_precision)
    for module in modules:
        module.requires_grad_(False).to(device, dtype=dtype)
    return dtype


def trainable_in_fp32(model: torch.nn.Module) -> None:
    """Keep the trainable (LoRA) weights in fp32: the optimizer steps and fp16's gradient scaler need it."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def inference_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for sampling and validation when the frozen weights are half precision."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def enable_gradient_checkpointing(unet: torch.nn.Module) -> int:
    """Gradient checkpointing for the whole UNet, motion modules included.

    diffusers' ``enable_gradient_checkpointing`` recomputes the resnets and spatial
    transformers but keeps every activation of a ``UNetMotionModel``'s motion modules, which
    at 16 frames is most of the memory; each motion module is wrapped here so it is recomputed
    in backward too (non-reentrant, as diffusers does).

    Returns:
        the number of motion modules wrapped (0 for an image UNet).
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    unet.enable_gradient_checkpointing()
    wrapped = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D) and not getattr(module, "_checkpointed", False):
            module.forward = _checkpointed_forward(module.forward)
            module._checkpointed = True
            wrapped += 1
    return wrapped


def _checkpointed_forward(forward: Callable) -> Callable:
    def checkpointed(*args, **kwargs):
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return checkpointed


@torch.no_grad()
def fixed_batch_loss(unet: torch.nn.Module, noise_scheduler, cache: TrainingCache, indices: torch.Tensor,
                     seed: int, text_states: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Noise-prediction loss on the same samples, noise and timesteps at every call.

    ``text_states(indices)`` gives the captions' text states when they are not fixed in the cache
    (textual inversion encodes them with the token's current embedding).
    """
    device = next(unet.parameters()).device
    was_training = unet.training
    unet.eval()
    randomness = LossRandomness.fixed(seed, len(indices))
    with inference_autocast(device, _frozen_dtype(unet)):
        texts = cache.text_embeddings[indices] if text_states is None else text_states(indices)
        loss = noise_prediction_loss(unet, noise_scheduler, cache.latents[indices].to(device), texts.to(device),
                                     randomness, LossConfig())
    unet.train(was_training)
    return float(loss)


def _frozen_dtype(model: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if not p.requires_grad), torch.float32)


def fit_lora(
    unet: torch.nn.Module,
    noise_scheduler,
    cache: TrainingCache,
    loss_config: LossConfig,
    config: TrainingConfig,
    checkpoint_dir: str | Path,
    *,
    param_groups: list[dict] | None = None,
    compute_loss: Callable | None = None,
    validation_batch_size: int = 8,
    validate_every: int = 0,
    on_validate: Callable[[int], None] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    description: str = "training",
    loss_runs_backward: bool = False,
    trained: torch.nn.Module | None = None,
    text_states: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Train the LoRA parameters of ``unet`` (or the trainable ones of ``trained``) on the cached samples.

    ``compute_loss`` defaults to the plain noise-prediction loss over the cache; the motion
    trainer passes its own (the MotionDirector dual path, which runs its parts' backward
    itself: ``loss_runs_backward``, see :func:`machining_t2v.training.train`), DreamBooth its
    prior-preservation loss. Textual inversion trains the text encoder's new token (``trained``)
    and gives ``text_states(indices)``, the captions encoded with it, to the fixed-batch loss.
    """
    num_samples = cache.latents.shape[0]
    device = training_device()
    # The same validation samples whatever the seed: the first N in sample order.
    validation_indices = torch.arange(min(validation_batch_size, num_samples))
    validation_losses: dict[int, float] = {}

    if compute_loss is None:
        def compute_loss(model, indices, randomness):
            return noise_prediction_loss(
                model, noise_scheduler, cache.latents[indices].to(device), cache.text_embeddings[indices].to(device),
                randomness, loss_config, cache.empty_text_embedding,
            )  # fmt: skip

    def validation_loss() -> float:
        return fixed_batch_loss(unet, noise_scheduler, cache, validation_indices, config.seed, text_states)

    def validate(step: int) -> None:
        validation_losses[step] = validation_loss()
        logger.info("step %d: fixed-batch validation loss %.4f", step, validation_losses[step])
        if on_log:
            on_log(step, {"validation_loss": validation_losses[step]})
        if on_validate:
            on_validate(step)

    unet.to(device)
    start = time.perf_counter()
    # Step 0 is the untrained LoRA (on resume too: the checkpoint is loaded inside train()).
    validation_losses[0] = validation_loss()
    result = train(
        unet if trained is None else trained, compute_loss, num_samples, config, checkpoint_dir, param_groups=param_groups, on_log=on_log,
        on_validate=validate, validate_every=validate_every, description=description,
        loss_runs_backward=loss_runs_backward,
    )  # fmt: skip
    if result.global_step not in validation_losses:
        validation_losses[result.global_step] = validation_loss()
    return FitResult(training=result, validation_losses=validation_losses, seconds=time.perf_counter() - start)


def run_summary(fit: FitResult, base_source: str, kind: str, config: TrainingConfig, device: str, *,
                num_samples: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a training run reports: losses, fixed-batch validation losses, speed, memory, models."""
    losses = fit.training.losses
    return {
        "base_model": base_source,
        "lora_kind": kind,
        "num_samples": num_samples,
        "steps": fit.training.global_step,
        "resumed_from": fit.training.resumed_from,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "validation_loss": {str(step): loss for step, loss in sorted(fit.validation_losses.items())},
        "steps_per_second": fit.training.steps_per_second,
        "peak_memory_mb": fit.training.peak_memory_mb,
        "training_seconds": fit.seconds,
        "device": device,
        "machine": platform.machine(),
        **(extra or {}),
        "training_config": config.to_dict(),
    }
