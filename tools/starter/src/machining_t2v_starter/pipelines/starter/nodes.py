"""Nodes of the ``starter`` pipeline: pretrain the starter model in its generic world."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from machining_t2v.diffusion.sampling import (
    image_pipeline,
    sample_images,
    sample_videos,
    video_pipeline,
)
from machining_t2v.evaluation.inworld import InWorldEvaluator, accuracy
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.models.published_folders import read_marker
from machining_t2v.training import TrainingConfig, checkpoint_step, latest_checkpoint
from machining_t2v.training.finetune import training_config_from_params
from machining_t2v_starter import stages as starter
from machining_t2v_starter import world as starter_world
from machining_t2v_starter.evaluator_training import train_evaluator

logger = logging.getLogger(__name__)


def render_starter_world(params: dict[str, Any]) -> dict[str, Any]:
    """Render the pretraining clips: neutral machine scenes and moving plain shapes.

    Returns:
        ``{"clips": uint8 (N, F, 64, 64, 3), "captions": [...], "labels": [...]}``.
    """
    return _render_world(params, int(params["seed"]))


def _render_world(params: dict[str, Any], seed: int) -> dict[str, Any]:
    world = params["world"]
    clips = starter_world.render_pretraining_world(int(world["machine_clips"]), int(world["shape_clips"]), seed,
                                                   wording=world["direction_words"],
                                                   shape_motions=_shape_motions(world))
    frames, captions, labels = starter_world.stack_clips(clips)
    logger.info("Rendered %d starter-world clips from seed %d (%d unique captions)", len(frames), seed,
                len(set(captions)))
    return {"clips": frames, "captions": captions, "labels": labels}


def _shape_motions(world: dict[str, Any]) -> tuple[str, ...]:
    """``world.shape_motions``: ``all``, a YAML list, or names separated by spaces (what
    ``--params`` can carry, as it splits on commas)."""
    motions = world.get("shape_motions", "all")
    if motions == "all":
        return starter_world.SHAPE_MOTIONS
    return tuple(motions.split() if isinstance(motions, str) else motions)


def _stills(clips: np.ndarray, per_clip: int) -> np.ndarray:
    step = max(1, clips.shape[1] // per_clip)
    return clips[:, ::step][:, :per_clip].reshape(-1, *clips.shape[2:])


def _held_out_frames(seed: int) -> np.ndarray:
    # Clips the VAE never saw (other seeds), in the grey world's and the shop's look.
    clips = (starter_world.render_machine_clips(24, seed + 101, shop=False)
             + starter_world.render_machine_clips(24, seed + 102, shop=True)
             + starter_world.render_shape_clips(24, seed + 103))
    return starter_world.stack_clips(clips)[0][:, ::4].reshape(-1, starter_world.SIZE, starter_world.SIZE, 3)


def pretrain_vae(world: dict[str, Any], params: dict[str, Any]) -> tuple[AutoencoderKL, dict[str, float | None]]:
    """Stage 1: train the VAE on the world's frames and colour-tinted copies of them.

    Returns:
        The trained VAE (its ``scaling_factor`` set from the latents' spread, or kept from the
        ``continue_from`` folder) and its held-out reconstruction figures: PSNR and the
        flat-colour error.
    """
    seed, stage = int(params["seed"]), params["vae"]
    stills = _stills(world["clips"], int(stage["stills_per_clip"]))
    images = np.concatenate([stills, starter.tinted_copies(stills, seed)])
    vae = _components(params)["vae"]
    config = training_config_from_params(stage["training"], len(images))
    result = starter.train_vae(vae, images, config, Path(params["checkpoint_dir"]) / "vae",
                               kl_weight=float(stage["kl_weight"]), crop=int(stage["crop"]))
    vae.eval().requires_grad_(False)
    if not params.get("continue_from"):
        # A continued folder keeps its latent scale: its UNet was trained on latents scaled by it.
        vae.register_to_config(scaling_factor=starter.latent_scaling_factor(vae, stills))
    held_out = _held_out_frames(seed)
    reconstruction = starter.reconstruct(vae, held_out)
    metrics = {
        "vae_steps": result.global_step,
        "vae_final_loss": result.losses[-1] if result.losses else None,  # JSON null, not NaN
        "vae_psnr_db": starter.psnr(held_out, reconstruction),
        "vae_flat_colour_error": starter.flat_colour_error(held_out, reconstruction),
        "vae_scaling_factor": float(vae.config.scaling_factor),
    }
    logger.info("Starter VAE: held-out PSNR %.2f dB, flat-colour error %.1f/255",
                metrics["vae_psnr_db"], metrics["vae_flat_colour_error"])
    return vae, metrics


def encode_starter_world(world: dict[str, Any], vae: AutoencoderKL, params: dict[str, Any]) -> torch.Tensor:
    """Scaled latents of every world clip, (N, C, F, h, w), shared by the UNet and adapter stages."""
    return starter.encode_clip_latents(vae, world["clips"])


def _switch(params: dict[str, Any], section: str, key: str) -> bool:
    """``params[section][key]``, refused unless it is a YAML boolean (a string "false" is truthy)."""
    value = params[section][key]
    if not isinstance(value, bool):
        raise ValueError(f"starter.{section}.{key} must be true or false, got {value!r}")
    return value


def _components(params: dict[str, Any]) -> dict[str, Any]:
    """The components the stages start from: the seeded random starter or, with ``continue_from``,
    the weights of that published starter folder. The noise schedule is always ``noise_schedule``'s,
    so a folder can be trained on under another schedule than it was made with."""
    parts = starter.starter_components(int(params["seed"]),
                                       prediction_type=str(params["noise_schedule"]["prediction_type"]),
                                       zero_terminal_snr=_switch(params, "noise_schedule", "zero_terminal_snr"))
    if params.get("continue_from"):
        parts.update(_published_weights(Path(params["continue_from"])))
    return parts


def _published_weights(folder: Path) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, UNet and motion adapter of a published starter, in fp32."""
    if read_marker(folder, starter.STARTER_MARKER) is None:
        raise ValueError(f"starter.continue_from: {folder} is not a published starter model (no readable "
                         f"{starter.STARTER_MARKER}); name a folder `kedro run --pipelines=starter` (in "
                         "tools/starter) wrote, e.g. ../../models/starter")
    base = load_base_model(str(folder))
    adapter = load_motion_adapter(str(folder / "motion_adapter"))
    return {"tokenizer": base.tokenizer, "text_encoder": base.text_encoder.requires_grad_(False),
            "vae": base.vae, "unet": base.unet, "motion_adapter": adapter}


