"""Shared fixtures of the generation tests: the tiny model, LoRAs made for it, a generator on it."""

from __future__ import annotations

import pytest
import torch

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.generation.generator import build_generator, cpu_threads
from machining_t2v.generation.video import generate_video
from machining_t2v.lora.formats import save_diffusers_lora
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
)
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

FAST = {"num_frames": 4, "num_inference_steps": 2, "guidance_scale": 4.0, "size": 64}


def make_loras(tiny_dir, out_dir):
    """An image and a motion LoRA for the tiny model with random (non-zero) weights, alpha != rank,
    saved in the diffusers layout exactly as the training pipelines save them."""
    base = load_base_model(tiny_model_source("builtin:tiny", tiny_dir))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tiny_dir, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    generator = torch.Generator().manual_seed(0)
    folders = {}
    for kind, targets, alpha in (("image", IMAGE_LORA_TARGETS, 8.0), ("motion", MOTION_LORA_TARGETS, 2.0)):
        config = add_lora(unet, rank=4, alpha=alpha, target_modules=targets, adapter_name=kind)
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if "lora_B" in name and f".{kind}." in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        folders[kind] = out_dir / f"{kind}_lora"
        save_diffusers_lora(lora_state_dict(unet, kind), config, folders[kind], kind=kind)
    return folders


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """The tiny model runs several times faster on one thread on small CPUs (restored afterwards)."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def loras(tiny_dir, tmp_path_factory):
    return make_loras(tiny_dir, tmp_path_factory.mktemp("loras"))


@pytest.fixture
def generator(tiny_dir):
    return tiny_generator(tiny_dir)


def tiny_generator(tiny_dir, **options):
    """A generator on the tiny model, as the generate pipeline builds it from the catalog's models."""
    base = load_base_model(tiny_model_source("builtin:tiny", tiny_dir))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tiny_dir, motion_adapter=True))
    return build_generator(base, adapter, base_spec="builtin:tiny", motion_adapter_spec="builtin:tiny", **options)


def render(generator_, prompt="mtv slot milling on a milling machine", **overrides):
    return generate_video(generator_, prompt, **{**FAST, "seed": 0, **overrides})
