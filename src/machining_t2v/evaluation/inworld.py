"""In-world evaluator: small classifiers that read scene, style and motion off a clip.

The "starter world" is a base model pretrained from scratch on synthetic renders whose
labels are known. To measure what a fine-tune changed, generated clips are classified
with the same labels:

* **scene** and **style** come from a small CNN applied to
  every frame (resized and centre-cropped to 64x64); its two heads' probabilities are
  averaged over the frames of a clip.
* **motion** comes from a small MLP on optical-flow features of the clip
  (:func:`machining_t2v.evaluation.inworld_features.motion_features`): where the flow points,
  how coherent it is, how well a translation / rotation / scaling explains it, whether it
  reverses (bounce) and how large it is (static).

The label names are the evaluator's own: :meth:`InWorldEvaluator.load` reads them from its
``inworld_evaluator.json``. The evaluator is saved as safetensors plus that JSON config (never
pickle). The committed one was trained by the starter's maintainer tools (``tools/starter``),
which this product never imports; this module runs it. It must not import Kedro: notebooks
and evaluation scripts use it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from machining_t2v.evaluation.inworld_features import (
    IMAGE_SIZE,
    MOTION_FEATURES_VERSION,
    MOVING_SHARE_INDEX,
    check_clips,
    clip_flows,
    features_size,
    fit_frames,
    flow_features,
    motion_features_config,
)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "InWorldEvaluator", "accuracy"]

WEIGHTS_FILE = "inworld_evaluator.safetensors"
CONFIG_FILE = "inworld_evaluator.json"
_FORMAT = "machining_t2v.inworld_evaluator"
_FORMAT_VERSION = 1

#: A clip where fewer than this share of the pixels moves reads as static (a moving shape covers more than 4%).
_STILL_SHARE = 0.01

_PREDICT_BATCH = 256


# --------------------------------------------------------------------------- networks


class _FrameNet(nn.Module):
    """Three stride-2 conv + BatchNorm layers, global average + max pooling, scene and style heads."""

    def __init__(self, channels: Sequence[int], num_scenes: int, num_styles: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in channels:
            # BatchNorm: without it the few hundred steps we can afford leave the scene head
            # seed-dependent (grey shapes on grey backgrounds taken for milling).
            layers += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch),
                       nn.ReLU(inplace=True)]
            in_ch = ch
        self.body = nn.Sequential(*layers)
        self.scene = nn.Linear(2 * in_ch, num_scenes)
        self.style = nn.Linear(2 * in_ch, num_styles)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, 64, 64)`` from :func:`_to_tensor` -> the ``(B, 2C)`` features the heads read."""
        z = self.body(x)
        # Average pooling sees overall colour (style); max pooling keeps small telltale parts.
        return torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``(B, 3, 64, 64)`` from :func:`_to_tensor` -> (scene logits, style logits)."""
        pooled = self.pooled(x)
        return self.scene(pooled), self.style(pooled)


class _MotionNet(nn.Module):
    """A one-hidden-layer MLP on standardised motion features, with a linear skip to the output.

    The hidden layer is a fixed random projection and only the output layer is fitted, in
    closed form.
    """

    def __init__(self, num_features: int, hidden: int, num_motions: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden)
        self.out = nn.Linear(hidden + num_features, num_motions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, D)`` standardised features -> motion scores (argmax = motion)."""
        return self.out(torch.cat([torch.relu(self.hidden(x)), x], dim=1))


# RGB -> (luma, red-difference, blue-difference). The colour-difference channels are
# amplified: a shop clip of aluminium on a grey table differs from its grey version by only
# ~10/255 of chroma, which the small CNN would otherwise need many steps to pick up.
_CHROMA_GAIN = 2.0
_COLOUR_MATRIX = torch.tensor([
    [0.299, 0.587, 0.114],
    [_CHROMA_GAIN * 0.701, -_CHROMA_GAIN * 0.587, -_CHROMA_GAIN * 0.114],
    [-_CHROMA_GAIN * 0.299, -_CHROMA_GAIN * 0.587, _CHROMA_GAIN * 0.886],
]) / 127.5


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """Float RGB ``(B, 64, 64, 3)`` in 0..255 -> ``(B, 3, 64, 64)``: luma in [-1, 1], amplified chroma."""
    x = torch.from_numpy(np.asarray(frames, np.float32)) @ _COLOUR_MATRIX.T
    x[..., 0] -= 1.0
    return x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- evaluator


