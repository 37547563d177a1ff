"""The starter model: a small SD1.5-shaped stack with a motion adapter, pretrained from scratch.

The built-in tiny model (:func:`machining_t2v.fixtures.tiny_model.build_tiny_model`) is random, so on a
machine without real weights every sample is noise. The starter model is pretrained on the
generic world of :mod:`machining_t2v_starter.world` (grey machine scenes, moving plain
shapes), on a CPU, in three stages that all run on the project's one training core
(:func:`machining_t2v.training.train`, so each stage checkpoints and resumes):

1. **VAE** (``AutoencoderKL``, 64 px -> 4x16x16 latents): reconstruction MSE plus a small KL
   term, trained on random crops (the VAE is convolutional, and crops cost a quarter of a
   full frame) of the world's frames and of colour-tinted copies of them, so colours survive
   the round trip even though the world itself is mostly grey.
2. **UNet** (``UNet2DConditionModel``, cross-attention at 8x8 and 4x4): the denoising loss
   (v or epsilon, see :func:`starter_noise_scheduler`) with caption dropout, on cached
   latents of stills, under a frozen, randomly initialised CLIP text encoder (its embeddings
   differ per word, which is all the cross-attention needs to read a caption), or one trained
   with the UNet on request.
3. **Motion adapter** (``MotionAdapter``): the temporal modules of the ``UNetMotionModel``
   train on 8-frame clips, like AnimateDiff; on request the UNet's cross-attention (see
   :func:`motion_unet_for_training`) and the text encoder (see
   :class:`DenoiserWithTextEncoder`) train with them, and a share of the samples trains at the
   noisiest timesteps only (:func:`machining_t2v.diffusion.loss.draw_timesteps`).

The result is an ordinary diffusers pipeline folder (safetensors, fp16) plus
``motion_adapter/`` and ``inworld_evaluator/`` subfolders, loaded by
:func:`machining_t2v.models.loading.load_base_model` like any checkpoint. No Kedro import.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm

from machining_t2v.diffusion.caches import TrainingCache, encode_text, images_to_tensor
from machining_t2v.diffusion.loss import LossConfig, noise_prediction_loss
from machining_t2v.fixtures.tiny_model import (
    DOMAIN_WORDS,
    build_tiny_tokenizer,
    sd15_noise_scheduler,
    small_text_encoder,
)
from machining_t2v.models.loading import build_motion_unet
from machining_t2v.training import LossRandomness, TrainingConfig, TrainingResult, train
from machining_t2v_starter.world import WORLD_WORDS

logger = logging.getLogger(__name__)

STARTER_MARKER = "starter_model.json"
STARTER_VERSION = 1


# --------------------------------------------------------------------------- architecture


def starter_noise_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> DDPMScheduler:
    """The starter's training schedule: AnimateDiff's linear betas (its video pipeline samples with them).

    The defaults are SD1.5's epsilon schedule, under which starter v1 was trained.
    Its top timestep still keeps sqrt(alpha_bar) = 4% of the clip: enough for the model to read
    which way a shape moves from the noisy clip itself, so in training the caption's direction
    words hardly lower the loss, and sampling from pure noise picks a direction at random.
    ``zero_terminal_snr`` rescales the betas so the top timestep is pure noise (Lin et al. 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed") and samples from it
    ("trailing" spacing); it needs ``v_prediction``, as the noise is all there is to predict there.

    Raises:
        ValueError: a prediction type other than ``epsilon`` or ``v_prediction``, or zero
            terminal SNR with ``epsilon``.
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError(f"zero_terminal_snr needs prediction_type v_prediction, got {prediction_type!r}: at zero "
                         "SNR an epsilon model sees the noise itself and cannot say anything of the clip")
    schedule = sd15_noise_scheduler("linear").config
    if zero_terminal_snr:
        return DDPMScheduler.from_config(schedule, prediction_type=prediction_type, rescale_betas_zero_snr=True,
                                         timestep_spacing="trailing")
    return DDPMScheduler.from_config(schedule, prediction_type=prediction_type)


def starter_components(seed: int, *, prediction_type: str = "epsilon",
                       zero_terminal_snr: bool = False) -> dict[str, Any]:
    """Fresh (untrained) starter components, deterministic from ``seed``; the noise schedule as
    :func:`starter_noise_scheduler` builds it from ``prediction_type`` and ``zero_terminal_snr``."""
    tokenizer = build_tiny_tokenizer(DOMAIN_WORDS + WORLD_WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            # Three blocks = two 2x downsamplings: 64 px -> 16x16 latents. SD's factor 8 would
            # leave 8x8 latents, too coarse to keep a 64 px scene.
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=64,
        )
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 128),
            # Cross-attention at 8x8 and 4x4 only: at 16x16 it doubles the step time.
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        torch.manual_seed(seed + 2)
        text_encoder = small_text_encoder(tokenizer, hidden_size=64)
        torch.manual_seed(seed + 3)
        adapter = MotionAdapter(
            block_out_channels=(32, 64, 128),  # must equal the UNet's
            motion_layers_per_block=2,  # must equal the UNet's layers_per_block
            motion_num_attention_heads=4,
            motion_norm_num_groups=8,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        )
    scheduler = starter_noise_scheduler(prediction_type, zero_terminal_snr)
    text_encoder.requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet,
            "scheduler": scheduler, "motion_adapter": adapter}