def _text_encoder_learning_rate(stage: dict[str, Any]) -> float | None:
    rate = stage["text_encoder_learning_rate"]
    return None if rate is None else float(rate)


def pretrain_unet(world: dict[str, Any], latents: torch.Tensor,
                  params: dict[str, Any]) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Stage 2: train the text-conditioned UNet on stills of the world.

    Returns:
        The UNet and the text encoder: the seeded random one, frozen, unless
        ``unet.text_encoder_learning_rate`` trains it with the UNet.
    """
    stage = params["unet"]
    parts = _components(params)
    per_clip = int(stage["stills_per_clip"])
    step = max(1, latents.shape[2] // per_clip)
    stills = latents[:, :, ::step][:, :, :per_clip].movedim(2, 1).reshape(-1, *latents.shape[1:2], *latents.shape[3:])
    captions = [caption for caption in world["captions"] for _ in range(per_clip)]
    unet, text_encoder = parts["unet"], parts["text_encoder"]
    config = training_config_from_params(stage["training"], len(stills))
    starter.train_denoiser(unet, parts["scheduler"], stills, captions, parts["tokenizer"], text_encoder, config,
                           Path(params["checkpoint_dir"]) / "unet", caption_dropout=float(stage["caption_dropout"]),
                           text_encoder_learning_rate=_text_encoder_learning_rate(stage),
                           description="starter UNet")
    return unet.eval().requires_grad_(False), text_encoder.eval()


def pretrain_motion_adapter(world: dict[str, Any], latents: torch.Tensor, vae: AutoencoderKL,
                            unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                            params: dict[str, Any]) -> tuple[MotionAdapter, CLIPTextModel, UNet2DConditionModel]:
    """Stage 3: train the motion adapter's temporal modules on the world's clips.

    With ``motion_adapter.new_world_every: N`` the adapter sees a newly rendered world every N
    steps (part k from seed ``seed + 10000 k``, encoded by ``vae``; part 0 is ``world``), the
    learning rate staying on the schedule of the whole run. It then sees N distinct clips per
    part instead of the same ones again; the committed starter's adapter was trained that way.

    Returns:
        The adapter; the text encoder, trained on with the adapter when
        ``motion_adapter.text_encoder_learning_rate`` is set (clips are where a caption's word
        order shows: which way a shape moves), else as stage 2 left it; and the UNet, whose
        cross-attention trained too when ``motion_adapter.train_cross_attention`` is true,
        else stage 2's, untouched.
    """
    stage = params["motion_adapter"]
    train_cross_attention = _switch(params, "motion_adapter", "train_cross_attention")
    new_world_every = _new_world_every(stage)
    parts = _components(params)
    adapter = parts["motion_adapter"]
    motion_unet = starter.motion_unet_for_training(unet, adapter, train_cross_attention=train_cross_attention)
    config = training_config_from_params(stage["training"], len(latents))
    checkpoint_dir = Path(params["checkpoint_dir"]) / "motion_adapter"
    part = _world_part_to_resume(config, checkpoint_dir, new_world_every)
    while True:
        stop_at = min((part + 1) * new_world_every, config.max_steps) if new_world_every else None
        if part > 0:
            world = _render_world(params, int(params["seed"]) + 10_000 * part)
            latents = starter.encode_clip_latents(vae, world["clips"])
        starter.train_denoiser(motion_unet, parts["scheduler"], latents, world["captions"], parts["tokenizer"],
                               text_encoder, config, checkpoint_dir, caption_dropout=float(stage["caption_dropout"]),
                               text_encoder_learning_rate=_text_encoder_learning_rate(stage),
                               top_timestep_share=float(stage["top_timestep_share"]),
                               description=f"starter motion adapter (world {part})", stop_at=stop_at)
        if stop_at is None or stop_at >= config.max_steps:
            break
        # The next part goes on from the checkpoint this one ended with.
        config = dataclasses.replace(config, resume="latest")
        part += 1
    if train_cross_attention:
        unet = starter.copy_cross_attention(motion_unet, unet)
    return starter.copy_motion_modules(motion_unet, adapter).eval(), text_encoder.eval(), unet


def _new_world_every(stage: dict[str, Any]) -> int:
    """``motion_adapter.new_world_every``: adapter steps per rendered world, 0 for one world throughout."""
    value = stage.get("new_world_every", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"starter.motion_adapter.new_world_every must be a whole number of steps >= 0 "
                         f"(0: one world throughout), got {value!r}")
    return value


def _world_part_to_resume(config: TrainingConfig, checkpoint_dir: Path, new_world_every: int) -> int:
    """Which world part the run resumes in: the one holding the step its checkpoint is at."""
    if not new_world_every or config.resume is None:
        return 0
    checkpoint = latest_checkpoint(checkpoint_dir) if config.resume == "latest" else Path(config.resume)
    step = 0 if checkpoint is None else checkpoint_step(checkpoint)
    # A finished run stays in its last part: nothing is rendered to train no step on it.
    return min(step, max(config.max_steps - 1, 0)) // new_world_every


def evaluator_training_clips(params: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Labelled renders the in-world evaluator learns from: grey and shop machine scenes, and
    shapes on varied backdrops (generated shapes are not always on plain grey)."""
    seed, counts = int(params["seed"]) + 500, params["evaluator"]
    clips = (starter_world.render_machine_clips(int(counts["neutral_clips"]), seed, shop=False)
             + starter_world.render_machine_clips(int(counts["shop_clips"]), seed + 1, shop=True)
             + starter_world.render_shape_clips(int(counts["shape_clips"]), seed + 2, varied_look=True))
    frames, _, labels = starter_world.stack_clips(clips)
    return frames, labels


