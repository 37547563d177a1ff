"""Users' LoRA files on a video generator: found, read safely, checked against the base, then loaded.

LoRAs load from a ``.safetensors`` file or a folder holding ``pytorch_lora_weights.safetensors``,
in the diffusers/peft layout (what this project writes), the kohya/A1111 layout (diffusers
converts it) or the original AnimateDiff MotionLoRA layout (converted by
:func:`machining_t2v.lora.formats.from_animatediff_motion_lora`, then handed to diffusers as a dict).
Pickled ``.bin``/``.pt`` files are read only if ``torch.load(weights_only=True)`` accepts them.
Before anything is loaded, every LoRA layer is checked against the base model's modules and
sizes, so a LoRA made for another base fails with one message naming both.

This module must not import Kedro: it also runs from the console script and in notebooks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from machining_t2v.lora.files import DIFFUSERS_LORA_FILENAME, LORA_INFO_FILENAME
from machining_t2v.lora.formats import (
    canonical_layers,
    in_motion_module,
    lora_layout,
    to_diffusers_dict,
)

if TYPE_CHECKING:
    from machining_t2v.generation.generator import VideoGenerator

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
"""Pickled weight files: read only through ``torch.load(weights_only=True)``."""

# Weight files looked for, in this order, when a LoRA is given as a folder.
_FOLDER_WEIGHT_NAMES = (
    DIFFUSERS_LORA_FILENAME,
    "diffusion_pytorch_model.safetensors",
    "pytorch_lora_weights.bin",
    "diffusion_pytorch_model.bin",
)

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")

# Diffusers warns about every LoRA that has no text-encoder part; ours never have one.
_QUIET_MESSAGES = ("No LoRA keys associated to CLIPTextModel",)


class LoraMismatchError(ValueError):
    """A LoRA that does not fit the base model (modules it names are missing or differ in size)."""


@dataclass
class LoadedLora:
    """A LoRA loaded into a :class:`VideoGenerator` as one diffusers adapter.

    Attributes:
        adapter_name: the name given to ``pipe.load_lora_weights`` (used by ``set_adapters``).
        path: what the caller gave (file or folder).
        weights_file: the weight file actually read.
        layout: ``diffusers``, ``kohya``, ``animatediff-motionlora`` or ``diffusers-unprefixed``.
        num_layers: how many LoRA layers (down/up pairs) it holds.
        targets: ``spatial``, ``motion`` or ``spatial+motion``: which attention it changes.
        info: the ``lora_info.json`` beside the weights, if there is one (steps, base model, ...).
    """

    adapter_name: str
    path: Path
    weights_file: Path
    layout: str
    num_layers: int
    targets: str
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (for reports and run records)."""
        config = self.info.get("lora_config") or {}
        return {
            "adapter_name": self.adapter_name,
            "path": str(self.path),
            "weights_file": str(self.weights_file),
            "layout": self.layout,
            "num_layers": self.num_layers,
            "targets": self.targets,
            "rank": config.get("r"),
            "alpha": config.get("lora_alpha"),
            "steps": self.info.get("steps"),
            "trained_on": self.info.get("base_model"),
        }