# --------------------------------------------------------------------------- stage 1: VAE


def tinted_copies(frames: np.ndarray, seed: int) -> np.ndarray:
    """Copies of (N, H, W, 3) frames with a random colour cast each, so the VAE learns colour."""
    rng = np.random.default_rng(seed)
    gains = rng.uniform(0.45, 1.35, (len(frames), 1, 1, 3)).astype(np.float32)
    offsets = rng.uniform(-40, 40, (len(frames), 1, 1, 3)).astype(np.float32)
    return np.clip(frames.astype(np.float32) * gains + offsets, 0, 255).astype(np.uint8)


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, randomness: LossRandomness, kl_weight: float) -> torch.Tensor:
    """Reconstruction MSE of a sampled latent plus ``kl_weight`` times the KL to N(0, 1)."""
    posterior = vae.encode(images).latent_dist
    # Reparameterised sample; the noise comes from the core's per-sample streams.
    eps = randomness.randn(*posterior.mean.shape[1:]).to(images.device)
    latents = posterior.mean + posterior.std * eps
    reconstruction = vae.decode(latents).sample
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return F.mse_loss(reconstruction, images) + kl_weight * kl


def random_crops(images: np.ndarray, randomness: LossRandomness, crop: int) -> np.ndarray:
    """One random ``crop`` x ``crop`` window per image (crop offsets from the per-sample streams)."""
    size = images.shape[1]
    if crop >= size:
        return images
    positions = size - crop + 1
    offsets = [divmod(o, positions) for o in randomness.randint(positions**2).tolist()]
    return np.stack([img[y:y + crop, x:x + crop] for img, (y, x) in zip(images, offsets, strict=True)])


