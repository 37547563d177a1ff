"""Text-to-video generation with image and motion LoRAs applied through diffusers' own loaders.

One code path serves the ``generate`` pipeline, the ``machining-t2v`` console script and the
``evaluation`` pipeline, so what a user runs is what is tested:

    generator = load_generator("builtin:tiny", "builtin:tiny", tiny_model_dir="data/06_models/tiny-sd")
    load_lora(generator, "data/06_models/image_lora", "image")      # pipe.load_lora_weights(...)
    load_lora(generator, "data/06_models/motion_lora", "motion")
    set_lora_scales(generator, {"image": 0.8, "motion": 1.0})         # pipe.set_adapters(...)
    frames = generate_video(generator, "mtv face the steel bar on the lathe", num_frames=16)
    save_video(frames, "clip.mp4")                                    # clip.mp4 (H.264) + clip.gif

LoRAs load from a ``.safetensors`` file or a folder holding ``pytorch_lora_weights.safetensors``,
in the diffusers/peft layout (what this project writes), the kohya/A1111 layout (diffusers
converts it) or the original AnimateDiff MotionLoRA layout (converted here by
:func:`machining_t2v.lora.injection.from_animatediff_motion_lora`, then handed to diffusers as a dict).
Pickled ``.bin``/``.pt`` files are read only if ``torch.load(weights_only=True)`` accepts them.
Before anything is loaded, every LoRA layer is checked against the base model's modules and
sizes, so a LoRA made for another base fails with one message naming both.

This module must not import Kedro: it also runs from the console script and in notebooks.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from machining_t2v.fixtures.tiny_model import tiny_model_exists
from machining_t2v.lora.injection import DIFFUSERS_LORA_FILENAME, from_animatediff_motion_lora
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
from machining_t2v.models.sources import TINY_MODEL

logger = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "euler", "dpm++")
"""Sampler names accepted by :func:`load_generator` (``--scheduler`` of the console script)."""

DEFAULT_FPS = 8.0
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
_COMPONENT_PREFIXES = ("unet", "text_encoder")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_ANIMATEDIFF_ORIGINAL_RE = re.compile(r"\btemporal_transformer\.transformer_blocks\.\d+\.attention_blocks\.\d+\.")
# One LoRA layer's down/up weight in the key styles diffusers reads:
#   peft:               <module>.lora_A.weight / .lora_B.weight (optionally .lora_A.<adapter>.weight)
#   diffusers:          <module>.lora.down.weight / .lora.up.weight
#   text encoder (old): <module>.lora_linear_layer.down.weight
#   attention procs:    <attention>.processor.to_q_lora.down.weight (kohya files convert to this)
_LAYER_KEY_RE = re.compile(
    r"^(?P<module>.+?)\.(?:lora_(?P<ab>[AB])(?:\.[\w-]+)?|lora\.(?P<du>down|up)"
    r"|lora_linear_layer\.(?P<lin>down|up))\.weight$"
)
_PROCESSOR_KEY_RE = re.compile(
    r"^(?P<attn>.+?)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<dir>down|up)\.weight$"
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


@dataclass
class VideoGenerator:
    """An ``AnimateDiffPipeline`` (base model + motion adapter) and the LoRAs loaded into it."""

    pipe: Any
    base_source: str
    """The folder or hub id the base model was loaded from."""
    base_spec: str
    """What was asked for (e.g. ``builtin:tiny``)."""
    motion_adapter_source: str
    scheduler: str
    max_frames: int
    """The motion adapter's ``motion_max_seq_length``: the most frames one clip may have."""
    base_is_tiny: bool
    loras: dict[str, LoadedLora] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def default_size(self) -> int:
        """The base model's native resolution in pixels (64 for the tiny model, 512 for SD1.5)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def describe(self) -> dict[str, Any]:
        """Which models this generator runs (for reports, run records and the console)."""
        return {
            "base_model": self.base_spec,
            "base_model_source": self.base_source,
            "base_model_note": "built-in tiny model with random weights (untrained)" if self.base_is_tiny else "",
            "motion_adapter": self.motion_adapter_source,
            "motion_max_seq_length": self.max_frames,
            "scheduler": self.scheduler,
            "loras": {name: lora.describe() for name, lora in self.loras.items()},
        }


# --------------------------------------------------------------------------- loading


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Let torch use ``count`` CPU threads inside the block and restore the previous count after
    (``None`` or 0: leave torch's setting alone).

    Small models on small CPUs run faster on one thread: the tiny model's 8-frame clip took
    ~1 s with 1 thread and 5-10 s with 2 on the project's 2-core VM.
    """
    if not count:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    """``auto`` (float16 on CUDA, float32 elsewhere), ``float32``, ``float16`` or ``bfloat16``."""
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in choices:
        raise ValueError(f"dtype must be auto or one of {sorted(choices)}, got {name!r}")
    return choices[name]