@dataclass
class InWorldEvaluator:
    """Scene/style frame CNN plus a motion MLP on optical-flow features.

    Build it with :meth:`load` (or the starter tools' training); :meth:`predict` labels clips.

    Attributes:
        frame_net: The frame CNN (scene and style heads).
        motion_net: The motion MLP.
        feature_mean, feature_std: Standardisation of
            :func:`~machining_t2v.evaluation.inworld_features.motion_features` vectors.
        scenes, styles, motions: Label names, in the order of the heads' outputs (read from
            the evaluator's JSON config by :meth:`load`).
        info: How it was trained (seed, epochs, clip count, seconds); saved in the config.
    """

    frame_net: _FrameNet
    motion_net: _MotionNet
    feature_mean: np.ndarray
    feature_std: np.ndarray
    scenes: tuple[str, ...]
    styles: tuple[str, ...]
    motions: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def _frame_probs(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scene and style probabilities per clip ``(N, F, 64, 64, 3)``, averaged over its frames."""
        n, f = clips.shape[:2]
        frames = clips.reshape(n * f, *clips.shape[2:])
        scene_p, style_p = [], []
        self.frame_net.eval()
        with torch.inference_mode():
            for start in range(0, len(frames), _PREDICT_BATCH):
                scene_logits, style_logits = self.frame_net(_to_tensor(frames[start:start + _PREDICT_BATCH]))
                scene_p.append(scene_logits.softmax(dim=1))
                style_p.append(style_logits.softmax(dim=1))
        scene = torch.cat(scene_p).reshape(n, f, -1).mean(dim=1).numpy()
        style = torch.cat(style_p).reshape(n, f, -1).mean(dim=1).numpy()
        return scene, style

    def _motion_logits(self, features: np.ndarray) -> np.ndarray:
        """Motion logits for a ``(N, D)`` feature matrix."""
        x = torch.from_numpy((features - self.feature_mean) / self.feature_std).float()
        self.motion_net.eval()
        with torch.inference_mode():
            return self.motion_net(x).numpy()

    def predict(self, clips: np.ndarray) -> list[dict[str, str]]:
        """Label clips: uint8 ``(N, F, H, W, 3)`` RGB -> ``[{"scene", "style", "motion"}]`` per clip.

        Frames of any size are resized (shorter side) and centre-cropped to 64x64. Clips
        need at least 2 frames. Flow magnitudes depend on the frame stride, so sample
        generated clips like the training renders (same frame count over the motion).
        """
        clips = check_clips(clips)
        if len(clips) == 0:
            return []
        fitted = np.stack([fit_frames(c) for c in clips])
        scene_p, style_p = self._frame_probs(fitted)
        features = np.stack([flow_features(clip_flows(c)) for c in fitted])
        motions = [self.motions[int(m.argmax())] for m in self._motion_logits(features)]
        if "static" in self.motions:
            # Hardly a pixel moves faster than the flow threshold (Farneback finds a little flow even
            # between identical frames): nothing to classify, the clip stands still.
            motions = ["static" if share < _STILL_SHARE else m
                       for m, share in zip(motions, features[:, MOVING_SHARE_INDEX], strict=True)]
        return [
            {"scene": self.scenes[int(s.argmax())], "style": self.styles[int(t.argmax())], "motion": m}
            for s, t, m in zip(scene_p, style_p, motions, strict=True)
        ]

    def _config(self) -> dict[str, Any]:
        """The JSON config written next to the weights."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "scenes": list(self.scenes),
            "styles": list(self.styles),
            "motions": list(self.motions),
            "image_size": IMAGE_SIZE,
            "frame_channels": [m.out_channels for m in self.frame_net.body if isinstance(m, nn.Conv2d)],
            "motion_hidden": self.motion_net.hidden.out_features,
            "motion_features": motion_features_config(len(self.feature_mean)),
            "training": self.info,
        }

    def save(self, folder: str | Path) -> None:
        """Write ``inworld_evaluator.safetensors`` and ``inworld_evaluator.json`` into ``folder``.

        The folder is created if needed; each file is written to a temporary name and
        renamed, so a reader never sees a half-written evaluator. Nothing is pickled.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"frame.{k}": t for k, t in self.frame_net.state_dict().items()}
        tensors |= {f"motion.{k}": t for k, t in self.motion_net.state_dict().items()}
        tensors["feature_mean"] = torch.from_numpy(np.asarray(self.feature_mean, np.float32))
        tensors["feature_std"] = torch.from_numpy(np.asarray(self.feature_std, np.float32))
        tensors = {k: t.detach().contiguous().clone() for k, t in tensors.items()}
        _write_atomic(folder / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        text = json.dumps(self._config(), indent=2)
        _write_atomic(folder / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, folder: str | Path) -> InWorldEvaluator:
        """Read an evaluator written by :meth:`save` (safetensors only).

        Raises:
            FileNotFoundError: ``folder`` or one of its two files is missing.
            ValueError: the config or weights are not a (compatible) in-world evaluator.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"in-world evaluator folder {folder} does not exist")
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"in-world evaluator folder {folder} has no {path.name} "
                    f"(expected {CONFIG_FILE} and {WEIGHTS_FILE}, written by InWorldEvaluator.save)"
                )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{config_path} is not readable JSON: {exc}") from exc
        _check_config(config, folder)
        try:
            tensors = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{weights_path} is not a readable safetensors file: {exc}") from exc

        scenes, styles, motions = (tuple(config[k]) for k in ("scenes", "styles", "motions"))
        features = config["motion_features"]["size"]
        frame_net = _FrameNet(config["frame_channels"], len(scenes), len(styles))
        motion_net = _MotionNet(features, config["motion_hidden"], len(motions))
        try:
            frame_net.load_state_dict(_strip(tensors, "frame."), strict=True)
            motion_net.load_state_dict(_strip(tensors, "motion."), strict=True)
            mean, std = tensors["feature_mean"].numpy(), tensors["feature_std"].numpy()
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"weights in {weights_path} do not match its config: {exc}") from exc
        if mean.shape != (features,) or std.shape != (features,):
            raise ValueError(f"weights in {weights_path}: feature statistics have shape {mean.shape}, "
                             f"config says {features} features")
        return cls(frame_net, motion_net, mean, std, scenes, styles, motions, dict(config.get("training", {})))


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}