def train_starter_evaluator(vae: AutoencoderKL, params: dict[str, Any]) -> InWorldEvaluator:
    """Train the in-world evaluator (scene, style, motion) on labelled renders and their VAE round trips.

    Every generated clip comes out of the starter's VAE decoder, which softens edges and
    casts colour over whole frames. An evaluator that has only seen sharp renders misreads
    that look (on held-out renders sent through the VAE it called 12% of the styles wrong);
    each render is therefore also shown after an encode/decode round trip, with its label.
    Generated clips also shimmer, see :func:`shimmering_round_trips`. The shop's own clips move
    slower than the world's renders, see :func:`sample_video_motion_clips`.

    With ``evaluator.train: false`` the ``continue_from`` folder's evaluator is kept instead.
    """
    if not _switch(params, "evaluator", "train"):
        return _continued_evaluator(params)
    frames, labels = evaluator_training_clips(params)
    shimmering, shimmering_labels = shimmering_round_trips(vae, frames, labels, params)
    slow, slow_labels = sample_video_motion_clips(params)
    clips = np.concatenate([frames, starter.reconstruct(vae, frames, description="VAE round trips"), shimmering,
                            slow, starter.reconstruct(vae, slow, description="VAE round trips (sample-video clips)")])
    return train_evaluator(clips, labels + labels + shimmering_labels + slow_labels + slow_labels,
                           seed=int(params["seed"]), epochs=int(params["evaluator"]["epochs"]))