def train_vae(vae: AutoencoderKL, images: np.ndarray, config: TrainingConfig, checkpoint_dir: str | Path, *,
              kl_weight: float = 1e-6, crop: int = 32, on_log: Callable | None = None) -> TrainingResult:
    """Stage 1: train every VAE parameter on uint8 (N, H, W, 3) ``images``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae.to(device).requires_grad_(True)

    def compute_loss(model, indices, randomness):
        batch = random_crops(images[indices.numpy()], randomness, crop)
        return vae_loss(model, images_to_tensor(batch).to(device), randomness, kl_weight)

    return train(vae, compute_loss, len(images), config, checkpoint_dir, on_log=on_log, description="starter VAE")


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, frames: np.ndarray, batch_size: int = 64, description: str | None = None,
                shimmer: float = 0.0, seed: int = 0) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 frames ``(..., H, W, 3)``, e.g. images or clips;
    returns uint8 frames of the same shape.

    ``shimmer`` adds independent Gaussian noise of that many latent standard deviations
    (``1 / scaling_factor``) to every frame's latent before decoding, drawn from ``seed``: the
    frame-to-frame shimmer of generated clips, whose frames are denoised from separate noise.
    ``description`` names a progress bar (none without it).
    """
    device = next(vae.parameters()).device
    flat = frames.reshape(-1, *frames.shape[-3:])
    generator = torch.Generator().manual_seed(seed)
    out = []
    starts = range(0, len(flat), batch_size)
    for start in tqdm(starts, desc=description, unit="batch", disable=description is None):
        x = images_to_tensor(flat[start:start + batch_size]).to(device, vae.dtype)
        latents = vae.encode(x).latent_dist.mean
        if shimmer > 0:
            noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
            latents = latents + shimmer / vae.config.scaling_factor * noise
        y = vae.decode(latents).sample
        out.append(((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(1, -1).cpu().numpy())
    return np.concatenate(out).reshape(frames.shape)


def psnr(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean PSNR in dB over images, for uint8 arrays (N, H, W, 3)."""
    diff = reference.astype(np.float64) - reconstruction.astype(np.float64)
    mse = np.maximum((diff**2).reshape(len(diff), -1).mean(axis=1), 1e-10)
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def flat_colour_error(reference: np.ndarray, reconstruction: np.ndarray, window: int = 5, tolerance: int = 4) -> float:
    """Mean per-channel absolute error (0-255) over flat colour regions, worst channel.

    A pixel is in a flat region when every channel varies by at most ``tolerance`` over the
    ``window`` x ``window`` neighbourhood of the reference: the inside of shapes, plain
    backgrounds, machine faces. Edges are left out: they measure sharpness, not colour.
    """
    import cv2

    kernel = np.ones((window, window), np.uint8)
    errors, counts = np.zeros(3), 0
    for ref, rec in zip(reference, reconstruction, strict=True):
        spread = np.max([cv2.dilate(ref[..., c], kernel) - cv2.erode(ref[..., c], kernel) for c in range(3)], axis=0)
        flat = spread <= tolerance
        if flat.any():
            errors += np.abs(ref[flat].astype(np.float64) - rec[flat].astype(np.float64)).sum(axis=0)
            counts += int(flat.sum())
    return float((errors / max(counts, 1)).max())


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, frames: np.ndarray) -> float:
    """1 / std of the posterior means, so scaled latents have unit variance (SD's 0.18215)."""
    device = next(vae.parameters()).device
    latents = vae.encode(images_to_tensor(frames[:512]).to(device)).latent_dist.mean
    return float(1.0 / latents.std())


# --------------------------------------------------------------------------- stages 2 and 3


@torch.no_grad()
def encode_clip_latents(vae: AutoencoderKL, clips: np.ndarray, batch_size: int = 64,
                        progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Scaled posterior-mean latents of uint8 clips (N, F, H, W, 3) -> (N, C, F, h, w)."""
    device = next(vae.parameters()).device
    frames = clips.reshape(-1, *clips.shape[2:])
    out = []
    for start in range(0, len(frames), batch_size):
        x = images_to_tensor(frames[start:start + batch_size]).to(device)
        out.append(vae.encode(x).latent_dist.mean.cpu() * vae.config.scaling_factor)
        if progress:
            progress(len(x))
    flat = torch.cat(out)
    return flat.reshape(len(clips), clips.shape[1], *flat.shape[1:]).movedim(1, 2).contiguous()


def _distinct_captions(captions: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct captions (sorted) and each sample's index into them: a world has far fewer
    captions than clips, so each is encoded once."""
    unique = sorted(set(captions))
    index = {caption: i for i, caption in enumerate(unique)}
    return unique, torch.tensor([index[c] for c in captions])


def caption_cache(tokenizer, text_encoder, latents: torch.Tensor, captions: Sequence[str]) -> TrainingCache:
    """A training cache of precomputed latents and the text states of their captions."""
    unique, sample_caption = _distinct_captions(captions)
    states = encode_text(tokenizer, text_encoder, unique + [""]).float().cpu()
    return TrainingCache(latents=latents, text_embeddings=states[sample_caption],
                         empty_text_embedding=states[-1:])


class DenoiserWithTextEncoder(torch.nn.Module):
    """A denoiser trained together with the text encoder that conditions it.

    The frozen random encoder tells which words a caption has but hardly in which order, so
    "from left to right" and "from right to left" reach the UNet almost alike. Training the
    encoder with the denoiser lets the loss try to teach it the order where the frames depend
    on it (on 2 CPU cores it did not; docs/starter_model.md).
    """

    def __init__(self, denoiser: torch.nn.Module, text_encoder: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.text_encoder = text_encoder


def caption_token_ids(tokenizer, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids of the distinct captions, each sample's caption index, and the empty caption's ids."""
    unique, sample_caption = _distinct_captions(captions)
    tokens = tokenizer(unique + [""], padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids
    return tokens[:-1], sample_caption, tokens[-1:]


def train_denoiser(model: torch.nn.Module, noise_scheduler, latents: torch.Tensor, captions: Sequence[str],
                   tokenizer, text_encoder: torch.nn.Module, config: TrainingConfig, checkpoint_dir: str | Path, *,
                   caption_dropout: float, text_encoder_learning_rate: float | None = None,
                   top_timestep_share: float = 0.0, description: str,
                   on_log: Callable | None = None, stop_at: int | None = None) -> TrainingResult:
    """Stages 2 and 3: the noise-prediction loss on cached latents for ``model``'s trainable parameters.

    Stills (N, C, h, w) train the UNet; clips (N, C, F, h, w) train a motion UNet whose
    temporal modules (and, if asked, cross-attention) alone have ``requires_grad``. With
    ``text_encoder_learning_rate`` the text encoder trains too, at that rate (its states are
    then computed every step); without it the encoder stays frozen and the states of the
    captions are computed once.
    ``top_timestep_share`` of the samples train at the 100 noisiest timesteps
    (:func:`~machining_t2v.diffusion.loss.draw_timesteps`). ``stop_at``: end this part of the run
    there (:func:`~machining_t2v.training.train`).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loss_config = LossConfig(caption_dropout=caption_dropout, top_timestep_share=top_timestep_share)

    if text_encoder_learning_rate is None:
        cache = caption_cache(tokenizer, text_encoder, latents, captions)
        model.to(device)

        def compute_loss(model, indices, randomness):
            return noise_prediction_loss(model, noise_scheduler, cache.latents[indices].to(device),
                                         cache.text_embeddings[indices].to(device), randomness, loss_config,
                                         cache.empty_text_embedding)

        return train(model, compute_loss, len(latents), config, checkpoint_dir, on_log=on_log,
                     description=description, stop_at=stop_at)

    caption_ids, sample_caption, empty_ids = caption_token_ids(tokenizer, captions)
    joint = DenoiserWithTextEncoder(model, text_encoder.requires_grad_(True)).to(device)
    param_groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": list(text_encoder.parameters()), "lr": text_encoder_learning_rate},
    ]

    def compute_joint_loss(joint, indices, randomness):
        ids = caption_ids[sample_caption[indices]].to(device)
        states = joint.text_encoder(ids)[0]
        empty_state = joint.text_encoder(empty_ids.to(device))[0]
        return noise_prediction_loss(joint.denoiser, noise_scheduler, latents[indices].to(device), states,
                                     randomness, loss_config, empty_state)

    result = train(joint, compute_joint_loss, len(latents), config, checkpoint_dir, param_groups=param_groups,
                   on_log=on_log, description=description, stop_at=stop_at)
    text_encoder.requires_grad_(False)
    return result


def _is_cross_attention(name: str) -> bool:
    """A spatial transformer's cross-attention (``attn2``: where the caption enters the UNet)."""
    return ".attn2." in name and "motion_modules" not in name


def motion_unet_for_training(unet: UNet2DConditionModel, adapter: MotionAdapter, *,
                             train_cross_attention: bool = False):
    """A motion UNet whose temporal modules alone train (AnimateDiff stage 1).

    ``train_cross_attention``: the UNet's cross-attention trains with them. Stage 2 trained it
    on stills, where no caption word says which way anything moves; on clips it can learn to
    pass the direction words on (write it back with :func:`copy_cross_attention`).
    """
    motion_unet = build_motion_unet(unet, adapter)
    motion_unet.requires_grad_(False)
    for name, parameter in motion_unet.named_parameters():
        if "motion_modules" in name or (train_cross_attention and _is_cross_attention(name)):
            parameter.requires_grad_(True)
    return motion_unet


def copy_cross_attention(motion_unet, unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Write the cross-attention of ``motion_unet`` back into the image ``unet`` it was built from."""
    unet_state = unet.state_dict()
    trained = {name: p for name, p in motion_unet.state_dict().items() if _is_cross_attention(name)}
    missing = [name for name in unet_state if _is_cross_attention(name) and name not in trained]
    if missing or not trained:
        raise ValueError(f"the motion UNet lacks {len(missing)} of the UNet's cross-attention weights, "
                         f"e.g. {missing[:2]}")
    unet.load_state_dict({**unet_state, **{name: trained[name].to(unet_state[name].dtype) for name in trained}})
    return unet


def copy_motion_modules(motion_unet, adapter: MotionAdapter) -> MotionAdapter:
    """Write the trained temporal modules of ``motion_unet`` back into ``adapter``."""
    trained = {name: p for name, p in motion_unet.state_dict().items() if "motion_modules" in name}
    adapter_state = adapter.state_dict()
    missing = [name for name in adapter_state if name not in trained]
    if missing:
        raise ValueError(f"the motion UNet lacks {len(missing)} adapter weights, e.g. {missing[:2]}")
    adapter.load_state_dict({name: trained[name].to(adapter_state[name].dtype) for name in adapter_state})
    return adapter


# --------------------------------------------------------------------------- the published folder


def save_starter(folder: str | Path, parts: dict[str, Any], marker: dict[str, Any],
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write the starter as a diffusers folder in fp16 (safetensors) plus ``motion_adapter/``.

    fp16 halves the committed size; ``from_pretrained`` loads it into fp32 models unless a
    dtype is asked for. diffusers upcasts its own parts by default, but transformers 5 loads a
    text encoder in the ``dtype`` its config names, so the config names float32: a plain
    ``StableDiffusionPipeline.from_pretrained(folder)`` then runs on a CPU without mixing
    dtypes (the fp16 weights widen losslessly). ``folder`` may hold an earlier starter (it is
    replaced), never anything else: a folder with files but no starter marker is refused, not
    deleted.
    """
    from machining_t2v.models.published_folders import (
        publish_folder,
        read_marker,
        refuse_foreign_folder,
    )

    out = Path(folder)
    refuse_foreign_folder(out, STARTER_MARKER, "starter model", "starter.output_dir")

    def write(tmp: Path) -> None:
        half = {name: (part.half() if isinstance(part, torch.nn.Module) else part) for name, part in parts.items()}
        adapter = half.pop("motion_adapter")
        pipe = StableDiffusionPipeline(**half, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(tmp, safe_serialization=True)
        adapter.save_pretrained(tmp / "motion_adapter", safe_serialization=True)
        text_config = tmp / "text_encoder" / "config.json"
        config = json.loads(text_config.read_text(encoding="utf-8"))
        config["dtype"] = "float32"  # loaded as fp32 by default, like the diffusers parts (see above)
        text_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for part in parts.values():
            if isinstance(part, torch.nn.Module):
                part.float()
        if extra is not None:
            extra(tmp)

    def is_current(path: Path) -> bool:
        # Another process published this very run (same training time) while this one wrote.
        published = read_marker(path, STARTER_MARKER)
        trained_at = marker.get("trained_at")
        return published is not None and trained_at is not None and published.get("trained_at") == trained_at

    return publish_folder(out, write, STARTER_MARKER, {"starter_version": STARTER_VERSION, **marker}, is_current)


def folder_size_mb(folder: str | Path) -> float:
    """Total size of the files under ``folder`` in MB."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6

