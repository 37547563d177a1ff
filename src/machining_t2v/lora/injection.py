"""LoRA injection on (motion) UNets: adding, reading out, merging and scaling adapters.

* :func:`add_lora` puts a peft LoRA on a diffusers model through ``model.add_adapter``,
  as diffusers' own ``train_text_to_image_lora.py`` does, so what we save loads with
  ``pipe.load_lora_weights``.
* :func:`lora_state_dict` reads an adapter's weights out (peft keys), :func:`merge_lora` folds
  trained weights into a model, :func:`lora_scale` switches adapters on and off.
* The file formats these weights are saved in are in :mod:`machining_t2v.lora.formats`.

This module must not import Kedro: it also runs in notebooks and under ``accelerate launch``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from torch import Tensor, nn

from machining_t2v.lora.formats import group_by_module

# peft matches a string target with re.fullmatch against each module's dotted name.
# Image LoRA: every attention projection that is not inside an AnimateDiff motion module,
# i.e. what diffusers' image script targets, on UNet2DConditionModel and UNetMotionModel alike.
IMAGE_LORA_TARGETS = r"^(?!.*\bmotion_modules\b).*\.(?:to_q|to_k|to_v|to_out\.0)$"
# Motion LoRA: the attention projections of the motion modules' temporal transformers only.
MOTION_LORA_TARGETS = r"^.*\bmotion_modules\.\d+\..*\.(?:to_q|to_k|to_v|to_out\.0)$"


_ATTN_PROJ_RE = re.compile(r"\.(?:to_q|to_k|to_v|to_out\.0)$")


# --------------------------------------------------------------------------- injection


def _attention_projection_names(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and _ATTN_PROJ_RE.search(name)
    ]


def _spread(names: list[str], k: int = 10) -> list[str]:
    """Up to ``k`` names spread over the list, so spatial and motion examples both show."""
    if len(names) <= k:
        return names
    step = (len(names) - 1) / (k - 1)
    return [names[round(i * step)] for i in range(k)]


def add_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: str | list[str],
    adapter_name: str = "default",
    init_lora_weights: bool | str = "gaussian",
) -> LoraConfig:
    """Add a LoRA adapter to a diffusers model (``UNet2DConditionModel``/``UNetMotionModel``).

    Uses ``peft.LoraConfig`` + ``model.add_adapter`` (diffusers' ``PeftAdapterMixin``), so
    the adapter saves and loads exactly like one trained by diffusers' LoRA script.

    Trainability: afterwards **only this adapter's LoRA weights require grad**; every
    other parameter (base weights, other adapters) is frozen, which is what both training
    kinds want. The new adapter becomes the active one. LoRA weights are created in the
    base layer's dtype; cast them to float32 for mixed-precision training.

    Args:
        target_modules: a regex (``IMAGE_LORA_TARGETS``/``MOTION_LORA_TARGETS``) matched
            with ``re.fullmatch`` against module names, or a list of name suffixes.

    Returns:
        The ``LoraConfig`` used; pass its ``to_dict()`` as metadata when saving.

    Raises:
        ValueError: the target matches no module (lists up to 10 available attention
            projection names), or matches modules LoRA cannot wrap.
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights=init_lora_weights,
        target_modules=target_modules,
    )
    matched = {
        name: module
        for name, module in model.named_modules()
        if name and check_target_module_exists(config, name)
    }
    if not matched:
        names = _attention_projection_names(model)
        raise ValueError(
            f"target_modules {target_modules!r} matches no module of {type(model).__name__}; "
            f"attention projections ({len(names)} in all) look like: {', '.join(_spread(names))}"
        )
    # A module already wrapped by an earlier adapter is a peft tuner layer, not a Linear.
    supported = nn.Linear | nn.Conv2d | BaseTunerLayer
    unsupported = [n for n, m in matched.items() if not isinstance(m, supported)]
    if unsupported:
        raise ValueError(
            f"target_modules {target_modules!r} matches modules LoRA cannot wrap "
            f"(not Linear/Conv2d): {', '.join(unsupported[:10])}"
        )
    model.add_adapter(config, adapter_name=adapter_name)
    marker = f".{adapter_name}."
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name and marker in name)
    return config


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, Tensor]:
    """The adapter's LoRA weights with peft keys, e.g. ``down_blocks.0.attentions.0.
    transformer_blocks.0.attn1.to_q.lora_A.weight`` (no adapter name, no ``unet.`` prefix).

    Unwrap the model first if it is wrapped (``accelerator.unwrap_model``).
    """
    return get_peft_model_state_dict(model, adapter_name=adapter_name)


# --------------------------------------------------------------------------- using trained LoRAs


@torch.no_grad()
def merge_lora(model: nn.Module, state_dict: Mapping[str, Tensor], lora_config: Mapping[str, Any],
               scale: float = 1.0) -> int:
    """Add a trained LoRA into the base weights: ``W += scale * alpha / r * up @ down``.

    Used to freeze an image LoRA into the (motion) UNet before a motion LoRA trains on top;
    merged weights cost nothing per step and cannot be trained by accident. Returns the number
    of modules changed; a key naming no module of ``model`` is an error.
    """
    modules = dict(model.named_modules())
    merged = 0
    for name, pair in group_by_module(state_dict).items():
        layer = modules.get(name)
        if layer is None:
            raise ValueError(f"LoRA module {name!r} does not exist in {type(model).__name__}; "
                             "the LoRA was trained for another base model")
        if isinstance(layer, BaseTunerLayer):
            layer = layer.get_base_layer()
        down, up = pair["down"].to(layer.weight), pair["up"].to(layer.weight)
        delta = up.flatten(1) @ down.flatten(1)
        if delta.shape != layer.weight.flatten(1).shape:
            raise ValueError(f"LoRA module {name!r} has shape {tuple(delta.shape)}, the model's weight "
                             f"{tuple(layer.weight.shape)}; the LoRA was trained for another base model")
        rank = down.shape[0]
        layer.weight += (scale * float(lora_config["lora_alpha"]) / rank) * delta.reshape(layer.weight.shape)
        merged += 1
    return merged


class lora_scale:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Temporarily multiply one adapter's LoRA scale (0 switches it off) without touching
    which adapters are active or which parameters require grad.

    The MotionDirector dual path uses it to run the spatial path with the temporal LoRA off,
    and to drop the spatial LoRA on some temporal steps, inside one training step.
    """

    def __init__(self, model: nn.Module, adapter_name: str, factor: float):
        self._layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)
                        and adapter_name in getattr(m, "scaling", {})]
        if not self._layers:
            raise ValueError(f"model has no LoRA adapter named {adapter_name!r}")
        self._adapter, self._factor = adapter_name, factor
        self._saved: list[float] = []

    def __enter__(self) -> lora_scale:
        self._saved = [layer.scaling[self._adapter] for layer in self._layers]
        for layer in self._layers:
            layer.scaling[self._adapter] *= self._factor
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, value in zip(self._layers, self._saved, strict=True):
            layer.scaling[self._adapter] = value