def _continued_evaluator(params: dict[str, Any]) -> InWorldEvaluator:
    """The ``continue_from`` folder's evaluator, for a run that publishes that folder's VAE unchanged:
    it was trained on round trips through that VAE, and retrained with the same evaluator
    parameters it comes out byte-identical (after about 12 minutes on 2 CPU cores)."""
    folder = params.get("continue_from")
    if not folder or int(params["vae"]["training"]["max_steps"]) != 0:
        raise ValueError("starter.evaluator.train: false keeps the evaluator of the starter.continue_from folder, "
                         "which knows that folder's VAE only; it needs starter.continue_from and "
                         f"starter.vae.training.max_steps=0 (got {folder!r} and "
                         f"{params['vae']['training']['max_steps']})")
    return InWorldEvaluator.load(Path(folder) / "inworld_evaluator")


def sample_video_motion_clips(params: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, str | None]]]:
    """Shop clips cut like the frames pipeline cuts the sample videos, labelled with their motion only.

    Over a 2 to 4 s video the tool travels a third to two thirds as far per frame as in the world's
    16-frame renders; an evaluator that knew only those read 62% of the shop's own clips'
    motions right (milling clips as rotating, slow turning feeds as inward). Without scene or
    style labels these clips teach the motion head only, so scene and style readings stay as they were.
    """
    clips = starter_world.render_sample_video_clips(int(params["evaluator"]["sample_video_clips"]),
                                                    int(params["seed"]) + 503)
    frames, _, labels = starter_world.stack_clips(clips)
    return frames, [{"scene": None, "style": None, "motion": label["motion"]} for label in labels]