def find_lora_file(path: str | Path) -> Path:
    """The weight file of a LoRA given as a file or a folder.

    A folder is searched for ``pytorch_lora_weights.safetensors`` (diffusers, what this project
    writes), ``diffusion_pytorch_model.safetensors``, then their ``.bin`` forms, then a single
    other ``.safetensors`` file.

    Raises:
        FileNotFoundError: the path does not exist, or the folder holds no weight file.
        ValueError: the folder holds several candidate files (pass the file itself).
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise FileNotFoundError(f"LoRA not found: {path} (expected a .safetensors file or a folder holding "
                                f"{DIFFUSERS_LORA_FILENAME})")
    if given.is_file():
        return given
    for name in _FOLDER_WEIGHT_NAMES:
        if (given / name).is_file():
            return given / name
    candidates = sorted(p for p in given.glob(f"*{SAFETENSORS_SUFFIX}") if not p.name.startswith("."))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(f"LoRA folder {given} holds no weight file (expected {DIFFUSERS_LORA_FILENAME} "
                                "or another .safetensors file)")
    raise ValueError(f"LoRA folder {given} holds several .safetensors files "
                     f"({', '.join(p.name for p in candidates[:5])}); pass the one to load")


def read_lora_weights(file: str | Path) -> dict[str, Tensor]:
    """Read a LoRA weight file into a flat ``{key: tensor}`` dict.

    ``.safetensors`` files are read directly. Pickled files (``.bin``, ``.pt``, ``.pth``,
    ``.ckpt``) are read only with ``torch.load(weights_only=True)``, which refuses pickles that
    would run code; anything else is refused. A top-level ``state_dict`` entry is unwrapped.

    Raises:
        ValueError: unreadable or refused file, unsupported extension, or no tensors in it.
    """
    file = Path(file)
    suffix = file.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state_dict = load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"LoRA {file} is not a readable safetensors file ({error})") from error
    elif suffix in PICKLE_SUFFIXES:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            plain = _ANSI_RE.sub("", str(error)).strip()
            reason = (plain.splitlines() or [type(error).__name__])[0][:200]
            raise ValueError(
                f"Refusing LoRA {file}: it is a pickled file that torch.load(weights_only=True) rejects "
                f"({reason}); unpickling it could run arbitrary code. Convert it to .safetensors with a tool "
                "you trust, or get a .safetensors release of it."
            ) from error
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping):
            raise ValueError(f"LoRA {file} holds a {type(loaded).__name__}, not a dict of tensors")
        state_dict = {str(k): v for k, v in loaded.items() if isinstance(v, Tensor)}
    else:
        raise ValueError(f"LoRA {file}: unsupported file type {suffix or '(none)'!r}; use .safetensors "
                         f"(or a pickled {'/'.join(PICKLE_SUFFIXES)} file that torch.load(weights_only=True) reads)")
    if not state_dict:
        raise ValueError(f"LoRA {file} holds no tensors")
    return state_dict


def _base_layer(module: nn.Module) -> nn.Module:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _layer_sizes(module: nn.Module) -> tuple[int, int] | None:
    module = _base_layer(module)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Conv3d):
        return module.in_channels, module.out_channels
    return None


def check_lora_fits(generator: VideoGenerator, state_dict: Mapping[str, Tensor], path: str | Path) -> tuple[int, str]:
    """Check that every LoRA layer names a module of the base model with matching sizes.

    Args:
        state_dict: component-prefixed keys (``unet.``/``text_encoder.``), any key style
            diffusers reads (kohya files must be converted first).

    Returns:
        (number of LoRA layers, "spatial" | "motion" | "spatial+motion").

    Raises:
        LoraMismatchError: naming the LoRA path, the base model and up to three offending layers.
    """
    layers = canonical_layers(state_dict)
    if not layers:
        raise LoraMismatchError(f"LoRA {path} holds no UNet or text-encoder LoRA layers that "
                                f"base model {generator.base_source} could take")
    components = {"unet": generator.pipe.unet, "text_encoder": generator.pipe.text_encoder}
    modules = {name: dict(model.named_modules()) for name, model in components.items()}
    missing, resized = [], []
    for (component, module_name), pair in layers.items():
        module = modules[component].get(module_name)
        if module is None:
            missing.append(f"{component}.{module_name}")
            continue
        sizes = _layer_sizes(module)
        down, up = pair.get("down"), pair.get("up")
        if sizes is None or down is None or up is None:
            continue
        lora_in, lora_out = int(down.shape[1]), int(up.shape[0])
        if (lora_in, lora_out) != sizes:
            resized.append(f"{component}.{module_name} (LoRA {lora_in}->{lora_out}, base {sizes[0]}->{sizes[1]})")
    if missing or resized:
        problems = []
        if missing:
            problems.append(f"{len(missing)} name modules the base does not have (e.g. {', '.join(missing[:3])})")
        if resized:
            problems.append(f"{len(resized)} have other sizes than the base's (e.g. {', '.join(resized[:3])})")
        raise LoraMismatchError(
            f"LoRA {path} does not match base model {generator.base_source} "
            f"(motion adapter {generator.motion_adapter_source}): of its {len(layers)} LoRA layers "
            f"{' and '.join(problems)}. It was trained for another base model; use the base it was made for "
            "(SD1.5 LoRAs need an SD1.5-family base, SDXL LoRAs do not fit SD1.5)."
        )
    in_motion = [m for _, m in layers if in_motion_module(m)]
    targets = "motion" if len(in_motion) == len(layers) else "spatial+motion" if in_motion else "spatial"
    return len(layers), targets


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _QUIET_MESSAGES)


@contextlib.contextmanager
def _quiet_diffusers_loaders() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("diffusers.loaders.lora_base", "diffusers.loaders.peft",
                                                    "diffusers.loaders.lora_pipeline")]
    quiet = _DropMessages()
    for item in loggers:
        item.addFilter(quiet)
    try:
        yield
    finally:
        for item in loggers:
            item.removeFilter(quiet)


def _read_lora_info(weights_file: Path) -> dict[str, Any]:
    """The ``lora_info.json`` beside a weight file; ``{}`` when there is none or it is unreadable."""
    info_path = weights_file.parent / LORA_INFO_FILENAME
    try:
        return json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_lora(generator: VideoGenerator, path: str | Path, adapter_name: str) -> LoadedLora:
    """Load a LoRA into the generator's pipeline with ``pipe.load_lora_weights(..., adapter_name=...)``.

    Accepts a ``.safetensors`` file, a folder (see :func:`find_lora_file`), or a pickled file
    that ``torch.load(weights_only=True)`` reads. Diffusers-layout safetensors files are loaded
    by path (their adapter metadata, e.g. ``lora_alpha``, is kept); kohya files are converted by
    diffusers; original AnimateDiff MotionLoRA files are converted here and passed as a dict.
    The new adapter is active at scale 1 until :func:`set_lora_scales` is called.

    Raises:
        FileNotFoundError: the path does not exist or holds no weights.
        ValueError: unreadable/refused file, not a LoRA, or the adapter name is taken.
        LoraMismatchError: the LoRA does not fit the base model.
    """
    from diffusers import AnimateDiffPipeline

    if adapter_name in generator.loras:
        raise ValueError(f"a LoRA named {adapter_name!r} is already loaded ({generator.loras[adapter_name].path})")
    weights_file = find_lora_file(path)
    raw = read_lora_weights(weights_file)
    try:
        layout = lora_layout(raw)
        if layout == "kohya":
            converted, _ = AnimateDiffPipeline.lora_state_dict(dict(raw))
        else:
            converted = to_diffusers_dict(raw, layout)
    except ValueError as error:
        raise ValueError(f"LoRA {weights_file}: {error}") from error
    num_layers, targets = check_lora_fits(generator, converted, path)

    by_path = layout == "diffusers" and weights_file.suffix.lower() == SAFETENSORS_SUFFIX
    source: Any = str(weights_file.parent) if by_path else (dict(raw) if layout == "kohya" else converted)
    kwargs = {"weight_name": weights_file.name} if by_path else {}
    try:
        with _quiet_diffusers_loaders():
            generator.pipe.load_lora_weights(source, adapter_name=adapter_name, **kwargs)
    except Exception as error:
        raise LoraMismatchError(f"LoRA {path} could not be loaded into base model {generator.base_source}: "
                                f"{type(error).__name__}: {str(error).strip()[:300]}") from error
    loaded = LoadedLora(adapter_name=adapter_name, path=Path(path), weights_file=weights_file, layout=layout,
                        num_layers=num_layers, targets=targets, info=_read_lora_info(weights_file))
    generator.loras[adapter_name] = loaded
    logger.info("Loaded %s LoRA %s (%s layout, %d layers) as adapter %r", targets, weights_file, layout, num_layers,
                adapter_name)
    return loaded


def set_lora_scales(generator: VideoGenerator, scales: Mapping[str, float]) -> None:
    """Activate exactly the adapters in ``scales`` at those weights (``pipe.set_adapters``);
    an empty mapping (or all-zero scales) switches every LoRA off (``pipe.disable_lora``).

    Raises:
        ValueError: a name that is not a loaded adapter.
    """
    unknown = [name for name in scales if name not in generator.loras]
    if unknown:
        raise ValueError(f"no LoRA loaded as {', '.join(map(repr, unknown))}; loaded: {sorted(generator.loras)}")
    active = {name: float(scale) for name, scale in scales.items() if float(scale) != 0.0}
    if not generator.loras:
        return
    if not active:
        generator.pipe.disable_lora()
        return
    generator.pipe.enable_lora()
    generator.pipe.set_adapters(list(active), adapter_weights=list(active.values()))


def unload_lora(generator: VideoGenerator, adapter_name: str) -> None:
    """Remove a loaded LoRA from the generator's pipeline (``pipe.delete_adapters``); unknown names are ignored."""
    if generator.loras.pop(adapter_name, None) is not None:
        generator.pipe.delete_adapters(adapter_name)


