"""Motion (temporal) LoRA training on clips, with MotionDirector's optional dual path."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from machining_t2v.data.concepts import concept_mask, describe_rule
from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import RawVideoFolder, TrainedLora

# torch, diffusers, transformers and peft are imported inside the functions that use them: registering
# the pipelines (every `kedro run`, `kedro registry list`, `kedro viz`) must not pay for them.
if TYPE_CHECKING:
    import torch
    from diffusers import MotionAdapter

    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.models.loading import BaseModel

logger = logging.getLogger(__name__)

MODES = ("temporal", "dual")


def select_concept_clips(
    clips: dict[str, Callable[[], np.ndarray]],
    frame_manifest: pd.DataFrame,
    captions: pd.DataFrame,
    raw_videos: RawVideoFolder,
    rule: dict[str, Any],
    concept: str,
) -> dict[str, Callable[[], np.ndarray]]:
    """The training clips of motion concept ``concept``, chosen by its ``rule``
    (``motion_ft.concepts.<concept>``: a ``metadata.csv`` column value, a caption pattern or a
    sub-folder; see :mod:`machining_t2v.data.concepts`). A concept that selects nothing is an
    error naming it."""
    manifest = frame_manifest[frame_manifest["kind"] == "clip"]
    video_of = dict(zip(manifest["sample_id"], manifest["video"], strict=True))
    caption_of = dict(zip(captions["sample_id"], captions["caption"], strict=True))
    metadata_of = {video.name: raw_videos.metadata_for(video) or {} for video in raw_videos.videos}
    ids = sorted(clips)
    table = pd.DataFrame({"sample_id": ids, "video": [str(video_of.get(i, "")) for i in ids],
                          "caption": [caption_of.get(i, "") for i in ids]})
    table["metadata"] = [metadata_of.get(video, {}) for video in table["video"]]
    chosen = table.loc[concept_mask(concept, rule, table).to_numpy(), "sample_id"].tolist()
    logger.info("Motion concept %s (%s): %d of %d clips, from %d videos", concept, describe_rule(rule), len(chosen),
                len(ids), table.loc[table["sample_id"].isin(chosen), "video"].nunique())
    return {sample_id: clips[sample_id] for sample_id in chosen}


def train_motion_lora(
    clips: dict[str, Callable[[], np.ndarray]],
    stills: dict[str, Callable[[], Image.Image]],
    captions: pd.DataFrame,
    image_lora: TrainedLora | None,
    base: BaseModel,
    adapter: MotionAdapter,
    base_model: dict[str, Any],
    params: dict[str, Any],
    concept: str | None = None,
) -> tuple[TrainedLora, TrainedLora, dict[str, np.ndarray], dict[str, Any]]:
    """Train a motion LoRA on the motion module's temporal attention, base model frozen.

    ``mode: temporal`` trains only the temporal LoRA on whole clips. ``mode: dual``
    (MotionDirector) also trains a spatial LoRA on single stills with the temporal LoRA off,
    while the temporal LoRA learns from clips with the appearance-debiased loss and the
    spatial LoRA dropped on ``dual.spatial_dropout`` of the steps.

    ``base`` and ``adapter`` are the catalog's freshly loaded models, built here into the motion
    UNet that gets the LoRA layers; ``base_model`` (the parameters) names the adapter in errors.
    Exception to I/O-free nodes, on purpose: the training core writes resumable checkpoints to
    ``checkpoint_dir`` and live per-step metrics to MLflow while it trains.

    ``concept`` names the motion concept whose clips ``clips`` are (:func:`select_concept_clips`):
    its checkpoints go to ``checkpoint_dir/<concept>``, its MLflow keys start with
    ``motion_ft.<concept>.`` and the LoRA's info records it. None: every clip, one LoRA.

    Returns:
        the motion LoRA, the spatial LoRA (no weights in temporal mode), validation videos
        (base and LoRA side by side, same seed) and a run summary.
    """
    from machining_t2v.diffusion.caches import build_cache
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.diffusion.sampling import sample_videos, side_by_side, video_pipeline
    from machining_t2v.diffusion.schedules import schedule_info, video_noise_scheduler
    from machining_t2v.lora.injection import (
        IMAGE_LORA_TARGETS,
        MOTION_LORA_TARGETS,
        add_lora,
        lora_state_dict,
        merge_lora,
    )
    from machining_t2v.models.checks import warn_if_low_resolution
    from machining_t2v.models.loading import build_motion_unet
    from machining_t2v.training import finetune
    from machining_t2v.training.memory import check_training_memory

    mode = params.get("mode", "temporal")
    if mode not in MODES:
        raise ValueError(f"motion_ft.mode must be one of {MODES}, got {mode!r}")
    config = finetune.training_config_from_params(params["training"], num_samples=len(clips))
    clip_frames, clip_texts = finetune.collect_captioned_clips(clips, captions, params.get("num_frames"))
    if mode == "dual":
        if not stills:
            raise ValueError("motion_ft.mode is 'dual' but the 'stills' dataset is empty: the spatial path "
                             "learns from still frames; run the frames pipeline with frames.stills_per_video > 0.")
        still_frames, still_texts = finetune.collect_captioned_stills(stills, captions)

    # The frozen base model and motion adapter make the motion UNet.
    warn_if_low_resolution(base.unet.config, base.vae.config, clip_frames.shape[2], "motion LoRA training")
    max_frames = adapter.config.motion_max_seq_length
    if clip_frames.shape[1] > max_frames:
        raise ValueError(f"Clips have {clip_frames.shape[1]} frames but the motion adapter "
                         f"{base_model['motion_adapter']} handles at most motion_max_seq_length={max_frames}; "
                         "lower motion_ft.num_frames or frames.num_frames.")
    unet = build_motion_unet(base.unet, adapter)
    # The motion LoRA trains under the schedule the video sampler uses (AnimateDiff's linear betas).
    noise_scheduler = video_noise_scheduler(base.noise_scheduler)

    # Freeze the image LoRA (if any) into the spatial weights, in full precision; the motion LoRA trains on top.
    image_scale = float(params.get("image_lora_scale", 0.0))
    image_lora_used = image_lora is not None and image_scale > 0
    if image_lora_used:
        merged = merge_lora(unet, image_lora.state_dict, image_lora.lora_config, scale=image_scale)
        logger.info("Merged the image LoRA from %s into %d modules at scale %s", image_lora.path, merged, image_scale)
    elif image_scale > 0:
        logger.warning("No image LoRA found (run image_ft first); training the motion LoRA on the base model alone.")
    device = finetune.training_device()
    frozen_dtype = finetune.place_frozen([base.vae, base.text_encoder, unet], config, device)

    lora_params = params["lora"]
    with finetune.seeded_lora_init(config.seed):
        motion_config = add_lora(unet, rank=int(lora_params["rank"]), alpha=float(lora_params["alpha"]),
                                 dropout=float(lora_params.get("dropout", 0.0)), target_modules=MOTION_LORA_TARGETS,
                                 adapter_name="motion")
    param_groups = None
    if mode == "dual":
        dual = params["dual"]
        with finetune.seeded_lora_init(config.seed + 1):
            spatial_config = add_lora(unet, rank=int(dual["spatial_rank"]), alpha=float(dual["spatial_alpha"]),
                                      target_modules=IMAGE_LORA_TARGETS, adapter_name="spatial")
        unet.set_adapters(["motion", "spatial"])
        motion_params = _adapter_parameters(unet, "motion")
        spatial_params = _adapter_parameters(unet, "spatial")
        for parameter in motion_params + spatial_params:
            parameter.requires_grad_(True)
        param_groups = [{"params": motion_params, "lr": config.learning_rate},
                        {"params": spatial_params, "lr": float(dual["spatial_learning_rate"])}]
    finetune.trainable_in_fp32(unet)
    if params.get("gradient_checkpointing"):
        finetune.enable_gradient_checkpointing(unet)

    check_training_memory(unet, [base.vae, base.text_encoder], device, batch_size=config.batch_size,
                          latent_size=clip_frames.shape[2] // base.vae_scale_factor, num_frames=clip_frames.shape[1],
                          dtype=frozen_dtype, checkpointing=bool(params.get("gradient_checkpointing")),
                          optimizer=config.optimizer, what="motion LoRA training")

    # Encode every clip (and still) and caption once.
    clip_skip = base_model.get("clip_skip", 1)
    cache = build_cache(base.tokenizer, base.text_encoder, base.vae, clip_frames, clip_texts, clip_skip)
    loss_config = LossConfig(**params.get("loss", {}))
    compute_loss = None
    if mode == "dual":
        still_cache = build_cache(base.tokenizer, base.text_encoder, base.vae, still_frames, still_texts, clip_skip)
        compute_loss = dual_path_loss(cache, still_cache, noise_scheduler, loss_config, motion_params,
                                      spatial_params, float(dual["appearance_debias"]), float(dual["spatial_dropout"]),
                                      device)

    validation = params["validation"]
    videos: dict[str, np.ndarray] = {}
    prefix = "motion_ft." if concept is None else f"motion_ft.{concept}."
    checkpoint_dir = params["checkpoint_dir"] if concept is None else f"{params['checkpoint_dir']}/{concept}"

    def sample_comparison(step: int) -> None:
        pipe = video_pipeline(base, unet, adapter)
        options = {"seed": int(validation["seed"]), "num_inference_steps": int(validation["num_inference_steps"]),
                   "guidance_scale": float(validation["guidance_scale"]), "num_frames": clip_frames.shape[1],
                   "resolution": clip_frames.shape[2], "clip_skip": clip_skip}
        with finetune.inference_autocast(device, frozen_dtype):
            unet.disable_adapters()
            base_videos = sample_videos(pipe, validation["prompts"], **options)
            unet.enable_adapters()
            lora_videos = sample_videos(pipe, validation["prompts"], **options)
        for number, (before, after) in enumerate(zip(base_videos, lora_videos, strict=True)):
            videos[f"step_{step:06d}_prompt{number}"] = side_by_side([before, after])

    schedule = schedule_info(noise_scheduler)
    tracking.set_tags({"base_model": base.source, "motion_adapter": str(base_model["motion_adapter"]),
                       f"{prefix}mode": mode})
    tracking.log_params({f"{prefix}{key}": value for key, value in schedule.items()})
    logger.info("Training a %s motion LoRA%s (rank %s) on %d clips of %d frames for %d steps on %s", mode,
                "" if concept is None else f" for concept {concept}", motion_config.r, len(clip_frames),
                clip_frames.shape[1], config.max_steps, device)
    fit = finetune.fit_lora(
        unet, noise_scheduler, cache, loss_config, config, checkpoint_dir,
        param_groups=param_groups, compute_loss=compute_loss, loss_runs_backward=mode == "dual", validation_batch_size=int(validation["batch_size"]),
        validate_every=int(validation["every"]), on_validate=sample_comparison,
        on_log=lambda step, metrics: tracking.log_metrics(metrics, step=step, prefix=prefix),
        description=f"motion LoRA ({mode})" if concept is None else f"motion LoRA {concept} ({mode})",
    )  # fmt: skip
    if not any(name.startswith(f"step_{fit.training.global_step:06d}") for name in videos):
        unet.eval()
        sample_comparison(fit.training.global_step)

    summary = finetune.run_summary(fit, base.source, "motion", config, str(device), num_samples=len(clip_frames),
                          extra={"mode": mode, "motion_adapter": str(base_model["motion_adapter"]), **schedule,
                                 "num_frames": int(clip_frames.shape[1]),
                                 "image_lora_merged": bool(image_lora_used), "image_lora_scale": image_scale})
    info = {"base_model": base.source, "motion_adapter": str(base_model["motion_adapter"]),
            "steps": fit.training.global_step, "mode": mode, "num_frames": int(clip_frames.shape[1]),
            "num_samples": len(clip_frames), "trigger_captions": sorted(set(clip_texts))[:20], **schedule}
    if concept is not None:
        summary["concept"] = info["concept"] = concept
    motion_lora = TrainedLora(state_dict=_cpu(lora_state_dict(unet, "motion")), lora_config=motion_config.to_dict(),
                              kind="motion", info=info)
    spatial_lora = TrainedLora(state_dict={}, lora_config={}, kind="image", info=info)
    if mode == "dual":
        spatial_lora = TrainedLora(state_dict=_cpu(lora_state_dict(unet, "spatial")),
                                   lora_config=spatial_config.to_dict(), kind="image", info=info)
    return motion_lora, spatial_lora, videos, summary


def _cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}


def _adapter_parameters(model: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n and f".{adapter_name}." in n]


@contextlib.contextmanager
def _frozen(parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def dual_path_loss(clip_cache, still_cache, noise_scheduler, loss_config: LossConfig,
                   motion_params: list[torch.nn.Parameter], spatial_params: list[torch.nn.Parameter],
                   debias: float, spatial_dropout: float, device) -> Callable:
    """MotionDirector's step: the spatial LoRA learns from the still loss only, the temporal LoRA
    from the (appearance-debiased) clip loss only.

    Each path runs its forward and backward inside its own LoRA scales, so gradient
    checkpointing recomputes a block with the scales its forward used; the other path's LoRA is
    frozen meanwhile, so no gradient crosses over. On steps where the spatial LoRA is dropped
    its still loss is skipped. Used with ``loss_runs_backward`` (see ``training.train``).
    """
    import torch

    from machining_t2v.diffusion.loss import noise_prediction_loss
    from machining_t2v.lora.injection import lora_scale

    # Every loss option of motion_ft.loss applies to the clips too; only the debias is the dual mode's own.
    temporal_config = dataclasses.replace(loss_config, appearance_debias=debias)
    num_stills = still_cache.latents.shape[0]

    def compute_loss(model, indices, randomness, backward):
        # Whether the spatial LoRA sits out this step: one decision for the whole batch, drawn
        # from the generator every process shares.
        drop_spatial = bool(torch.rand((), generator=randomness.shared) < spatial_dropout)
        total = torch.zeros((), device=device)
        # Spatial path: single stills as one-frame clips, the temporal LoRA off and frozen. One still
        # per clip of the batch, drawn from that clip's own generator (the same on any process count).
        if not drop_spatial:
            still_indices = randomness.randint(num_stills)
            with lora_scale(model, "motion", 0.0), _frozen(motion_params):
                spatial = noise_prediction_loss(
                    model, noise_scheduler, still_cache.latents[still_indices].unsqueeze(2).to(device),
                    still_cache.text_embeddings[still_indices].to(device), randomness, loss_config,
                    still_cache.empty_text_embedding,
                )  # fmt: skip
                backward(spatial)
            total = total + spatial.detach()
        # Temporal path: whole clips, with the spatial LoRA on (or dropped) but frozen.
        with lora_scale(model, "spatial", 0.0 if drop_spatial else 1.0), _frozen(spatial_params):
            temporal = noise_prediction_loss(
                model, noise_scheduler, clip_cache.latents[indices].to(device),
                clip_cache.text_embeddings[indices].to(device), randomness, temporal_config,
                clip_cache.empty_text_embedding,
            )  # fmt: skip
            backward(temporal)
        return total + temporal.detach()

    return compute_loss