def shimmering_round_trips(vae: AutoencoderKL, frames: np.ndarray, labels: list[dict[str, str]],
                           params: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, str | None]]]:
    """Some of the evaluator's renders held still and moving, through a round trip with latent shimmer.

    Each frame of a generated clip is denoised from its own noise, so a scene that does not
    move still shimmers from frame to frame (most pixels shift by about 1 px/frame, with no
    net travel). The evaluator had seen no still clip at all and read every such clip as a
    tool travelling left. ``evaluator.shimmer_clips`` renders are therefore shown with their
    first frame held (labelled ``static``) and as they move (motion label kept), each through
    a round trip with a shimmer drawn from ``evaluator.shimmer`` (latent standard deviations).
    They teach the motion head only (no scene or style label); scene and style are learnt
    from the renders and their plain round trips.
    """
    settings = params["evaluator"]
    rng = np.random.default_rng([int(params["seed"]), 0x5111])
    picks = rng.choice(len(frames), size=min(int(settings["shimmer_clips"]), len(frames)), replace=False)
    held = np.repeat(frames[picks, :1], frames.shape[1], axis=1)
    clips = np.concatenate([held, frames[picks]])
    motions = ["static"] * len(picks) + [labels[i]["motion"] for i in picks]
    clip_labels = [{"scene": None, "style": None, "motion": motion} for motion in motions]
    low, high = (float(x) for x in settings["shimmer"])
    shimmering = np.stack([
        starter.reconstruct(vae, clip, shimmer=float(rng.uniform(low, high)), seed=number)
        for number, clip in enumerate(tqdm(clips, desc="shimmering VAE round trips", unit="clip"))
    ])
    return shimmering, clip_labels


def publish_starter(vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                    adapter: MotionAdapter, evaluator: InWorldEvaluator, vae_metrics: dict[str, float | None],
                    params: dict[str, Any]) -> dict[str, Any]:
    """Save the starter as a diffusers folder (fp16) with its motion adapter and evaluator.

    Returns:
        Where it went, its size and what it was trained with (also in ``starter_model.json``).
    """
    parts = _components(params)
    parts.update(vae=vae, unet=unet, text_encoder=text_encoder, motion_adapter=adapter)
    continued_from = params.get("continue_from")
    marker = {
        "kind": ("starter model trained on from a published starter in the generic starter world" if continued_from
                 else "starter model pretrained from scratch on the generic starter world"),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": int(params["seed"]),
        "world": params["world"],
        "noise_schedule": params["noise_schedule"],
        "steps": {stage: params[stage]["training"]["max_steps"] for stage in ("vae", "unet", "motion_adapter")},
        "text_encoder_trained_in": [stage for stage in ("unet", "motion_adapter")
                                    if _text_encoder_learning_rate(params[stage]) is not None],
        "motion_adapter_stage": {"train_cross_attention": params["motion_adapter"]["train_cross_attention"],
                                 "top_timestep_share": params["motion_adapter"]["top_timestep_share"],
                                 "new_world_every": _new_world_every(params["motion_adapter"])},
        **vae_metrics,
    }
    if continued_from:
        earlier = read_marker(Path(continued_from), starter.STARTER_MARKER) or {}
        marker["continued_from"] = {"folder": str(continued_from), "trained_at": earlier.get("trained_at")}
    folder = starter.save_starter(params["output_dir"], parts, marker,
                                  extra=lambda tmp: evaluator.save(tmp / "inworld_evaluator"))
    info = _published_info(folder, marker)
    logger.info("Published the starter model to %s (%.1f MB)", folder, info["size_mb"])
    return info


def describe_published_starter(params: dict[str, Any]) -> dict[str, Any]:
    """What ``publish_starter`` returned, read back from the starter folder at ``output_dir``.

    Lets ``starter_check`` measure the committed folder without retraining it.

    Raises:
        ValueError: ``output_dir`` holds no starter model (no readable ``starter_model.json``).
    """
    folder = Path(params["output_dir"])
    marker = read_marker(folder, starter.STARTER_MARKER)
    if marker is None:
        raise ValueError(f"{folder} holds no starter model (no readable {starter.STARTER_MARKER}); "
                         "make one with `kedro run --pipelines=starter` in tools/starter")
    return _published_info(folder, marker)


def _published_info(folder: Path, marker: dict[str, Any]) -> dict[str, Any]:
    return {"folder": str(folder), "size_mb": round(starter.folder_size_mb(folder), 2), **marker}


def _with_labels(prompts: list[str]) -> list[dict[str, str | None]]:
    return [starter_world.expected_labels(prompt) for prompt in prompts]


