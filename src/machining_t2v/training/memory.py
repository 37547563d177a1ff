"""How much GPU memory a LoRA training run will need, worked out before its first step.

The activations autograd keeps are counted by running one forward pass of a copy of the
training UNet on PyTorch's meta device (shapes only: no memory, no arithmetic, a second or
two even for SD1.5 + AnimateDiff) with the run's batch, frames, resolution, dtype, LoRA and
gradient checkpointing. Attention is counted as flash / memory-efficient attention keeps it
(queries, keys, values and output, not the L x L weights), which is what SDPA runs on a GPU.
Weights, LoRA gradients and optimizer states are added from the real model.

No Kedro import: the training nodes, the GPU benchmark and a notebook all call it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from machining_t2v.training.finetune import enable_gradient_checkpointing

logger = logging.getLogger(__name__)

GIB = 2**30
# Backward recomputes one checkpointed block at a time and keeps the gradients of activations
# it is passing back: a margin on top of what the forward pass saved.
_BACKWARD_MARGIN = 0.15
# The CUDA context, cuBLAS workspaces and the allocator's fragmentation.
_RUNTIME_BYTES = GIB // 2


@dataclass
class MemoryEstimate:
    """Expected peak GPU memory of one training step, by part (bytes)."""

    weights: int  # every model on the device: frozen weights in their dtype, LoRA in fp32
    training_state: int  # LoRA gradients and optimizer states
    activations: int  # what autograd keeps from the forward pass (with checkpointing, if on)
    runtime: int = _RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.training_state + int(self.activations * (1 + _BACKWARD_MARGIN)) + self.runtime

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, LoRA gradients and optimizer "
                f"{self.training_state / GIB:.2f}, activations {self.activations / GIB:.1f} GiB)")


class _KeptByFlashAttention(torch.autograd.Function):
    """Stands in for SDPA on the meta device, saving for backward what flash attention saves."""

    @staticmethod
    def forward(ctx, query, key, value):
        output = torch.empty_like(query)
        ctx.save_for_backward(query, key, value, output)
        return output

    @staticmethod
    def backward(ctx, grad):  # never run: the meta pass has no backward
        raise NotImplementedError


@contextlib.contextmanager
def _flash_attention_on_meta() -> Iterator[None]:
    original = F.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        return _KeptByFlashAttention.apply(query, key, value)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _meta_copy(unet: nn.Module, dtype: torch.dtype, checkpointing: bool) -> nn.Module:
    """The same architecture, LoRA adapters and checkpointing as ``unet``, on the meta device."""
    with torch.device("meta"):
        copy = type(unet).from_config(unet.config)
    copy.requires_grad_(False)
    for name, config in getattr(unet, "peft_config", {}).items():
        copy.add_adapter(config, adapter_name=name)
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    for name, parameter in copy.named_parameters():
        # Everything in the run's compute dtype, as autocast runs it (LoRA's fp32 master weights are
        # counted with the weights, not here).
        parameter.data = parameter.data.to(dtype)
        parameter.requires_grad_(name in trainable)
    for module in copy.modules():  # positional embeddings are buffers
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module.register_buffer(name, buffer.to(dtype))
    if checkpointing:
        enable_gradient_checkpointing(copy)
    copy.train()
    return copy


def activation_bytes(unet: nn.Module, *, batch_size: int, latent_size: int, num_frames: int | None,
                     dtype: torch.dtype, checkpointing: bool) -> int:
    """Bytes of activations at the peak of one training step of ``unet`` (counted on the meta device).

    Without checkpointing that is what the forward pass saves for backward. With it, it is what
    the checkpointed forward saves plus the largest block backward recomputes at once.
    ``num_frames`` None means an image UNet fed (B, C, h, w) latents; otherwise the motion UNet's
    (B, C, F, h, w) with the text states repeated per frame.
    """
    saved, _ = _saved_on_meta(unet, batch_size, latent_size, num_frames, dtype, checkpointing)
    if not checkpointing:
        return saved
    _, largest_block = _saved_on_meta(unet, batch_size, latent_size, num_frames, dtype, False)
    return saved + largest_block


def _saved_on_meta(unet: nn.Module, batch_size: int, latent_size: int, num_frames: int | None, dtype: torch.dtype,
                   checkpointing: bool) -> tuple[int, int]:
    """(bytes saved by one forward pass, most saved inside one recomputable block) on a meta copy."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    copy = _meta_copy(unet, dtype, checkpointing)
    channels, text_width = copy.config.in_channels, copy.config.cross_attention_dim
    shape: tuple[int, ...] = (batch_size, channels, latent_size, latent_size)
    texts = batch_size
    if num_frames is not None:
        shape = (batch_size, channels, num_frames, latent_size, latent_size)
        texts = batch_size * num_frames
    sample = torch.empty(shape, device="meta", dtype=dtype)
    text = torch.empty((texts, 77, text_width), device="meta", dtype=dtype)
    seen: set[int] = set()
    kept = 0
    largest_block = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        # Memory is per storage: views and a tensor saved by two operations are held once. Meta
        # storages have no address, so the storage object's own identity tells them apart.
        storage = tensor.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            kept += storage.nbytes()
        return tensor

    # The blocks gradient checkpointing recomputes one at a time in backward.
    starts: dict[int, int] = {}

    def before(module, args):
        starts[id(module)] = kept

    def after(module, args, output):
        nonlocal largest_block
        largest_block = max(largest_block, kept - starts.pop(id(module), kept))

    blocks = (ResnetBlock2D, Transformer2DModel, AnimateDiffTransformer3D)
    hooks = [h for m in copy.modules() if isinstance(m, blocks)
             for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        with _flash_attention_on_meta(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            copy(sample, torch.zeros((), device="meta", dtype=torch.long), encoder_hidden_states=text)
    finally:
        for hook in hooks:
            hook.remove()
    return kept, largest_block


def estimate_training_memory(unet: nn.Module, others: list[nn.Module], *, batch_size: int, latent_size: int,
                             num_frames: int | None, dtype: torch.dtype, checkpointing: bool,
                             optimizer: str = "adamw") -> MemoryEstimate:
    """Expected peak GPU memory of a LoRA training step on ``unet`` (with ``others`` on the device too)."""
    models = [unet, *others]
    weights = sum(p.numel() * (4 if p.requires_grad else torch.finfo(dtype).bits // 8)
                  for model in models for p in model.parameters())
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    # AdamW: two moments per weight; Prodigy adds its running sum and the initial weights.
    state_bytes = {"adamw8bit": 2, "prodigy": 16}.get(optimizer, 8)
    training_state = trainable * (4 + state_bytes)
    activations = activation_bytes(unet, batch_size=batch_size, latent_size=latent_size, num_frames=num_frames,
                                   dtype=dtype, checkpointing=checkpointing)
    return MemoryEstimate(weights=weights, training_state=training_state, activations=activations)


def report_memory(estimate: MemoryEstimate, available: int | None, what: str) -> bool:
    """Log the estimate; warn, naming both figures, when it is more than the device has.

    Returns:
        True when the estimate fits (or the device's size is unknown).
    """
    logger.info("%s: expected peak GPU memory %s", what, estimate.describe())
    if available is None or estimate.total <= available:
        return True
    logger.warning(
        "%s is expected to need %.1f GiB of GPU memory but the GPU has %.1f GiB: it will probably run out of "
        "memory. Turn on gradient_checkpointing, lower the resolution, the frames or the batch size (raise "
        "gradient_accumulation_steps instead), or use optimizer: adamw8bit.",
        what, estimate.total / GIB, available / GIB,
    )  # fmt: skip
    return False


def check_training_memory(unet: nn.Module, others: list[nn.Module], device: torch.device, *, batch_size: int,
                          latent_size: int, num_frames: int | None, dtype: torch.dtype, checkpointing: bool,
                          optimizer: str, what: str) -> MemoryEstimate | None:
    """On a CUDA device: estimate, log and (if too much) warn before the first step. Elsewhere: nothing."""
    if device.type != "cuda":
        return None
    estimate = estimate_training_memory(unet, others, batch_size=batch_size, latent_size=latent_size,
                                        num_frames=num_frames, dtype=dtype, checkpointing=checkpointing,
                                        optimizer=optimizer)
    report_memory(estimate, torch.cuda.get_device_properties(device).total_memory, what)
    return estimate
