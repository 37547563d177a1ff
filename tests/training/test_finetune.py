"""What image and motion LoRA fine-tuning share: frozen weights' dtype, fp32 LoRA, gradient checkpointing."""

from __future__ import annotations

import torch

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.training import TrainingConfig
from machining_t2v.training.finetune import (
    enable_gradient_checkpointing,
    place_frozen,
    trainable_in_fp32,
)


def _motion_unet(folder):
    base = load_base_model(tiny_model_source("builtin:tiny", folder))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", folder, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    unet.requires_grad_(False)
    add_lora(unet, rank=2, alpha=2, target_modules=MOTION_LORA_TARGETS, init_lora_weights=False)
    return unet


def _saved_bytes(unet) -> int:
    """Bytes autograd keeps from one training forward of a 2-clip, 8-frame batch."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, 8, generator=generator)
    text = torch.randn(16, 77, 32, generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(sample, 10, encoder_hidden_states=text).sample.square().mean().backward()
    return sum(saved)


def test_gradient_checkpointing_also_covers_the_motion_modules(tmp_path):
    """diffusers' own checkpointing keeps the motion modules' activations; ours recomputes them."""
    diffusers_only = _motion_unet(tmp_path / "tiny")
    diffusers_only.enable_gradient_checkpointing()
    ours = _motion_unet(tmp_path / "tiny")
    assert enable_gradient_checkpointing(ours) == len(
        [m for m in ours.modules() if type(m).__name__ == "AnimateDiffTransformer3D"])
    kept_by_diffusers, kept_by_ours = _saved_bytes(diffusers_only), _saved_bytes(ours)
    assert kept_by_ours < 0.6 * kept_by_diffusers, (kept_by_ours, kept_by_diffusers)


def test_gradient_checkpointing_leaves_the_gradients_unchanged(tmp_path):
    plain, checkpointed = _motion_unet(tmp_path / "tiny"), _motion_unet(tmp_path / "tiny")
    checkpointed.load_state_dict(plain.state_dict())
    enable_gradient_checkpointing(checkpointed)
    _saved_bytes(plain), _saved_bytes(checkpointed)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads
    for name, parameter in checkpointed.named_parameters():
        if name in grads:
            torch.testing.assert_close(parameter.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_frozen_weights_take_the_mixed_precision_dtype_and_lora_stays_fp32(tmp_path):
    base = load_base_model(tiny_model_source("builtin:tiny", tmp_path / "tiny"))
    dtype = place_frozen([base.unet, base.vae], TrainingConfig(mixed_precision="bf16"), torch.device("cpu"))
    assert dtype == torch.bfloat16
    assert {p.dtype for p in base.vae.parameters()} == {torch.bfloat16}
    add_lora(base.unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS)
    trainable_in_fp32(base.unet)
    trainable = {p.dtype for p in base.unet.parameters() if p.requires_grad}
    frozen = {p.dtype for p in base.unet.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    # Full precision leaves everything in fp32 (the CPU default: make run is unchanged).
    fp32 = load_base_model(tiny_model_source("builtin:tiny", tmp_path / "tiny"))
    assert place_frozen([fp32.unet], TrainingConfig(mixed_precision="no"), torch.device("cpu")) == torch.float32


def test_training_attention_runs_through_pytorch_sdpa(tmp_path):
    """Flash / memory-efficient attention on a GPU comes from SDPA, which every attention layer uses."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = _motion_unet(tmp_path / "tiny")
    processors = unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