def make_scheduler(name: str, ddim_scheduler: Any) -> Any:
    """The sampler ``name`` (``ddim``, ``euler`` or ``dpm++``), configured like ``ddim_scheduler``.

    The DDIM scheduler comes from :func:`machining_t2v.diffusion.sampling.video_pipeline` (AnimateDiff's
    settings: linear betas, linspace timesteps); the others reuse its config.
    """
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim":
        return ddim_scheduler
    if name == "euler":
        return EulerDiscreteScheduler.from_config(ddim_scheduler.config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(ddim_scheduler.config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")


def load_generator(
    base: str = TINY_MODEL,
    motion_adapter: str = TINY_MODEL,
    *,
    tiny_model_dir: str | Path,
    revision: str | None = None,
    variant: str | None = None,
    scheduler: str = "ddim",
    device: str | None = None,
    dtype: str | None = "auto",
) -> VideoGenerator:
    """Load the base model and motion adapter (through :mod:`machining_t2v.models.loading`) into an
    ``AnimateDiffPipeline`` with the motion UNet.

    Args:
        base: ``builtin:tiny``, a diffusers folder or a hub id of an SD1.5-family model.
        motion_adapter: ``builtin:tiny``, a folder or a hub id such as
            ``guoyww/animatediff-motion-adapter-v1-5-3``.
        tiny_model_dir: where ``builtin:tiny`` is built (once) and loaded from.
        scheduler: ``ddim``, ``euler`` or ``dpm++``.
        device: ``cuda``/``cpu``; default CUDA when available.
        dtype: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``, ``bfloat16``.
    """
    from machining_t2v.diffusion.sampling import video_pipeline

    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    device = device or _default_device()
    torch_dtype = resolve_dtype(dtype, device)
    model = load_base_model(base, tiny_model_dir, revision=revision, variant=variant, torch_dtype=torch_dtype)
    adapter = load_motion_adapter(motion_adapter, tiny_model_dir, torch_dtype=torch_dtype)
    unet = build_motion_unet(model.unet, adapter)
    pipe = video_pipeline(model, unet, adapter)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    pipe.to(device)
    adapter_source = (
        str(Path(model.source) / "motion_adapter") if motion_adapter == TINY_MODEL else str(motion_adapter)
    )
    return VideoGenerator(
        pipe=pipe,
        base_source=model.source,
        base_spec=str(base),
        motion_adapter_source=adapter_source,
        scheduler=scheduler,
        max_frames=int(adapter.config.motion_max_seq_length),
        base_is_tiny=tiny_model_exists(model.source),
    )


# --------------------------------------------------------------------------- LoRA files


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
    if any(_ANIMATEDIFF_ORIGINAL_RE.search(k) for k in keys):
        return "animatediff-motionlora"
    if all(k.split(".", 1)[0] in _COMPONENT_PREFIXES for k in keys):
        return "diffusers"
    return "diffusers-unprefixed"


def _to_diffusers_dict(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """The state dict in a form ``pipe.load_lora_weights(dict)`` accepts."""
    if layout == "animatediff-motionlora":
        return {f"unet.{k}": v for k, v in from_animatediff_motion_lora(state_dict).items()}
    if layout == "diffusers-unprefixed":
        return {f"unet.{k}": v for k, v in state_dict.items()}
    return dict(state_dict)


def _canonical_layers(state_dict: Mapping[str, Tensor]) -> dict[tuple[str, str], dict[str, Tensor]]:
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
            proj = "to_out.0" if processor["proj"] == "to_out" else processor["proj"]
            module, direction = f"{processor['attn']}.{proj}", processor["dir"]
        else:
            match = _LAYER_KEY_RE.match(rest)
            if not match:
                continue
            module = match["module"]
            direction = match["du"] or match["lin"] or ("down" if match["ab"] == "A" else "up")
        layers.setdefault((component, module), {})[direction] = tensor
    return layers


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
    layers = _canonical_layers(state_dict)
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
    in_motion = [m for _, m in layers if "motion_modules" in m]
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
    import json

    info_path = weights_file.parent / "lora_info.json"
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
            converted = _to_diffusers_dict(raw, layout)
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


# --------------------------------------------------------------------------- generation


def require_text(prompt: str | None, what: str = "prompt") -> str:
    """Return the stripped prompt.

    Raises:
        ValueError: the prompt is empty or only whitespace.
    """
    text = (prompt or "").strip()
    if not text:
        raise ValueError(f"The {what} is empty: describe the process to show, "
                         "e.g. 'mtv face the steel bar on the lathe'.")
    return text


def check_prompt(prompt: str | None, tokenizer: Any, what: str = "prompt") -> str:
    """Return the stripped prompt; refuse an empty one, warn when it will be truncated.

    The text encoder reads at most ``tokenizer.model_max_length`` tokens (77 for CLIP), start
    and end tokens included; longer prompts are truncated by the pipeline and the dropped words
    are named in a warning.

    Raises:
        ValueError: the prompt is empty or only whitespace.
    """
    text = require_text(prompt, what)
    limit = int(tokenizer.model_max_length)
    # An explicit max_length keeps transformers from warning about the length itself.
    ids = tokenizer(text, truncation=False, max_length=len(text) * 8 + 16)["input_ids"]
    if len(ids) > limit:
        dropped = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True).strip()
        shown = dropped if len(dropped) <= 120 else f"{dropped[:120]}..."
        logger.warning("The %s is %d tokens long but the text encoder reads at most %d (start/end tokens "
                       "included): it is truncated, dropping %r", what, len(ids), limit, shown)
    return text


def check_num_frames(generator: VideoGenerator, num_frames: int) -> int:
    """Refuse frame counts the motion adapter cannot generate in one clip.

    Raises:
        ValueError: ``num_frames < 1`` or more than the adapter's ``motion_max_seq_length``.
    """
    num_frames = int(num_frames)
    if num_frames < 1:
        raise ValueError(f"frames must be at least 1, got {num_frames}")
    if num_frames > generator.max_frames:
        raise ValueError(f"{num_frames} frames is more than the motion adapter {generator.motion_adapter_source} "
                         f"handles: its motion_max_seq_length is {generator.max_frames}; ask for at most "
                         f"{generator.max_frames} frames (AnimateDiff adapters are trained on 16)")
    return num_frames


def check_size(generator: VideoGenerator, size: int | None) -> int:
    """The frame side in pixels: ``size`` or the base model's native size; a multiple of 8.

    Raises:
        ValueError: not a positive multiple of the VAE's scale factor (8).
    """
    factor = int(generator.pipe.vae_scale_factor)
    value = generator.default_size if size in (None, 0) else int(size)
    if value < factor or value % factor:
        raise ValueError(f"size must be a positive multiple of {factor} pixels, got {size}")
    return value


@torch.no_grad()
def generate_video(
    generator: VideoGenerator,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_frames: int = 16,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    size: int | None = None,
) -> np.ndarray:
    """Generate one clip with the currently active LoRAs; uint8 RGB frames ``(F, H, W, 3)``.

    The initial noise comes from a CPU ``torch.Generator`` seeded with ``seed``, so the same
    seed gives the same noise on any device and for every LoRA variant.

    Raises:
        ValueError: empty prompt, too many frames, bad size or step count.
    """
    prompt = check_prompt(prompt, generator.tokenizer)
    negative = negative_prompt.strip() if negative_prompt else ""
    if negative:
        check_prompt(negative, generator.tokenizer, what="negative prompt")
    num_frames = check_num_frames(generator, num_frames)
    side = check_size(generator, size)
    if int(num_inference_steps) < 1:
        raise ValueError(f"steps must be at least 1, got {num_inference_steps}")
    noise = torch.Generator("cpu").manual_seed(int(seed))
    result = generator.pipe(
        prompt=prompt,
        negative_prompt=negative or None,
        num_frames=num_frames,
        num_inference_steps=int(num_inference_steps),
        guidance_scale=float(guidance_scale),
        height=side,
        width=side,
        generator=noise,
        output_type="np",
    )
    frames = np.asarray(result.frames[0], dtype=np.float32)
    return (np.nan_to_num(frames) * 255).round().clip(0, 255).astype(np.uint8)


def save_video(frames: np.ndarray, out: str | Path, fps: float = DEFAULT_FPS) -> tuple[Path, Path]:
    """Write ``out`` as a browser-playable H.264 .mp4 and a looping .gif beside it.

    Returns:
        (mp4 path, gif path).

    Raises:
        ValueError: ``out`` has an extension other than ``.mp4`` (none gets ``.mp4``).
    """
    from machining_t2v.data.video_io import write_gif, write_h264

    out = Path(out).expanduser()
    if out.suffix == "":
        out = out.with_suffix(".mp4")
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"output {out} must end in .mp4 (an H.264 .mp4 and a .gif beside it are written)")
    mp4 = write_h264(out, frames, fps)
    gif = write_gif(out.with_suffix(".gif"), frames, fps)
    return mp4, gif


def prompt_slug(prompt: str, max_length: int = 60) -> str:
    """A file-name-safe name for a prompt: lower case words joined by ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "video"
