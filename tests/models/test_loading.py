"""Tests for machining_t2v.models.loading on the real tiny model (no mocks)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from machining_t2v.fixtures import tiny_model
from machining_t2v.fixtures.tiny_model import build_tiny_model, tiny_model_source
from machining_t2v.models.loading import (
    build_motion_unet,
    load_base_model,
    load_motion_adapter,
)
from machining_t2v.models.sources import TINY_MODEL


@pytest.fixture(scope="module")
def base(tiny_dir):
    return load_base_model(tiny_model_source(TINY_MODEL, tiny_dir))


def test_tiny_model_loads_as_real_diffusers_classes(base, tiny_dir):
    assert isinstance(base.tokenizer, CLIPTokenizer)
    assert isinstance(base.text_encoder, CLIPTextModel)
    assert isinstance(base.vae, AutoencoderKL)
    assert isinstance(base.unet, UNet2DConditionModel)
    assert isinstance(base.noise_scheduler, DDPMScheduler)
    assert base.source == str(tiny_dir)
    cfg = base.noise_scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (cfg.num_train_timesteps, cfg.prediction_type) == (1000, "epsilon")
    assert base.vae.config.scaling_factor == 0.18215
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size


def test_missing_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_base_model(str(missing))
    with pytest.raises(FileNotFoundError, match="no_such_dir/models/sd15"):
        load_base_model("no_such_dir/models/sd15")


def test_non_diffusers_folder_raises_value_error(tmp_path):
    folder = tmp_path / "just_a_folder"
    folder.mkdir()
    (folder / "model.ckpt").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_base_model(str(folder))
    message = str(err.value)
    assert str(folder) in message
    assert "model_index.json" in message and "unet/" in message
    assert "missing: model_index.json, unet/config.json" in message


def test_load_real_style_local_folder(tiny_dir):
    # A local diffusers folder given by path goes through the same loader as TINY_MODEL.
    loaded = load_base_model(str(tiny_dir), torch_dtype=torch.float32)
    assert loaded.source == str(tiny_dir)
    assert loaded.unet.dtype == torch.float32


def test_motion_adapter_and_motion_unet(base, tiny_dir):
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, tiny_dir, motion_adapter=True))
    assert isinstance(adapter, MotionAdapter)
    assert tuple(adapter.config.block_out_channels) == tuple(base.unet.config.block_out_channels)
    assert adapter.config.motion_max_seq_length == 32
    motion_unet = build_motion_unet(base.unet, adapter)
    assert isinstance(motion_unet, UNetMotionModel)
    frames = 4
    latents = torch.randn(1, 4, frames, 8, 8)
    text = torch.randn(1, 6, 32).repeat_interleave(frames, 0)
    with torch.no_grad():
        out = motion_unet(latents, torch.tensor([10]), text).sample
    assert out.shape == latents.shape


def test_mismatched_motion_adapter_names_both_channel_tuples(base):
    adapter = MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
    )
    with pytest.raises(ValueError) as err:
        build_motion_unet(base.unet, adapter)
    assert "(16, 32)" in str(err.value) and "(32, 64)" in str(err.value)


def test_motion_unet_refuses_a_unet_with_lora(tiny_dir):
    from peft import LoraConfig

    fresh = load_base_model(tiny_model_source(TINY_MODEL, tiny_dir))
    fresh.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, tiny_dir, motion_adapter=True))
    with pytest.raises(ValueError, match="LoRA"):
        build_motion_unet(fresh.unet, adapter)


def test_load_motion_adapter_missing_path(tmp_path):
    missing = tmp_path / "adapter_missing"
    with pytest.raises(FileNotFoundError, match="adapter_missing"):
        load_motion_adapter(str(missing))


def test_unreachable_hub_id_fails_fast_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline mode makes the hub lookup fail at once instead of retrying over the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="machining-t2v-tests/no-such-model"):
        load_base_model("machining-t2v-tests/no-such-model")
    with pytest.raises(OSError, match="machining-t2v-tests/no-such-adapter"):
        load_motion_adapter("machining-t2v-tests/no-such-adapter")
    assert not (tmp_path / "tiny").exists()  # the tiny model is only built for TINY_MODEL


def test_loader_reuses_a_tiny_model_built_with_another_seed(tmp_path):
    folder = build_tiny_model(tmp_path / "tiny", seed=7)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    load_base_model(tiny_model_source(TINY_MODEL, folder))
    load_motion_adapter(tiny_model_source(TINY_MODEL, folder, motion_adapter=True))
    assert weights.stat().st_mtime_ns == before
    assert json.loads((folder / tiny_model._TINY_MARKER).read_text())["seed"] == 7
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)
