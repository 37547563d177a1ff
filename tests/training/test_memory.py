"""The GPU memory estimate a training run logs before its first step (counted on the meta device)."""

from __future__ import annotations

import logging

import pytest
import torch

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.lora.injection import MOTION_LORA_TARGETS, add_lora
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.training.finetune import enable_gradient_checkpointing
from machining_t2v.training.memory import (
    GIB,
    MemoryEstimate,
    activation_bytes,
    estimate_training_memory,
    report_memory,
)


def _motion_unet(folder, checkpointing=False):
    base = load_base_model(tiny_model_source("builtin:tiny", folder))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", folder, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    unet.requires_grad_(False)
    add_lora(unet, rank=4, alpha=4, target_modules=MOTION_LORA_TARGETS)
    if checkpointing:
        enable_gradient_checkpointing(unet)
    return base, unet


def _measured_saved_bytes(unet, frames, latent):
    """What autograd really keeps from a real forward (CPU, math attention saves its weights too)."""
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    sample = torch.randn(1, 4, frames, latent, latent)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(sample, 10, encoder_hidden_states=torch.randn(frames, 77, 32))
    return sum(kept.values())


def test_activations_grow_with_frames_and_resolution_and_shrink_with_checkpointing(tmp_path):
    _, unet = _motion_unet(tmp_path / "tiny")
    small = activation_bytes(unet, batch_size=1, latent_size=8, num_frames=8, dtype=torch.float32,
                             checkpointing=False)
    assert 1.5 < activation_bytes(unet, batch_size=1, latent_size=8, num_frames=16, dtype=torch.float32,
                                  checkpointing=False) / small < 2.2
    assert activation_bytes(unet, batch_size=2, latent_size=16, num_frames=8, dtype=torch.float32,
                            checkpointing=False) / small > 5
    assert activation_bytes(unet, batch_size=1, latent_size=8, num_frames=8, dtype=torch.bfloat16,
                            checkpointing=False) / small < 0.6
    assert activation_bytes(unet, batch_size=1, latent_size=8, num_frames=8, dtype=torch.float32,
                            checkpointing=True) < small
    # The meta count leaves the model where it was: no weight moved to the meta device.
    assert {p.device.type for p in unet.parameters()} == {"cpu"}


def test_meta_count_is_close_to_a_real_forward(tmp_path):
    """Without checkpointing the meta count is what a real forward saves, less the attention weights
    that flash attention (a GPU's SDPA) does not keep."""
    _, unet = _motion_unet(tmp_path / "tiny")
    real = _measured_saved_bytes(unet, frames=8, latent=8)
    meta = activation_bytes(unet, batch_size=1, latent_size=8, num_frames=8, dtype=torch.float32,
                            checkpointing=False)
    assert 0.5 * real < meta <= 1.05 * real, (meta, real)


def test_estimate_adds_weights_and_training_state(tmp_path):
    base, unet = _motion_unet(tmp_path / "tiny")
    estimate = estimate_training_memory(unet, [base.vae, base.text_encoder], batch_size=1, latent_size=8,
                                        num_frames=8, dtype=torch.float32, checkpointing=False)
    weights = sum(p.numel() * 4 for m in (unet, base.vae, base.text_encoder) for p in m.parameters())
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert estimate.weights == weights
    assert estimate.training_state == trainable * 12  # fp32 gradient + AdamW's two moments
    eight_bit = estimate_training_memory(unet, [], batch_size=1, latent_size=8, num_frames=8, dtype=torch.float32,
                                         checkpointing=False, optimizer="adamw8bit")
    assert eight_bit.training_state == trainable * 6
    assert estimate.total > estimate.weights + estimate.training_state + estimate.activations


def test_a_run_that_will_not_fit_is_warned_about_naming_both_figures(caplog):
    estimate = MemoryEstimate(weights=5 * GIB, training_state=GIB // 10, activations=20 * GIB)
    with caplog.at_level(logging.INFO, logger="machining_t2v.training.memory"):
        assert report_memory(estimate, available=80 * GIB, what="motion LoRA training")
        assert "expected peak GPU memory" in caplog.text
        assert not report_memory(estimate, available=24 * GIB, what="motion LoRA training")
    warning = [r for r in caplog.records if r.levelno == logging.WARNING][0].getMessage()
    assert "28.6 GiB" in warning and "24.0 GiB" in warning and "gradient_checkpointing" in warning


def test_sd15_figures_in_the_readme_match_the_estimate():
    """The README's memory table is this estimate for SD1.5 + v1-5-3 (built on the meta device)."""
    import re
    from pathlib import Path

    from diffusers import UNetMotionModel

    from machining_t2v.fixtures.sd15_random import (
        ANIMATEDIFF_V153_ADAPTER_CONFIG as ADAPTER,
    )
    from machining_t2v.fixtures.sd15_random import (
        SD15_UNET_CONFIG as UNET,
    )
    from machining_t2v.fixtures.sd15_random import build_sd15_random_components

    parts = build_sd15_random_components(device="meta", parts=("vae", "text_encoder"))
    with torch.device("meta"):
        unet = UNetMotionModel(
            block_out_channels=UNET["block_out_channels"], layers_per_block=UNET["layers_per_block"],
            cross_attention_dim=UNET["cross_attention_dim"], num_attention_heads=UNET["attention_head_dim"],
            down_block_types=tuple(t.replace("2D", "Motion") for t in UNET["down_block_types"]),
            up_block_types=tuple(t.replace("2D", "Motion") for t in UNET["up_block_types"]),
            motion_num_attention_heads=ADAPTER["motion_num_attention_heads"],
            motion_max_seq_length=ADAPTER["motion_max_seq_length"],
            use_motion_mid_block=ADAPTER["use_motion_mid_block"],
        )
    unet.requires_grad_(False)
    add_lora(unet, rank=32, alpha=32, target_modules=MOTION_LORA_TARGETS)  # conf/sd15's motion LoRA
    estimate = estimate_training_memory(unet, [parts["vae"], parts["text_encoder"]], batch_size=1,
                                        latent_size=256 // 8, num_frames=16, dtype=torch.bfloat16,
                                        checkpointing=True)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = re.search(r"\| motion LoRA, 16 frames at 256 px \| ([\d.]+) GiB", readme)
    assert row, "the README's memory table has no 256 px motion LoRA row"
    assert estimate.total / GIB == pytest.approx(float(row.group(1)), abs=0.05)
