"""CLIP-based video metrics: CLIP-T (text-frame alignment) and CLIP-F (frame-to-frame consistency).

A :class:`ClipScorer` wraps a transformers ``CLIPModel`` with its tokenizer and image processor.
It comes from a Hugging Face Hub id (e.g. ``openai/clip-vit-base-patch32``), a local folder, or
:data:`STANDIN_CLIP`: a tiny CLIP built offline from a config with **random weights** (no model
can be downloaded here). The stand-in goes through the same ``from_pretrained`` path as a real
model, so the code is exercised end to end, but its scores measure nothing about quality;
reports must say so (:attr:`ClipScorer.label`).

This module must not import Kedro: it also runs in notebooks and evaluation scripts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
)

from machining_t2v.fixtures.standin_clip import (
    STANDIN_MARKER,
    STANDIN_NOTE,
    build_standin_clip,
    standin_clip_exists,
)
from machining_t2v.models.published_folders import read_marker
from machining_t2v.models.sources import looks_like_path

logger = logging.getLogger(__name__)

STANDIN_CLIP = "builtin:standin-clip"
"""Spec meaning "the built-in random-weight stand-in CLIP" wherever a CLIP id or folder is accepted."""


# Frames per forward pass: bounds memory for long clips on a real ViT-B/L.
_IMAGE_BATCH = 32


@dataclass
class ClipScorer:
    """A CLIP model with its tokenizer and image processor.

    Attributes:
        model: the ``CLIPModel`` (eval mode).
        tokenizer: its ``CLIPTokenizer``.
        image_processor: its ``CLIPImageProcessorPil`` (PIL backend: torchvision is not usable).
        source: what it was loaded from (hub id, folder, or :data:`STANDIN_CLIP`).
        is_standin: True for the random-weight stand-in, whose scores mean nothing.
    """

    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_processor: CLIPImageProcessorPil
    source: str
    is_standin: bool

    @property
    def label(self) -> str:
        """How a report should name this scorer (states the stand-in caveat when it applies)."""
        return f"{self.source} ({STANDIN_NOTE})" if self.is_standin else self.source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """L2-normalised CLIP image embeddings ``(T, D)`` (float32, CPU) of uint8 RGB frames
        ``(T, H, W, 3)`` (or one frame ``(H, W, 3)``), preprocessed by :attr:`image_processor`."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(frames), _IMAGE_BATCH):
                batch = list(frames[start : start + _IMAGE_BATCH])
                pixels = self.image_processor(
                    images=batch, return_tensors="pt", input_data_format="channels_last"
                )["pixel_values"]
                chunks.append(
                    _features(
                        self.model.get_image_features(
                            pixel_values=pixels.to(self.device, self.model.dtype)
                        )
                    )
                )
        return _normalise(torch.cat(chunks))

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised CLIP text embeddings ``(N, D)`` (float32, CPU); prompts are truncated
        to the tokenizer's maximum length (77 tokens for CLIP)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        return _normalise(_features(out))


def _features(out: torch.Tensor | object) -> torch.Tensor:
    # transformers v5 returns a BaseModelOutputWithPooling whose pooler_output holds the
    # projected embedding; v4 returned the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().float().cpu(), dim=-1)


# --------------------------------------------------------------------------- loading


_CLIP_FOLDER_LAYOUT = (
    "expected a transformers CLIPModel folder with config.json (model_type clip), safetensors weights, "
    "tokenizer files (tokenizer.json or vocab.json + merges.txt) and preprocessor_config.json"
)
_CLIP_HELP = (
    "Set evaluation.clip_model to a local CLIP folder, a hub id that is reachable or already in the "
    f"Hugging Face cache (e.g. openai/clip-vit-base-patch32), or {STANDIN_CLIP} for the random-weight "
    "stand-in (its scores mean nothing)"
)


def _clip_folder_problems(folder: Path) -> list[str]:
    problems = []
    config_file = folder / "config.json"
    if not config_file.is_file():
        problems.append("no config.json")
    else:
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as error:
            model_type = f"unreadable ({error})"
        if model_type != "clip":
            problems.append(f"config.json has model_type {model_type!r}, not 'clip'")
    if not any(next(folder.glob(p), None) for p in ("*.safetensors", "*.safetensors.index.json")):
        problems.append("no safetensors weights")
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        problems.append("no tokenizer files")
    if not (folder / "preprocessor_config.json").is_file():
        problems.append("no preprocessor_config.json")
    return problems


def _resolve_clip(spec: str) -> tuple[str, bool]:
    """(name to load, is_local) for a CLIP spec other than the stand-in; checks a local folder's layout."""
    path = Path(spec).expanduser()
    if path.exists():
        problems = _clip_folder_problems(path) if path.is_dir() else ["not a folder"]
        if problems:
            raise ValueError(f"CLIP model {spec} cannot be loaded: {'; '.join(problems)} ({_CLIP_FOLDER_LAYOUT}). "
                             f"{_CLIP_HELP}.")
        return str(path), True
    if looks_like_path(spec):
        raise FileNotFoundError(f"CLIP model folder not found: {spec}. {_CLIP_HELP}.")
    return spec, False


