"""LoRA file formats: the key layouts, reading them, and writing what the product exports.

Every key rule lives here once, for both directions:

* diffusers/peft keys: ``<module>.lora_A.weight`` / ``.lora_B.weight`` (optionally with an adapter
  name), ``<module>.lora.down.weight`` / ``.up.weight``, the text encoder's older
  ``lora_linear_layer``, and attention processors' ``processor.to_q_lora.down.weight``;
* kohya-ss / A1111 / ComfyUI: ``lora_unet_<module with _>.lora_down.weight`` + ``.alpha``;
* the original AnimateDiff MotionLoRA: ``...motion_modules.<i>.temporal_transformer.
  transformer_blocks.<j>.attention_blocks.<k>.processor.to_q_lora.down.weight``.

:func:`lora_layout` tells a file's layout; :func:`to_kohya`, :func:`to_animatediff_motion_lora` and
:func:`from_animatediff_motion_lora` convert; :func:`save_diffusers_lora` and
:func:`save_safetensors_atomic` write.

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
from safetensors.torch import save_file
from torch import Tensor

from machining_t2v.lora.files import DIFFUSERS_LORA_FILENAME

_LORA_KINDS = ("image", "motion")
_COMPONENT_PREFIXES = ("unet", "text_encoder")
_KOHYA_UNET_PREFIX = "lora_unet_"
_KOHYA_PREFIXES = (_KOHYA_UNET_PREFIX, "lora_te_", "lora_te1_", "lora_te2_")
_MOTION_MODULE_RE = re.compile(r"\bmotion_modules\b")

# One LoRA layer's down/up weight in the key styles diffusers reads (module path without prefix):
#   peft:               <module>.lora_A.weight / .lora_B.weight (optionally .lora_A.<adapter>.weight)
#   diffusers:          <module>.lora.down.weight / .lora.up.weight
#   text encoder (old): <module>.lora_linear_layer.down.weight
_LAYER_KEY_RE = re.compile(
    r"^(?P<module>.+?)\.(?:lora_(?P<ab>[AB])(?:\.[\w-]+)?|lora\.(?P<du>down|up)"
    r"|lora_linear_layer\.(?P<lin>down|up))\.weight$"
)
#   attention processors: <attention>.processor.to_q_lora.down.weight (kohya files convert to this,
#   and the original AnimateDiff MotionLoRA uses it inside its temporal transformer)
_PROCESSOR_LORA = r"processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<dir>down|up)\.weight$"
_PROCESSOR_KEY_RE = re.compile(r"^(?P<attn>.+?)\." + _PROCESSOR_LORA)
# The original AnimateDiff motion module's attention blocks (diffusers drops "temporal_transformer"
# and names them attn1/attn2).
_MOTION_ORIGINAL_BLOCK = r"\btemporal_transformer\.transformer_blocks\.(?P<tb>\d+)\.attention_blocks\.(?P<ab>\d+)\."
_MOTION_ORIGINAL_BLOCK_RE = re.compile(_MOTION_ORIGINAL_BLOCK)
_MOTION_ORIGINAL_RE = re.compile(r"^(?P<pre>.*\bmotion_modules\.\d+)\." + _MOTION_ORIGINAL_BLOCK + _PROCESSOR_LORA)
_MOTION_DIFFUSERS_RE = re.compile(
    r"^(?P<pre>.*\bmotion_modules\.\d+)\.transformer_blocks\.(?P<tb>\d+)"
    r"\.attn(?P<attn>[12])\.(?P<proj>to_q|to_k|to_v|to_out\.0)$"
)


def in_motion_module(module: str) -> bool:
    """Whether a module path lies inside an AnimateDiff motion module."""
    return bool(_MOTION_MODULE_RE.search(module))


def _processor_projection(proj: str) -> str:
    """The diffusers projection name of a processor-style key's ``to_q|to_k|to_v|to_out``
    (attention processors call the output projection ``to_out``, diffusers ``to_out.0``)."""
    return "to_out.0" if proj == "to_out" else proj


def _direction(match: re.Match) -> str:
    """"down" or "up" from a :data:`_LAYER_KEY_RE` match."""
    return match["du"] or match["lin"] or ("down" if match["ab"] == "A" else "up")


def _parse_lora_key(key: str) -> tuple[str, str]:
    """Split a peft (``.lora_A.weight``) or diffusers (``.lora.down.weight``) key into
    (module path without ``unet.``, "down" | "up")."""
    m = _LAYER_KEY_RE.match(key.removeprefix("unet."))
    if not m:
        raise ValueError(
            f"unsupported LoRA key {key!r}: expected '<module>.lora_A.weight'/'.lora_B.weight' "
            "or '<module>.lora.down.weight'/'.lora.up.weight'"
        )
    return m["module"], _direction(m)


def group_by_module(state_dict: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{module path: {"down": tensor, "up": tensor}}`` of peft or diffusers keys; every module needs both."""
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
    in_motion = [m for m in modules if in_motion_module(m)]
    if kind == "image" and in_motion:
        raise ValueError(f"image LoRA holds motion-module weights, e.g. {in_motion[0]}")
    if kind == "motion" and len(in_motion) != len(modules):
        outside = next(m for m in modules if m not in in_motion)
        raise ValueError(f"motion LoRA holds weights outside motion_modules, e.g. {outside}")


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

    modules = group_by_module(state_dict)
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
    for module, pair in group_by_module(state_dict).items():
        if in_motion_module(module):
            raise ValueError(
                f"{module}: motion-module LoRA has no kohya layout; use to_animatediff_motion_lora"
            )
        name = _KOHYA_UNET_PREFIX + module.replace(".", "_")
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
    for module, pair in group_by_module(state_dict).items():
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
        proj = _processor_projection(m["proj"])
        ab = "lora_A" if m["dir"] == "down" else "lora_B"
        module = f"{m['pre']}.transformer_blocks.{m['tb']}.attn{int(m['ab']) + 1}.{proj}"
        out[f"{module}.{ab}.weight"] = tensor
    return out

