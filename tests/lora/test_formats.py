"""LoRA file formats (machining_t2v.lora.formats): diffusers, kohya and AnimateDiff layouts, on the real tiny model and SD1.5-shaped meta models."""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    AnimateDiffPipeline,
    MotionAdapter,
    StableDiffusionPipeline,
    UNetMotionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file

from machining_t2v.lora.formats import (
    DIFFUSERS_LORA_FILENAME,
    from_animatediff_motion_lora,
    kohya_metadata,
    save_diffusers_lora,
    save_safetensors_atomic,
    to_animatediff_motion_lora,
    to_kohya,
)
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
)

from .conftest import ALPHA, RANK, _sd15_unet, _unet_out


def test_diffusers_image_lora_reloads_with_alpha(image_lora, tiny_dir, tmp_path):
    path = save_diffusers_lora(image_lora["sd"], image_lora["config"], tmp_path, kind="image")
    assert path == tmp_path / DIFFUSERS_LORA_FILENAME
    assert [p.name for p in tmp_path.iterdir()] == [DIFFUSERS_LORA_FILENAME]  # no scratch left
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in keys)
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == ALPHA

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir))
    pipe.load_lora_weights(str(tmp_path))
    reloaded = _unet_out(pipe.unet, image_lora["inputs"])
    assert not torch.allclose(reloaded, image_lora["base_out"], atol=1e-3)
    torch.testing.assert_close(reloaded, image_lora["lora_out"], atol=1e-5, rtol=1e-4)


def test_diffusers_motion_lora_reloads_with_alpha(motion_lora, tiny_dir, tmp_path):
    save_diffusers_lora(motion_lora["sd"], motion_lora["config"], tmp_path, kind="motion")
    pipe = AnimateDiffPipeline.from_pretrained(str(tiny_dir), motion_adapter=motion_lora["adapter"])
    pipe.load_lora_weights(str(tmp_path))
    reloaded = _unet_out(pipe.unet, motion_lora["inputs"])
    assert not torch.allclose(reloaded, motion_lora["base_out"], atol=1e-3)
    torch.testing.assert_close(reloaded, motion_lora["lora_out"], atol=1e-5, rtol=1e-4)


def test_save_diffusers_lora_checks_kind(image_lora, motion_lora, tmp_path):
    with pytest.raises(ValueError, match="motion-module"):
        save_diffusers_lora(motion_lora["sd"], motion_lora["config"], tmp_path, kind="image")
    with pytest.raises(ValueError, match="outside motion_modules"):
        save_diffusers_lora(image_lora["sd"], image_lora["config"], tmp_path, kind="motion")
    with pytest.raises(ValueError, match="kind"):
        save_diffusers_lora(image_lora["sd"], image_lora["config"], tmp_path, kind="video")


# --------------------------------------------------------------------------- kohya format


def test_kohya_keys_and_shapes_tiny(image_lora):
    kohya = to_kohya(image_lora["sd"], ALPHA)
    assert len(kohya) == 3 * len(image_lora["sd"]) // 2
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya[f"{name}.lora_down.weight"].shape == (RANK, 32)
    assert kohya[f"{name}.lora_up.weight"].shape == (32, RANK)
    assert kohya[f"{name}.alpha"].shape == () and kohya[f"{name}.alpha"].item() == ALPHA
    out = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0"
    assert kohya[f"{out}.lora_up.weight"].shape == (32, RANK)
    assert (
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in kohya
    )
    assert all(
        re.fullmatch(r"lora_unet_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)", k)
        for k in kohya
    )


def test_kohya_file_loads_like_the_diffusers_file(image_lora, tiny_dir, tmp_path):
    kohya_path = save_safetensors_atomic(
        to_kohya(image_lora["sd"], ALPHA),
        tmp_path / "machining.safetensors",
        kohya_metadata(RANK, ALPHA),
    )
    save_diffusers_lora(
        image_lora["sd"], image_lora["config"], tmp_path / "diffusers", kind="image"
    )
    outputs = []
    for source in (kohya_path, tmp_path / "diffusers"):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir))
        pipe.load_lora_weights(str(source))
        outputs.append(_unet_out(pipe.unet, image_lora["inputs"]))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outputs[0], image_lora["lora_out"], atol=1e-5, rtol=1e-4)


def test_kohya_layout_for_real_sd15_unet():
    with init_empty_weights():
        unet = _sd15_unet()
        add_lora(unet, rank=4, alpha=4, target_modules=IMAGE_LORA_TARGETS)
    kohya = to_kohya(lora_state_dict(unet), 4)
    modules = {k.split(".")[0] for k in kohya}
    assert len(modules) == 16 * 2 * 4 == 128  # 16 transformer blocks x (attn1, attn2) x q/k/v/out
    assert len(kohya) == 3 * 128
    pre = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0"
    assert kohya[f"{pre}_attn1_to_q.lora_down.weight"].shape == (4, 320)
    assert kohya[f"{pre}_attn2_to_k.lora_down.weight"].shape == (4, 768)
    assert kohya[f"{pre}_attn2_to_out_0.lora_up.weight"].shape == (320, 4)
    mid = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v"
    assert kohya[f"{mid}.lora_down.weight"].shape == (4, 1280)
    assert kohya[
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k.lora_down.weight"
    ].shape == (4, 768)
    assert not any("down_blocks_3" in m or "up_blocks_0" in m for m in modules)