def _check_config(config: Any, folder: Path) -> None:
    """Raise ``ValueError`` naming ``folder`` unless ``config`` is a compatible evaluator config."""
    where = f"{folder / CONFIG_FILE}"
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise ValueError(f"{where} is not an in-world evaluator config (format must be {_FORMAT!r})")
    if config.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{where} has version {config.get('version')!r}; this code reads version "
                         f"{_FORMAT_VERSION}: retrain the evaluator")
    missing = [k for k in ("scenes", "styles", "motions", "image_size", "frame_channels",
                           "motion_hidden", "motion_features") if k not in config]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    if config["image_size"] != IMAGE_SIZE:
        raise ValueError(f"{where} has image_size {config['image_size']}; this code uses {IMAGE_SIZE}")
    feats = config["motion_features"]
    if not isinstance(feats, dict) or feats.get("version") != MOTION_FEATURES_VERSION:
        got = feats.get("version") if isinstance(feats, dict) else feats
        raise ValueError(f"{where} was trained on motion features version {got!r}; this code computes "
                         f"version {MOTION_FEATURES_VERSION}: retrain the evaluator")
    if feats.get("size") != features_size():
        raise ValueError(f"{where} expects {feats.get('size')} motion features; this code computes "
                         f"{features_size()}: retrain the evaluator")


def _write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the files from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def accuracy(predictions: Sequence[Mapping[str, str]], expected: Sequence[Mapping[str, str | None]],
             key: str) -> float:
    """Share (0..1) of rows whose ``predictions[i][key] == expected[i][key]``.

    Rows where ``expected[i][key]`` is ``None`` (or absent) are ignored; ``NaN`` if no row is left.
    """
    if len(predictions) != len(expected):
        raise ValueError(f"got {len(predictions)} predictions but {len(expected)} expected rows")
    hits = [p.get(key) == e[key] for p, e in zip(predictions, expected, strict=True) if e.get(key) is not None]
    return float(np.mean(hits)) if hits else float("nan")
