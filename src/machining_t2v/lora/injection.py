"""LoRA injection on (motion) UNets and the LoRA file formats the product writes.

* :func:`add_lora` puts a peft LoRA on a diffusers model through ``model.add_adapter``,
  as diffusers' own ``train_text_to_image_lora.py`` does, so what we save loads with
  ``pipe.load_lora_weights``.
* Formats: diffusers (``pytorch_lora_weights.safetensors`` with the LoRA config as
  metadata, so ``lora_alpha != r`` survives reload), kohya/A1111/ComfyUI
  (``lora_unet_..._to_q.lora_down.weight`` + ``.alpha``) for image LoRAs, and the original
  AnimateDiff MotionLoRA layout for motion LoRAs.

This module must not import Kedro: it also runs in notebooks and under ``accelerate launch``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor, nn

# peft matches a string target with re.fullmatch against each module's dotted name.
# Image LoRA: every attention projection that is not inside an AnimateDiff motion module,
# i.e. what diffusers' image script targets, on UNet2DConditionModel and UNetMotionModel alike.
IMAGE_LORA_TARGETS = r"^(?!.*\bmotion_modules\b).*\.(?:to_q|to_k|to_v|to_out\.0)$"
# Motion LoRA: the attention projections of the motion modules' temporal transformers only.
MOTION_LORA_TARGETS = r"^.*\bmotion_modules\.\d+\..*\.(?:to_q|to_k|to_v|to_out\.0)$"

DIFFUSERS_LORA_FILENAME = "pytorch_lora_weights.safetensors"

_ATTN_PROJ_RE = re.compile(r"\.(?:to_q|to_k|to_v|to_out\.0)$")
_LORA_KINDS = ("image", "motion")


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


# --------------------------------------------------------------------------- key parsing

_PEFT_KEY_RE = re.compile(
    r"^(?:unet\.)?(?P<module>.+)\.(?:lora_(?P<ab>[AB])|lora\.(?P<du>down|up))\.weight$"
)


def _parse_lora_key(key: str) -> tuple[str, str]:
    """Split a peft (``.lora_A.weight``) or diffusers (``.lora.down.weight``) key into
    (module path without ``unet.``, "down" | "up")."""
    m = _PEFT_KEY_RE.match(key)
    if not m:
        raise ValueError(
            f"unsupported LoRA key {key!r}: expected '<module>.lora_A.weight'/'.lora_B.weight' "
            "or '<module>.lora.down.weight'/'.lora.up.weight'"
        )
    direction = m["du"] or ("down" if m["ab"] == "A" else "up")
    return m["module"], direction


def _group_by_module(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    modules: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        module, direction = _parse_lora_key(key)
        modules.setdefault(module, {})[direction] = tensor
    incomplete = [m for m, pair in modules.items() if set(pair) != {"down", "up"}]
    if incomplete:
        raise ValueError(f"LoRA weights lack a down or up matrix for: {', '.join(incomplete[:10])}")
    return modules


def _check_kind(modules: list[str], kind: str) -> None:
    if kind not in _LORA_KINDS:
        raise ValueError(f"kind must be one of {_LORA_KINDS}, got {kind!r}")
    in_motion = [m for m in modules if re.search(r"\bmotion_modules\b", m)]
    if kind == "image" and in_motion:
        raise ValueError(f"image LoRA holds motion-module weights, e.g. {in_motion[0]}")
    if kind == "motion" and len(in_motion) != len(modules):
        outside = next(m for m in modules if m not in in_motion)
        raise ValueError(f"motion LoRA holds weights outside motion_modules, e.g. {outside}")


# --------------------------------------------------------------------------- file formats


def save_safetensors_atomic(
    tensors: Mapping[str, Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a safetensors file via a temporary file in the same folder and ``os.replace``,
    so readers never see a half-written file. Non-string metadata values are JSON-encoded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = None
    if metadata is not None:
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_diffusers_lora(
    state_dict: Mapping[str, Tensor],
    lora_config: LoraConfig,
    out_dir: str | Path,
    *,
    kind: Literal["image", "motion"],
) -> Path:
    """Save a UNet LoRA as ``out_dir/pytorch_lora_weights.safetensors`` in diffusers format.

    Written by ``StableDiffusionPipeline.save_lora_weights`` (image) or
    ``AnimateDiffPipeline.save_lora_weights`` (motion) with
    ``unet_lora_adapter_metadata=lora_config.to_dict()``: without that metadata diffusers
    re-derives the config from the weights and loses ``lora_alpha`` when it differs from
    ``r``. Load it back with ``pipe.load_lora_weights(out_dir)``.

    Args:
        state_dict: from :func:`lora_state_dict` (peft keys; diffusers keys also accepted).
        kind: "image" (no motion-module keys allowed) or "motion" (only motion-module keys).

    Returns:
        The file written.
    """
    from diffusers import AnimateDiffPipeline, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    modules = _group_by_module(state_dict)
    _check_kind(list(modules), kind)
    peft_sd = {}
    for module, pair in modules.items():
        peft_sd[f"{module}.lora_A.weight"] = pair["down"].detach().contiguous()
        peft_sd[f"{module}.lora_B.weight"] = pair["up"].detach().contiguous()
    # Same key style as diffusers' train_text_to_image_lora.py writes.
    diffusers_sd = convert_state_dict_to_diffusers(peft_sd)
    pipeline_cls = StableDiffusionPipeline if kind == "image" else AnimateDiffPipeline
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # diffusers writes in place; write into a scratch folder and rename for atomicity.
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=out) as scratch:
        pipeline_cls.save_lora_weights(
            scratch,
            unet_lora_layers=diffusers_sd,
            unet_lora_adapter_metadata=lora_config.to_dict(),
            weight_name=DIFFUSERS_LORA_FILENAME,
            safe_serialization=True,
        )
        target = out / DIFFUSERS_LORA_FILENAME
        os.replace(Path(scratch) / DIFFUSERS_LORA_FILENAME, target)
    return target


def to_kohya(state_dict: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Convert a UNet LoRA to the kohya-ss / A1111 / ComfyUI layout.

    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` becomes
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`` with
    ``.lora_down.weight`` (= lora_A, shape (r, in)), ``.lora_up.weight`` (= lora_B, shape
    (out, r)) and ``.alpha`` (a 0-dim tensor; the scale is alpha / r). SD1.x kohya LoRAs
    use the diffusers module names with ``.`` -> ``_`` (``to_out.0`` -> ``to_out_0``), which
    is what diffusers' ``_convert_non_diffusers_lora_to_diffusers`` parses back.

    Save with :func:`save_safetensors_atomic` (optionally ``metadata=kohya_metadata(...)``).
    """
    out: dict[str, Tensor] = {}
    for module, pair in _group_by_module(state_dict).items():
        if "motion_modules" in module:
            raise ValueError(
                f"{module}: motion-module LoRA has no kohya layout; use to_animatediff_motion_lora"
            )
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = pair["down"]
        out[f"{name}.lora_up.weight"] = pair["up"]
        # sd-scripts stores alpha in the weights' dtype next to them.
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=pair["down"].dtype)
    return out