def _check_clip_hub(repo_id: str) -> None:
    """Fetch the config first, so a wrong id or no network fails once, naming the id, instead of
    after per-file retries."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, "config.json")
    except Exception as error:
        raise OSError(f"could not load CLIP model '{repo_id}' from the Hugging Face Hub (fetching config.json): "
                      f"{str(error).rstrip('.')}. {_CLIP_HELP}.") from error


def check_clip_source(spec: str) -> str:
    """Check, without loading weights, that the CLIP of ``evaluation.clip_model`` can be found.

    The stand-in is always fine (it is built when first loaded); a folder must hold a whole CLIP
    (config, safetensors weights, tokenizer, image processor); a hub id must answer for its
    config.json (or have it in the local cache).

    Returns:
        A line saying what was found, for the log.

    Raises:
        FileNotFoundError, ValueError, OSError: the CLIP cannot be loaded; the message names it.
    """
    if spec == STANDIN_CLIP:
        return f"CLIP {STANDIN_CLIP} (built when first loaded; its scores mean nothing)"
    name, is_local = _resolve_clip(spec)
    if is_local:
        return f"CLIP folder {name}"
    _check_clip_hub(name)
    return f"CLIP {name} on the Hugging Face Hub (or its local cache)"


def load_clip_scorer(spec: str, standin_dir: str | Path | None = None) -> ClipScorer:
    """Load a CLIP scorer.

    Args:
        spec: :data:`STANDIN_CLIP` (built into ``standin_dir`` if missing, then loaded from it),
            a local folder in transformers format, or a Hub id such as
            ``openai/clip-vit-base-patch32``. Weights are loaded with ``use_safetensors=True``;
            remote code is never trusted.
        standin_dir: where the stand-in lives; required only for :data:`STANDIN_CLIP`.

    A CLIP that is named but cannot be loaded is an error naming it: never a silent fall-back
    to the stand-in, and never a model whose weights only partly come from the checkpoint.

    Raises:
        FileNotFoundError: ``spec`` looks like a local path that does not exist (names it).
        ValueError: :data:`STANDIN_CLIP` without ``standin_dir``; a folder that is not a whole
            CLIP, or whose weights do not cover the model (names it).
        OSError: a hub id that could not be loaded (names it).
    """
    if spec == STANDIN_CLIP:
        if standin_dir is None:
            raise ValueError(f"{STANDIN_CLIP} needs standin_dir (where to build/keep it)")
        folder = Path(standin_dir).expanduser()
        # Any seed's stand-in is reused as is; only a missing or out-of-date one is built.
        if not standin_clip_exists(folder):
            build_standin_clip(folder)
        name, source, is_local = str(folder), STANDIN_CLIP, True
    else:
        name, is_local = _resolve_clip(spec)
        source = name
        if not is_local:
            _check_clip_hub(name)
    try:
        model, loading = CLIPModel.from_pretrained(name, use_safetensors=True, output_loading_info=True)
        tokenizer = CLIPTokenizer.from_pretrained(name)
        image_processor = CLIPImageProcessorPil.from_pretrained(name)
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
        raise OSError(f"could not load CLIP model '{spec}': {reason}. {_CLIP_HELP}.") from error
    missing = list(loading.get("missing_keys") or [])
    if missing:
        raise ValueError(f"CLIP model {spec} cannot be loaded: its weights lack {len(missing)} of the model's "
                         f"tensors (e.g. {', '.join(missing[:3])}); it is not a whole CLIP. {_CLIP_HELP}.")
    model.eval()
    # A stand-in reached through its folder path is still a stand-in.
    is_standin = spec == STANDIN_CLIP or read_marker(Path(name), STANDIN_MARKER) is not None
    if is_standin:
        logger.warning("Using %s; CLIP-T/CLIP-F %s", source, STANDIN_NOTE)
    return ClipScorer(model, tokenizer, image_processor, source=source, is_standin=is_standin)


# --------------------------------------------------------------------------- metrics


def _renormalise(x: torch.Tensor) -> torch.Tensor:
    # float32 unit vectors have norms 1 +- 1e-7; redoing it in float64 makes the cosine of
    # identical frames 1.0 to ~1e-15.
    return torch.nn.functional.normalize(x.double(), dim=-1)


def clip_t(scorer: ClipScorer, frames: np.ndarray, prompt: str | Sequence[str]) -> float:
    """CLIP-T: ``100 * mean over frames (and prompts) of max(cos(text, frame), 0)``.

    ``cos`` is the cosine between the L2-normalised CLIP text embedding of the prompt and
    image embedding of a frame. Several prompts: the mean runs over all (prompt, frame) pairs.
    In [0, 100]; higher = frames match the text better (only with a real CLIP).
    """
    text = _renormalise(
        scorer.text_embeddings([prompt] if isinstance(prompt, str) else list(prompt))
    )
    images = _renormalise(scorer.image_embeddings(frames))
    cosine = images @ text.T
    return float(100.0 * cosine.clamp(min=0).mean())


def clip_f(scorer: ClipScorer, frames: np.ndarray) -> float:
    """CLIP-F: mean cosine between the CLIP image embeddings of consecutive frames.

    In [-1, 1]; 1.0 for identical frames. Needs at least 2 frames.
    """
    images = _renormalise(scorer.image_embeddings(frames))
    if images.shape[0] < 2:
        raise ValueError(f"clip_f needs at least 2 frames, got {images.shape[0]}")
    return float((images[:-1] * images[1:]).sum(dim=-1).mean())