def _confusion(predictions: list[dict[str, str]], expected: list[dict[str, str | None]],
               key: str) -> dict[str, dict[str, int]]:
    """How often each expected label was read as each label: ``{expected: {read: count}}``.

    Rows without an expected label are left out, as :func:`accuracy` leaves them out.
    """
    counts: dict[str, dict[str, int]] = {}
    for predicted, wanted in zip(predictions, expected, strict=True):
        if wanted.get(key) is None:
            continue
        row = counts.setdefault(wanted[key], {})
        row[predicted[key]] = row.get(predicted[key], 0) + 1
    return counts


def check_starter(starter_model: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Measure the published starter against its targets, loading it like any diffusers folder.

    Scene control: images for prompts of each scene type, classified by the in-world evaluator.
    Generic motion: clips for plain-shape motion prompts, classified from their optical flow.
    ``generic_motion_reads`` shows which motions miss and how (``{expected: {read: count}}``).
    Tool travel: clips for the grey machine captions (no direction named), and the share of them
    whose motion reads as one a sample video's tool makes: what the motion LoRA builds on.
    """
    folder = starter_model["folder"]
    check = params["check"]
    base = load_base_model(folder)
    adapter = load_motion_adapter(str(Path(folder) / "motion_adapter"))
    evaluator = InWorldEvaluator.load(Path(folder) / "inworld_evaluator")
    seeds = range(int(check["seed"]), int(check["seed"]) + int(check["seeds_per_prompt"]))
    sampling = {"num_inference_steps": int(check["num_inference_steps"]),
                "guidance_scale": float(check["guidance_scale"])}

    images_pipe = image_pipeline(base, base.unet)
    images = [image for seed in seeds for image in sample_images(
        images_pipe, check["scene_prompts"], seed=seed * 1000, resolution=64, **sampling)]
    # A still as a two-frame clip: the evaluator scores clips (its motion guess is ignored here).
    image_predictions = evaluator.predict(np.repeat(np.stack(images)[:, None], 2, axis=1))
    videos_pipe = video_pipeline(base, build_motion_unet(base.unet, adapter), adapter)

    def clips_for(prompts: list[str]) -> list[np.ndarray]:
        return [video for seed in seeds for video in sample_videos(
            videos_pipe, prompts, seed=seed * 1000, resolution=64, num_frames=starter_world.NUM_FRAMES, **sampling)]

    # Ask in the words the folder's world was captioned with (markers from before the option: "order").
    wording = starter_model.get("world", {}).get("direction_words", "order")
    motion_prompts = [starter_world.reword_directions(prompt, wording) for prompt in check["motion_prompts"]]
    videos = clips_for(motion_prompts)
    video_predictions = evaluator.predict(np.stack(videos))
    machine_videos = clips_for(check["machine_prompts"])
    tool_motions = set(starter_world.DIRECTION_MOTIONS.values())
    travelling = [p["motion"] in tool_motions for p in evaluator.predict(np.stack(machine_videos))]
    # sample_images lays prompts out per seed; re-pair predictions with their prompt labels.
    scene_expected = _with_labels([p for _ in seeds for p in check["scene_prompts"]])
    motion_expected = _with_labels([p for _ in seeds for p in motion_prompts])
    report = {
        **starter_model,
        "scene_accuracy": accuracy(image_predictions, scene_expected, "scene"),
        "generic_motion_accuracy": accuracy(video_predictions, motion_expected, "motion"),
        "generic_motion_reads": _confusion(video_predictions, motion_expected, "motion"),
        "generic_motion_prompts": motion_prompts,
        "video_scene_accuracy": accuracy(video_predictions, motion_expected, "scene"),
        "num_scene_samples": len(images),
        "num_motion_samples": len(videos),
        "machine_tool_travel_share": float(np.mean(travelling)),
        "num_machine_samples": len(machine_videos),
        "targets": {"vae_psnr_db": ">= 25", "vae_flat_colour_error": "< 10", "scene_accuracy": ">= 0.90",
                    "generic_motion_accuracy": ">= 0.70"},
    }
    logger.info("Starter check: scene accuracy %.2f, generic motion accuracy %.2f, machine tool travels in %.2f",
                report["scene_accuracy"], report["generic_motion_accuracy"], report["machine_tool_travel_share"])
    return report
