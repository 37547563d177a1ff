"""Tests for machining_t2v.lora.injection on the real tiny model and SD1.5-shaped meta models."""

from __future__ import annotations

import re

import pytest
import torch

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
)
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.models.sources import TINY_MODEL

from .conftest import ALPHA, RANK, _lora_modules


def test_target_regexes_split_spatial_and_temporal(tiny_dir):
    base = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir))
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, tiny_dir, motion_adapter=True))
    image_unet = build_motion_unet(base.unet, adapter)
    motion_unet = build_motion_unet(base.unet, adapter)
    add_lora(image_unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS)
    add_lora(motion_unet, rank=2, alpha=2, target_modules=MOTION_LORA_TARGETS)
    spatial, temporal = _lora_modules(image_unet), _lora_modules(motion_unet)
    assert spatial and not any("motion_modules" in n for n in spatial)
    assert temporal and all(".motion_modules." in n for n in temporal)
    # Every attention projection is covered by exactly one of the two kinds.
    all_proj = {
        n
        for n, m in image_unet.named_modules()
        if isinstance(m, torch.nn.Linear)
        and re.search(r"\.(to_q|to_k|to_v|to_out\.0)\.base_layer$", n)
    }
    assert {n + ".base_layer" for n in spatial} == all_proj
    assert len(temporal) == len(spatial) == 56  # 7 transformer blocks / 7 motion modules x 2 x 4


def test_image_targets_on_plain_unet_match_diffusers_default(tiny_dir):
    unet = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir)).unet
    add_lora(unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS)
    other = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir)).unet
    add_lora(other, rank=2, alpha=2, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    assert _lora_modules(unet) == _lora_modules(other)


def test_add_lora_leaves_only_the_new_adapter_trainable(image_lora):
    trainable = [n for n, p in image_lora["unet"].named_parameters() if p.requires_grad]
    assert trainable and all(
        ("lora_A" in n or "lora_B" in n) and ".default." in n for n in trainable
    )
    assert image_lora["config"].r == RANK and image_lora["config"].lora_alpha == ALPHA


def test_target_matching_nothing_lists_available_names(tiny_dir):
    unet = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir)).unet
    with pytest.raises(ValueError) as err:
        add_lora(unet, rank=2, alpha=2, target_modules=r".*\.to_qq")
    message = str(err.value)
    assert "to_qq" in message and "attn1.to_q" in message
    listed = re.findall(r"[\w.]+\.(?:to_q|to_k|to_v|to_out\.0)\b", message.split("look like:")[1])
    assert 1 <= len(listed) <= 10


def test_lora_state_dict_keys(image_lora):
    sd = image_lora["sd"]
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in sd
    assert "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0.lora_B.weight" in sd
    assert sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"].shape == (
        RANK,
        32,
    )


# --------------------------------------------------------------------------- diffusers format


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_image_and_motion_adapters_on_one_motion_unet(tiny_dir):
    base = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir))
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, tiny_dir, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    add_lora(unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS, adapter_name="image")
    add_lora(unet, rank=4, alpha=8, target_modules=MOTION_LORA_TARGETS, adapter_name="motion")
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".motion." in n and "motion_modules" in n for n in trainable)
    image_sd, motion_sd = lora_state_dict(unet, "image"), lora_state_dict(unet, "motion")
    assert len(image_sd) == len(motion_sd) == 112
    assert not any("motion_modules" in k for k in image_sd)
    assert all("motion_modules" in k for k in motion_sd)
