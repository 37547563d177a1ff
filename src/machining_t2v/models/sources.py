"""Where a base model or motion adapter comes from, checked without loading any weights.

A spec is ``builtin:tiny`` (the random tiny model, :mod:`machining_t2v.fixtures.tiny_model`), a
local diffusers folder, or a Hugging Face hub id. :func:`check_model_sources` runs before a run's
first node (hook ``ModelSourceCheck``), so a wrong id fails in seconds. Imports neither torch nor
diffusers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_MODEL = "builtin:tiny"
"""Spec string meaning "the built-in tiny model" wherever a checkpoint id or folder is accepted."""

_DIFFUSERS_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
EXPECTED_LAYOUT = (
    "expected a diffusers folder with model_index.json and unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/"
)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


_REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)


def missing_diffusers_parts(folder: Path) -> list[str]:
    return [part for part in _REQUIRED_FILES if not (folder / part).exists()]


def is_diffusers_folder(folder: Path) -> bool:
    return not missing_diffusers_parts(folder)


def looks_like_path(spec: str) -> bool:
    """True for a spec meant as a folder (``/``, ``.``, ``~`` or a path that is no hub id)."""
    if spec.startswith(("/", ".", "~")):
        return True
    return os.sep in spec and not _HUB_ID_RE.match(spec)


def resolve_source(spec: str, *, what: str) -> tuple[str, bool]:
    """Return (spec to pass to from_pretrained, is_local) or raise for a missing path."""
    path = Path(spec).expanduser()
    if path.exists():
        return str(path), True
    if looks_like_path(spec):
        raise FileNotFoundError(f"{what} folder not found: {spec}")
    return spec, False


def check_hub(repo_id: str, filename: str, revision: str | None, what: str) -> None:
    """Fetch one small file first so a wrong id or a missing network fails once, naming the
    id, instead of after minutes of per-file retries (and before transformers silently
    falls back to an empty tokenizer)."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, filename, revision=revision)
    except Exception as exc:
        raise OSError(
            f"could not load {what} '{repo_id}' from the Hugging Face Hub "
            f"(fetching {filename}): {exc}"
        ) from exc


_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


def _has_safetensors(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def check_model_sources(base_model: dict[str, Any]) -> list[str]:
    """Check that the base model and the motion adapter of ``base_model`` parameters can be found.

    Cheap and without loading any weights, so a run can fail in seconds before it prepares any
    data: a local folder must have the diffusers layout (and safetensors weights in the parts
    that carry weights); a hub id must answer for one small file (``model_index.json`` /
    ``config.json``), fetched as :func:`load_base_model` and :func:`load_motion_adapter` do
    first. ``builtin:tiny`` is always fine (it is built when first loaded).

    Args:
        base_model: the ``base_model`` parameters (``pretrained``, ``motion_adapter``, and
            optionally ``revision``).

    Returns:
        One line per source saying what was found, for the log.

    Raises:
        FileNotFoundError: a path-like id that does not exist (as the loaders raise it).
        ValueError: a folder without the expected layout or weights, naming it.
        OSError: a hub id that could not be reached, naming it.
    """
    revision = base_model.get("revision")
    return [_check_source(str(base_model["pretrained"]), "base model", "model_index.json", _base_model_problem, revision),
            _check_source(str(base_model["motion_adapter"]), "motion adapter", "config.json", _adapter_problem, revision)]


def _check_source(spec: str, what: str, hub_file: str, folder_problem: Callable[[Path], str | None],
                  revision: str | None) -> str:
    """What was found for one source, or the error a loader would raise for it."""
    if spec == TINY_MODEL:
        return f"{what} {TINY_MODEL} (built when first loaded)"
    location, is_local = resolve_source(spec, what=what)
    if not is_local:
        check_hub(location, hub_file, revision, what)
        return f"{what} {location} on the Hugging Face Hub (or its local cache)"
    problem = folder_problem(Path(location))
    if problem:
        raise ValueError(f"{location}: {problem}")
    return f"{what} folder {location}"


def _base_model_problem(folder: Path) -> str | None:
    missing = missing_diffusers_parts(folder)
    if missing:
        return f"{EXPECTED_LAYOUT} (missing: {', '.join(missing)})"
    unweighted = [part for part in ("unet", "vae", "text_encoder") if not _has_safetensors(folder / part)]
    if unweighted:
        return f"no safetensors weights in {', '.join(p + '/' for p in unweighted)} (only safetensors are loaded)"
    return None


def _adapter_problem(folder: Path) -> str | None:
    if not (folder / "config.json").is_file():
        return "expected a diffusers MotionAdapter folder with config.json"
    if not _has_safetensors(folder):
        return "no safetensors weights in the motion adapter folder (only safetensors are loaded)"
    return None