def test_kohya_rejects_motion_weights(motion_lora):
    with pytest.raises(ValueError, match="to_animatediff_motion_lora"):
        to_kohya(motion_lora["sd"], ALPHA)


# --------------------------------------------------------------------------- AnimateDiff format


def test_animatediff_motion_layout_tiny(motion_lora):
    original = to_animatediff_motion_lora(motion_lora["sd"], RANK)  # alpha == r: no rescale
    assert len(original) == len(motion_lora["sd"])
    pre = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0"
    assert original[f"{pre}.attention_blocks.0.processor.to_q_lora.down.weight"].shape == (RANK, 32)
    assert original[f"{pre}.attention_blocks.1.processor.to_out_lora.up.weight"].shape == (32, RANK)
    assert any(k.startswith("mid_block.motion_modules.0.temporal_transformer.") for k in original)
    pattern = (
        r"(down_blocks\.\d|up_blocks\.\d|mid_block)\.motion_modules\.\d\.temporal_transformer"
        r"\.transformer_blocks\.\d\.attention_blocks\.[01]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight"
    )
    assert all(re.fullmatch(pattern, k) for k in original)
    back = from_animatediff_motion_lora(original)
    assert back.keys() == motion_lora["sd"].keys()
    assert all(torch.equal(back[k], motion_lora["sd"][k]) for k in back)


def test_animatediff_export_folds_alpha_and_loads_back(motion_lora, tiny_dir, tmp_path):
    path = save_safetensors_atomic(
        to_animatediff_motion_lora(motion_lora["sd"], ALPHA), tmp_path / "motion_lora.safetensors"
    )
    back = from_animatediff_motion_lora(load_file(str(path)))
    pipe = AnimateDiffPipeline.from_pretrained(str(tiny_dir), motion_adapter=motion_lora["adapter"])
    # The format has no alpha: the file means scale 1, so diffusers loads it as alpha == r.
    pipe.load_lora_weights({f"unet.{k}": v for k, v in back.items()})
    torch.testing.assert_close(
        _unet_out(pipe.unet, motion_lora["inputs"]), motion_lora["lora_out"], atol=1e-5, rtol=1e-4
    )


def test_animatediff_layout_for_sd15_v152_adapter():
    with init_empty_weights():
        adapter = MotionAdapter(
            block_out_channels=(320, 640, 1280, 1280),
            motion_layers_per_block=2,
            motion_num_attention_heads=8,
            motion_norm_num_groups=32,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        )
        unet = UNetMotionModel.from_unet2d(_sd15_unet(), adapter, load_weights=False)
        add_lora(unet, rank=4, alpha=4, target_modules=MOTION_LORA_TARGETS)
    original = to_animatediff_motion_lora(lora_state_dict(unet), 4)
    # 21 motion modules (4x2 down, 1 mid, 4x3 up) x 2 attention blocks x 4 projections x down/up
    assert len(original) == 21 * 2 * 4 * 2 == 336
    block = (
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks"
    )
    expected = {
        f"{block}.{a}.processor.{p}_lora.{d}.weight"
        for a in (0, 1)
        for p in ("to_q", "to_k", "to_v", "to_out")
        for d in ("down", "up")
    }
    assert {k for k in original if k.startswith("down_blocks.0.motion_modules.0.")} == expected
    assert original[f"{block}.0.processor.to_q_lora.down.weight"].shape == (4, 320)
    mid = "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    assert original[f"{mid}.processor.to_out_lora.up.weight"].shape == (1280, 4)
    assert any(k.startswith("up_blocks.3.motion_modules.2.") for k in original)


def test_animatediff_rejects_spatial_weights(image_lora):
    with pytest.raises(ValueError, match="not a motion-module attention projection"):
        to_animatediff_motion_lora(image_lora["sd"], ALPHA)
    with pytest.raises(ValueError, match="unsupported AnimateDiff MotionLoRA key"):
        from_animatediff_motion_lora({"down_blocks.0.attentions.0.to_q.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- atomic writes


def test_save_safetensors_atomic(tmp_path):
    target = tmp_path / "sub" / "w.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t()}  # non-contiguous on purpose
    save_safetensors_atomic(tensors, target, {"rank": 4, "note": "x"})
    save_safetensors_atomic(tensors, target)  # overwrite in place
    assert [p.name for p in target.parent.iterdir()] == ["w.safetensors"]
    torch.testing.assert_close(load_file(str(target))["a"], tensors["a"])
    save_safetensors_atomic(tensors, target, {"rank": 4, "note": "x"})
    with safe_open(str(target), "pt") as f:
        assert f.metadata() == {"rank": "4", "note": "x"}