def lora_layout(state_dict: Mapping[str, Tensor]) -> str:
    """Which key layout a LoRA state dict uses.

    ``kohya`` (``lora_unet_...``), ``animatediff-motionlora`` (original MotionLoRA keys with
    ``temporal_transformer`` and ``attention_blocks``), ``diffusers`` (``unet.``/``text_encoder.``
    prefixed: diffusers or peft style) or ``diffusers-unprefixed`` (the same without prefix).

    Raises:
        ValueError: no key looks like a LoRA weight (e.g. a full model checkpoint).
    """
    keys = list(state_dict)
    lora_keys = [k for k in keys if "lora" in k or k.endswith(".alpha")]
    if not lora_keys or len(lora_keys) < len(keys):
        other = next(k for k in keys if k not in lora_keys) if lora_keys else keys[0]
        raise ValueError(f"not a LoRA: key {other!r} is no LoRA weight (a full model checkpoint?)")
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "kohya"
    if any(_MOTION_ORIGINAL_BLOCK_RE.search(k) for k in keys):
        return "animatediff-motionlora"
    if all(k.split(".", 1)[0] in _COMPONENT_PREFIXES for k in keys):
        return "diffusers"
    return "diffusers-unprefixed"


def to_diffusers_dict(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """The state dict in a form ``pipe.load_lora_weights(dict)`` accepts."""
    if layout == "animatediff-motionlora":
        return {f"unet.{k}": v for k, v in from_animatediff_motion_lora(state_dict).items()}
    if layout == "diffusers-unprefixed":
        return {f"unet.{k}": v for k, v in state_dict.items()}
    return dict(state_dict)


def canonical_layers(state_dict: Mapping[str, Tensor]) -> dict[tuple[str, str], dict[str, Tensor]]:
    """``{(component, module path): {"down": tensor, "up": tensor}}`` from component-prefixed keys.

    Keys of forms not listed in ``_LAYER_KEY_RE``/``_PROCESSOR_KEY_RE`` (alphas, biases,
    DoRA scales) are left out; diffusers handles or rejects them itself.
    """
    layers: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        component, _, rest = key.partition(".")
        if component not in _COMPONENT_PREFIXES or not rest:
            continue
        processor = _PROCESSOR_KEY_RE.match(rest)
        if processor:
            module = f"{processor['attn']}.{_processor_projection(processor['proj'])}"
            direction = processor["dir"]
        else:
            match = _LAYER_KEY_RE.match(rest)
            if not match:
                continue
            module, direction = match["module"], _direction(match)
        layers.setdefault((component, module), {})[direction] = tensor
    return layers