def kohya_metadata(rank: int, alpha: float, **extra: str) -> dict[str, str]:
    """Minimal sd-scripts style metadata (shown by A1111/ComfyUI; not needed to load)."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        **extra,
    }


_MOTION_DIFFUSERS_RE = re.compile(
    r"^(?P<pre>.*\bmotion_modules\.\d+)\.transformer_blocks\.(?P<tb>\d+)"
    r"\.attn(?P<attn>[12])\.(?P<proj>to_q|to_k|to_v|to_out\.0)$"
)
_MOTION_ORIGINAL_RE = re.compile(
    r"^(?P<pre>.*\bmotion_modules\.\d+)\.temporal_transformer\.transformer_blocks\.(?P<tb>\d+)"
    r"\.attention_blocks\.(?P<ab>\d+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora"
    r"\.(?P<dir>down|up)\.weight$"
)


def to_animatediff_motion_lora(state_dict: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Convert a motion LoRA to the original AnimateDiff MotionLoRA layout.

    ``down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_out.0`` (diffusers) becomes
    ``down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0
    .processor.to_out_lora.down.weight`` / ``.up.weight``: ``temporal_transformer`` re-inserted,
    ``attn1``/``attn2`` -> ``attention_blocks.0``/``.1``, ``to_out.0`` -> ``to_out``, no
    ``unet.`` prefix (the inverse of diffusers' ``convert_animatediff_motion_lora_to_diffusers``).

    The format has no alpha: AnimateDiff adds ``up @ down`` (times a user strength), so the
    peft scale ``alpha / r`` is folded into the up matrices here. Pass the adapter's
    ``lora_alpha`` (``alpha == r`` leaves the weights unchanged).
    """
    out: dict[str, Tensor] = {}
    for module, pair in _group_by_module(state_dict).items():
        m = _MOTION_DIFFUSERS_RE.match(module)
        if not m:
            raise ValueError(
                f"{module}: not a motion-module attention projection "
                "('...motion_modules.<i>.transformer_blocks.<j>.attn1|attn2.to_q|to_k|to_v|to_out.0')"
            )
        proj = "to_out" if m["proj"] == "to_out.0" else m["proj"]
        base = (
            f"{m['pre']}.temporal_transformer.transformer_blocks.{m['tb']}"
            f".attention_blocks.{int(m['attn']) - 1}.processor.{proj}_lora"
        )
        rank = pair["down"].shape[0]
        scale = float(alpha) / rank
        up = pair["up"] if scale == 1.0 else pair["up"] * scale
        out[f"{base}.down.weight"] = pair["down"]
        out[f"{base}.up.weight"] = up
    return out


def from_animatediff_motion_lora(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert an original-layout AnimateDiff MotionLoRA to peft keys
    (``...motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight``).

    The result means ``alpha == r`` (scale 1). Load it with ``LoraConfig(r=rank,
    lora_alpha=rank)``, or prefix keys with ``unet.`` for ``pipe.load_lora_weights(dict)``.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        m = _MOTION_ORIGINAL_RE.match(key)
        if not m:
            raise ValueError(
                f"unsupported AnimateDiff MotionLoRA key {key!r}: expected "
                "'...motion_modules.<i>.temporal_transformer.transformer_blocks.<j>"
                ".attention_blocks.<k>.processor.to_q|to_k|to_v|to_out_lora.down|up.weight'"
            )
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        ab = "lora_A" if m["dir"] == "down" else "lora_B"
        module = f"{m['pre']}.transformer_blocks.{m['tb']}.attn{int(m['ab']) + 1}.{proj}"
        out[f"{module}.{ab}.weight"] = tensor
    return out


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
    for name, pair in _group_by_module(state_dict).items():
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