def use_loras(generator: VideoGenerator, choices: Mapping[str, tuple[str | Path | None, float]]) -> dict[str, float]:
    """Make exactly the chosen LoRAs active: ``{adapter name: (path or None, scale)}``; returns the scales set.

    Every LoRA loaded before is unloaded first and the chosen ones are read again from disk, so a
    generator that serves many requests (the web page) always uses the files as they are now.

    Raises:
        FileNotFoundError, ValueError, LoraMismatchError: as :func:`load_lora`.
    """
    for name in list(generator.loras):
        unload_lora(generator, name)
    scales = {}
    for name, (path, scale) in choices.items():
        if path:
            load_lora(generator, path, name)
            scales[name] = float(scale)
    set_lora_scales(generator, scales)
    return scales


def load_textual_inversion(generator: VideoGenerator, path: str | Path, token: str) -> None:
    """Load a textual-inversion embedding under ``token`` (``pipe.load_textual_inversion``); it changes
    only prompts that hold the token.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an embedding the text encoder can take, or the token is taken.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"textual-inversion embedding {path} does not exist")
    try:
        generator.pipe.load_textual_inversion(str(path), token=token)
    except ValueError as error:
        raise ValueError(f"textual-inversion embedding {path} could not be loaded as {token!r} into base model "
                         f"{generator.base_source}: {error}") from error
    generator.embeddings[token] = str(path)
    logger.info("Loaded textual-inversion embedding %s as %r", path, token)


def embedding_token(path: str | Path) -> tuple[Path, str, str | None]:
    """The diffusers-layout file, token and replaced caption word of a textual-inversion embedding
    given as the folder ``image_ft`` writes (``data/06_models/image_embedding``: the word comes from
    its ``embedding_info.json``) or as a diffusers-layout ``.safetensors`` file (``{token: vector}``,
    no replaced word).

    Raises:
        FileNotFoundError: no such file, or a folder without an embedding.
        ValueError: the file is not a .safetensors file or does not hold exactly one token's vector in the
            diffusers layout.
    """
    from safetensors import SafetensorError

    from machining_t2v.lora.files import EMBEDDING_FILENAME, EMBEDDING_INFO_FILENAME
    from machining_t2v.training.textual_inversion import load_embedding

    path = Path(path).expanduser()
    replaces = None
    if path.is_dir():
        info_file = path / EMBEDDING_INFO_FILENAME
        if not info_file.is_file():
            raise FileNotFoundError(f"{path} holds no textual-inversion embedding ({EMBEDDING_INFO_FILENAME} is "
                                    "missing): train one with image_ft.method=textual_inversion")
        replaces = json.loads(info_file.read_text(encoding="utf-8")).get("replaces")
        path = path / EMBEDDING_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"textual-inversion embedding {path} does not exist")
    try:
        token, _ = load_embedding(path)  # the one key of the file; a ValueError names them when there are more
    except SafetensorError as error:
        raise ValueError(f"textual-inversion embedding {path} is not a .safetensors file: {error}") from error
    if token in ("emb_params", "string_to_param"):  # A1111's and the original textual-inversion's key
        raise ValueError(f"textual-inversion embedding {path}: expected one token's vector in the diffusers layout "
                         f"({{token: vector}}), found [{token!r}]; give the folder image_ft wrote or its "
                         f"{EMBEDDING_FILENAME}")
    return path, token, replaces
