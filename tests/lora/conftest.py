"""Shared fixtures of the LoRA tests: the tiny model with an image and a motion LoRA, SD1.5-shaped meta models."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    UNet2DConditionModel,
)

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
)
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.models.sources import TINY_MODEL

RANK, ALPHA = 4, 8  # rank != alpha on purpose: a lost alpha changes the outputs


def _perturb_lora(model, seed=0):
    """gaussian init leaves lora_B at zero (LoRA is a no-op); make it matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def _lora_modules(model):
    return [n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A")]


def _image_inputs():
    gen = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, 4, 8, 8, generator=gen),
        torch.tensor([500]),
        torch.randn(1, 6, 32, generator=gen),
    )


def _video_inputs(frames=4):
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 4, frames, 8, 8, generator=gen)
    text = torch.randn(1, 6, 32, generator=gen).repeat_interleave(frames, 0)
    return latents, torch.tensor([500]), text


def _unet_out(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


@pytest.fixture(scope="module")
def image_lora(tiny_dir):
    """A tiny UNet with a non-zero image LoRA (r=4, alpha=8) and reference outputs."""
    unet = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir)).unet
    inputs = _image_inputs()
    base_out = _unet_out(unet, inputs)
    config = add_lora(unet, rank=RANK, alpha=ALPHA, target_modules=IMAGE_LORA_TARGETS)
    _perturb_lora(unet)
    return {
        "unet": unet,
        "config": config,
        "inputs": inputs,
        "base_out": base_out,
        "lora_out": _unet_out(unet, inputs),
        "sd": lora_state_dict(unet),
    }


@pytest.fixture(scope="module")
def motion_lora(tiny_dir):
    """A tiny UNetMotionModel with a non-zero motion LoRA (r=4, alpha=8)."""
    base = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir))
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, tiny_dir, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    inputs = _video_inputs()
    base_out = _unet_out(unet, inputs)
    config = add_lora(unet, rank=RANK, alpha=ALPHA, target_modules=MOTION_LORA_TARGETS)
    _perturb_lora(unet, seed=1)
    return {
        "unet": unet,
        "adapter": adapter,
        "config": config,
        "inputs": inputs,
        "base_out": base_out,
        "lora_out": _unet_out(unet, inputs),
        "sd": lora_state_dict(unet),
    }


def _sd15_unet():
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )


# --------------------------------------------------------------------------- targets
