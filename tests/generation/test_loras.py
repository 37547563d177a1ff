"""LoRA files on a generator (machining_t2v.generation.loras): layouts, safe reading, checks against the base."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from machining_t2v.generation.loras import LoraMismatchError, load_lora, set_lora_scales, use_loras
from machining_t2v.lora.formats import to_animatediff_motion_lora, to_kohya

from .conftest import render


def test_kohya_and_animatediff_layouts_load_like_the_diffusers_files(generator, loras, tmp_path):
    image_sd = {k.removeprefix("unet."): v for k, v in load_file(loras["image"] / "pytorch_lora_weights.safetensors").items()}
    motion_sd = {k.removeprefix("unet."): v for k, v in load_file(loras["motion"] / "pytorch_lora_weights.safetensors").items()}
    # alpha != rank in both: the kohya file carries alpha, the MotionLoRA layout folds it into "up".
    save_file(to_kohya(image_sd, alpha=8.0), tmp_path / "kohya.safetensors")
    save_file(to_animatediff_motion_lora(motion_sd, alpha=2.0), tmp_path / "mm_lora.safetensors")

    loaded = {name: load_lora(generator, path, name).layout for name, path in {
        "image": loras["image"], "kohya": tmp_path / "kohya.safetensors",
        "motion": loras["motion"], "original": tmp_path / "mm_lora.safetensors"}.items()}
    assert loaded == {"image": "diffusers", "kohya": "kohya", "motion": "diffusers", "original": "animatediff-motionlora"}
    clips = {}
    for name in loaded:
        set_lora_scales(generator, {name: 1.0})
        clips[name] = render(generator).astype(int)
    assert np.abs(clips["kohya"] - clips["image"]).max() <= 1
    assert np.abs(clips["original"] - clips["motion"]).max() <= 1


def test_pickled_lora_loads_only_through_weights_only(generator, loras, tmp_path):
    weights = load_file(loras["motion"] / "pytorch_lora_weights.safetensors")
    torch.save(weights, tmp_path / "motion.bin")
    assert load_lora(generator, tmp_path / "motion.bin", "motion").targets == "motion"

    torch.save({"weights": weights, "config": logging.Formatter()}, tmp_path / "unsafe.pt")  # needs full unpickling
    with pytest.raises(ValueError, match=r"Refusing LoRA .*unsafe\.pt.*weights_only=True"):
        load_lora(generator, tmp_path / "unsafe.pt", "unsafe")
    (tmp_path / "lora.txt").write_text("not weights")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_lora(generator, tmp_path / "lora.txt", "text")
    assert set(generator.loras) == {"motion"}


def test_lora_for_another_base_is_refused_naming_lora_and_base(generator, tmp_path):
    sd15_like = {  # an SD1.5 LoRA: 320-wide first block, a third down block the tiny UNet lacks
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(4, 320),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(320, 4),
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight": torch.zeros(4, 640),
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight": torch.zeros(640, 4),
    }
    path = tmp_path / "sd15_lora.safetensors"
    save_file(sd15_like, path)
    with pytest.raises(LoraMismatchError) as error:
        load_lora(generator, path, "sd15")
    message = str(error.value)
    assert str(path) in message and generator.base_source in message
    assert "LoRA 320->320, base 32->32" in message and "down_blocks.2" in message
    assert not generator.loras and "sd15" not in generator.pipe.get_list_adapters().get("unet", [])


def test_missing_and_malformed_lora_paths(generator, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"LoRA not found: {tmp_path / 'nowhere'}"):
        load_lora(generator, tmp_path / "nowhere", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weight file"):
        load_lora(generator, tmp_path / "empty", "x")
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"unet.x.lora.down.weight": torch.zeros(1, 1)}, several / name)
    with pytest.raises(ValueError, match="several .safetensors files"):
        load_lora(generator, several, "x")
    save_file({"conv_in.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a LoRA"):
        load_lora(generator, tmp_path / "model.safetensors", "x")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_lora(generator, tmp_path / "broken.safetensors", "x")


def test_use_loras_switches_to_exactly_the_chosen_loras_and_back(generator, loras):
    base = render(generator)
    assert use_loras(generator, {"image": (loras["image"], 0.7), "motion": (None, 1.0)}) == {"image": 0.7}
    assert sorted(generator.loras) == ["image"]
    image_only = render(generator)
    assert use_loras(generator, {"image": ("", 1.0), "motion": (loras["motion"], 1.0)}) == {"motion": 1.0}
    assert sorted(generator.loras) == ["motion"]  # the image LoRA was unloaded, not only switched off
    assert use_loras(generator, {"image": (None, 1.0), "motion": (None, 1.0)}) == {}
    assert generator.loras == {}
    assert not np.array_equal(base, image_only)
    np.testing.assert_array_equal(render(generator), base)
