"""Model loading in one place: an SD1.5-family checkpoint (a diffusers folder or a hub id).

Everything downstream (training core, generation, evaluation) gets its models from
:func:`load_base_model` and :func:`load_motion_adapter`, so a real checkpoint and the
tiny model (a folder built by :mod:`machining_t2v.fixtures.tiny_model`) follow the same
``from_pretrained(subfolder=...)`` path. Where a spec points is checked in :mod:`.sources`.
The spec ``builtin:tiny`` is resolved to its folder before it gets here: in a Kedro run by the
catalog's model datasets (:mod:`machining_t2v.kedro_glue.model_datasets`), in the console
script by the script itself.

This module must not import Kedro: it also runs in notebooks and under ``accelerate launch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from machining_t2v.models.sources import (
    EXPECTED_LAYOUT,
    TINY_MODEL,
    check_hub,
    missing_diffusers_parts,
    resolve_source,
)


@dataclass
class BaseModel:
    """The SD1.5-family components a training or generation run needs."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    source: str
    """The folder or hub id actually loaded (the tiny model's folder, not ``builtin:tiny``)."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD1.5 and the starter)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _refuse_builtin(spec: str, what: str) -> None:
    if spec == TINY_MODEL:
        raise ValueError(f"{what} {TINY_MODEL} is resolved to its folder first: "
                         f"machining_t2v.fixtures.tiny_model.tiny_model_source({TINY_MODEL!r}, tiny_model_dir)")


# --------------------------------------------------------------------------- loading


def load_base_model(
    pretrained: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> BaseModel:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler of an SD1.5-family model.

    Args:
        pretrained: a local diffusers folder (the tiny model's too) or a Hugging Face hub id
            such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        revision, variant, torch_dtype: passed to every ``from_pretrained`` call. The dtype
            defaults to fp32 for training on any device: diffusers would otherwise keep the
            dtype of the files, and the starter model ships fp16 files.

    Only safetensors are
    loaded and remote code is never trusted. The noise scheduler is always a
    ``DDPMScheduler`` built from the checkpoint's scheduler config (as diffusers'
    training scripts do).

    Raises:
        FileNotFoundError: a path-like ``pretrained`` that does not exist.
        ValueError: an existing folder that is not a diffusers pipeline folder, or
            ``builtin:tiny`` (resolve it to its folder first).
        OSError: a hub id that could not be loaded (e.g. offline), naming the id.
    """
    _refuse_builtin(pretrained, "base model")
    spec, is_local = resolve_source(pretrained, what="base model")
    missing = missing_diffusers_parts(Path(spec)) if is_local else []
    if missing:
        raise ValueError(f"{spec}: {EXPECTED_LAYOUT} (missing: {', '.join(missing)})")
    if not is_local:
        check_hub(spec, "model_index.json", revision, "base model")

    common: dict[str, Any] = {"revision": revision}
    weights: dict[str, Any] = {**common, "variant": variant, "use_safetensors": True}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer", **common)
        # transformers 5 spells the dtype argument `dtype`; diffusers keeps `torch_dtype`.
        text_encoder = CLIPTextModel.from_pretrained(
            spec, subfolder="text_encoder", dtype=torch_dtype, trust_remote_code=False, **weights
        )
        vae = AutoencoderKL.from_pretrained(
            spec, subfolder="vae", torch_dtype=torch_dtype, **weights
        )
        unet = UNet2DConditionModel.from_pretrained(
            spec, subfolder="unet", torch_dtype=torch_dtype, **weights
        )
        noise_scheduler = DDPMScheduler.from_pretrained(spec, subfolder="scheduler", **common)
    except Exception as exc:
        if is_local:
            raise
        raise OSError(
            f"could not load base model '{spec}' from the Hugging Face Hub: {exc}"
        ) from exc
    return BaseModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler,
        source=spec,
    )


def load_motion_adapter(
    spec: str,
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> MotionAdapter:
    """Load an AnimateDiff ``MotionAdapter``.

    Args:
        spec: a local folder (the tiny model's ``motion_adapter/`` too) or a hub id such as
            ``"guoyww/animatediff-motion-adapter-v1-5-3"``.
        torch_dtype: the dtype to load in; fp32 unless asked (the files may be fp16).

    Raises:
        FileNotFoundError: a path-like spec that does not exist.
        ValueError: an existing folder without ``config.json``, or ``builtin:tiny``.
        OSError: a hub id that could not be loaded, naming the id.
    """
    _refuse_builtin(spec, "motion adapter")
    folder, is_local = resolve_source(spec, what="motion adapter")
    if is_local and not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder}: expected a diffusers MotionAdapter folder with config.json")
    if not is_local:
        check_hub(folder, "config.json", revision, "motion adapter")
    try:
        return MotionAdapter.from_pretrained(
            folder,
            revision=revision,
            variant=variant,
            torch_dtype=torch_dtype,
            use_safetensors=True,
        )
    except Exception as exc:
        if is_local:
            raise
        raise OSError(
            f"could not load motion adapter '{spec}' from the Hugging Face Hub: {exc}"
        ) from exc


def build_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """Combine an image UNet and a motion adapter into a ``UNetMotionModel``.

    Add LoRA *after* this call: ``UNetMotionModel.from_unet2d`` fails on a UNet that
    already carries a peft adapter (unload it first).

    Raises:
        ValueError: the adapter was made for a different UNet (block channels or layers per
            block differ), naming both values; or the UNet carries a peft adapter.
    """
    unet_channels = tuple(unet.config.block_out_channels)
    adapter_channels = tuple(adapter.config.block_out_channels)
    if unet_channels != adapter_channels:
        raise ValueError(
            f"motion adapter block_out_channels {adapter_channels} do not match the UNet's "
            f"block_out_channels {unet_channels}"
        )
    n_blocks = len(unet_channels)
    unet_layers = unet.config.layers_per_block
    adapter_layers = adapter.config.motion_layers_per_block
    unet_layers = (unet_layers,) * n_blocks if isinstance(unet_layers, int) else tuple(unet_layers)
    adapter_layers = (
        (adapter_layers,) * n_blocks if isinstance(adapter_layers, int) else tuple(adapter_layers)
    )
    if unet_layers != adapter_layers:
        raise ValueError(
            f"motion adapter motion_layers_per_block {adapter_layers} do not match the UNet's "
            f"layers_per_block {unet_layers}"
        )
    if getattr(unet, "_hf_peft_config_loaded", False):
        raise ValueError(
            "the UNet carries a LoRA adapter; build the motion UNet first and add LoRA after "
            "(or call unet.unload_lora() / delete_adapters first)"
        )
    # from_unet2d already casts to the UNet's dtype but builds on the CPU.
    return UNetMotionModel.from_unet2d(unet, adapter).to(device=unet.device)
