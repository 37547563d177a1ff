"""Kedro datasets for what the stock kedro-datasets do not cover.

- ``VideoFolderDataset``: a folder of process videos with their caption sidecars and
  ``metadata.csv``; loading lists the files (decoding happens in the nodes, one video at a
  time), saving writes rendered sample videos but never into a folder that already holds videos.
- ``ClipStripDataset``: one training clip (F, H, W, 3) stored as a lossless PNG film strip, so
  a user can open the clips the motion LoRA trains on in any image viewer.
- ``ChunkedPartitionedDataset``: a ``PartitionedDataset`` that a generator node saves chunk by
  chunk (the frames pipeline writes stills and clips as they are extracted).
- ``LoraFolderDataset``, ``EmbeddingDataset``: a trained LoRA in every export format, and a
  textual-inversion embedding (the model card beside a LoRA: :mod:`~machining_t2v.kedro_glue.card_datasets`).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.partitions import PartitionedDataset

from machining_t2v.data.video_io import VIDEO_EXTENSIONS, write_video
from machining_t2v.lora.files import (
    ANIMATEDIFF_MOTION_LORA_FILENAME,
    DIFFUSERS_LORA_FILENAME,
    EMBEDDING_INFO_FILENAME,
    KOHYA_IMAGE_LORA_FILENAME,
    LORA_FILES,
    LORA_INFO_FILENAME,
)

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class RawVideo:
    """One video of the raw folder: its name relative to the folder, full path and sidecar caption."""

    name: str  # posix path relative to the folder, e.g. "milling/pocket_01.mp4"
    path: Path
    sidecar_caption: str | None = None


@dataclass
class RawVideoFolder:
    """The raw video folder as the pipelines see it."""

    root: Path
    videos: list[RawVideo]
    metadata: list[dict[str, str]] = field(default_factory=list)  # rows of metadata.csv, if any

    def metadata_for(self, video: RawVideo) -> dict[str, str] | None:
        """The metadata.csv row whose ``file`` column names this video (full relative name or file name)."""
        for row in self.metadata:
            listed = (row.get("file") or "").strip()
            if listed and (listed == video.name or listed == PurePosixPath(video.name).name):
                return row
        return None


@dataclass(frozen=True)
class SampleVideo:
    """A rendered video to be written into the raw folder, with the metadata row that describes it."""

    frames: np.ndarray  # uint8 RGB (T, H, W, 3)
    fps: float
    metadata: dict[str, str]  # written to metadata.csv; must contain "file"


class VideoFolderDataset(AbstractDataset[RawVideoFolder, dict[str, Callable[[], SampleVideo]]]):
    """A folder of videos (searched recursively) plus optional ``.txt`` sidecars and ``metadata.csv``."""

    def __init__(self, path: str, extensions: list[str] | None = None, metadata: dict[str, Any] | None = None):
        self._root = Path(path)
        self._extensions = tuple(e.lower() for e in (extensions or VIDEO_EXTENSIONS))
        self.metadata = metadata

    def _video_paths(self) -> list[Path]:
        if not self._root.is_dir():
            return []
        # Hidden files and folders (.ipynb_checkpoints, half-written .tmp files) are not videos of the user's.
        return sorted(
            p for p in self._root.rglob("*")
            if p.is_file() and p.suffix.lower() in self._extensions
            and not any(part.startswith(".") for part in p.relative_to(self._root).parts)
        )  # fmt: skip

    def _load(self) -> RawVideoFolder:
        if not self._root.is_dir():
            raise DatasetError(f"Video folder {self._root} does not exist; put your videos there or run "
                               "`kedro run --pipelines=sample_data` to render the built-in samples.")
        videos = []
        for path in self._video_paths():
            sidecar = path.with_suffix(".txt")
            caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
            videos.append(RawVideo(path.relative_to(self._root).as_posix(), path, caption or None))
        metadata_path = self._root / METADATA_FILE
        rows: list[dict[str, str]] = []
        if metadata_path.is_file():
            with metadata_path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or "file" not in reader.fieldnames:
                    raise DatasetError(f"{metadata_path}: needs a 'file' column, found {reader.fieldnames}")
                rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        return RawVideoFolder(root=self._root, videos=videos, metadata=rows)

    def _save(self, data: dict[str, Callable[[], SampleVideo]]) -> None:
        """Write rendered videos, unless the folder already holds videos (those are never touched)."""
        existing = self._video_paths()
        if existing:
            logger.info("%s already holds %d video(s); sample videos not rendered.", self._root, len(existing))
            return
        self._root.mkdir(parents=True, exist_ok=True)
        rows = []
        for name, render in data.items():
            target = self._root / name
            # Names come from the renderer, but a folder dataset must never write outside its folder.
            if not target.resolve().is_relative_to(self._root.resolve()):
                raise DatasetError(f"Refusing to write {name!r}: it points outside {self._root}")
            video = render() if callable(render) else render
            write_video(target, video.frames, video.fps)
            rows.append(video.metadata)
        if rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            tmp = self._root / f".{METADATA_FILE}.tmp-{os.getpid()}"
            with tmp.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self._root / METADATA_FILE)
        logger.info("Wrote %d sample videos and %s to %s", len(rows), METADATA_FILE, self._root)

    def _exists(self) -> bool:
        return bool(self._video_paths())

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._root), "extensions": list(self._extensions)}


class ClipStripDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """A clip of square frames (F, S, S, 3) stored as one PNG of F frames side by side."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self._filepath) as image:
            strip = np.asarray(image.convert("RGB"))
        size, width = strip.shape[0], strip.shape[1]
        if width % size:
            raise DatasetError(f"{self._filepath}: width {width} is not a multiple of the frame size {size}")
        return np.ascontiguousarray(strip.reshape(size, width // size, size, 3).transpose(1, 0, 2, 3))

    def _save(self, data: np.ndarray) -> None:
        from PIL import Image

        if data.ndim != 4 or data.shape[1] != data.shape[2] or data.shape[3] != 3:
            raise DatasetError(f"{self._filepath}: expected square RGB frames (F, S, S, 3), got {data.shape}")
        strip = data.transpose(1, 0, 2, 3).reshape(data.shape[1], -1, 3)
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._filepath.with_name(f".{self._filepath.name}.tmp-{os.getpid()}")
        Image.fromarray(np.ascontiguousarray(strip.astype(np.uint8))).save(tmp, format="PNG")
        os.replace(tmp, self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class ChunkedPartitionedDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` that a generator node can save in chunks.

    Kedro saves every chunk a generator node yields with a ``save`` call of its own. A plain
    ``PartitionedDataset`` with ``overwrite: true`` would delete the earlier chunks at each call;
    this one empties the folder at its first save only and adds the partitions of every later
    save, so a run still replaces the previous run's partitions. Kedro builds the catalog, hence
    this dataset, anew for each run. Loading and the other options are ``PartitionedDataset``'s.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._saved_before = False

    def save(self, data: dict[str, Any]) -> None:
        overwrite = self._overwrite
        self._overwrite = overwrite and not self._saved_before
        try:
            super().save(data)
        finally:
            self._overwrite = overwrite
        self._saved_before = True


@dataclass
class TrainedLora:
    """A trained UNet LoRA as the training nodes hand it to the catalog.

    ``state_dict`` has peft keys (``...attn1.to_q.lora_A.weight``); ``lora_config`` is the
    peft ``LoraConfig`` as a dict; ``kind`` is "image" or "motion". After loading from disk,
    ``path`` is the folder, which ``pipe.load_lora_weights(path)`` accepts.
    """

    state_dict: dict[str, Any]
    lora_config: dict[str, Any]
    kind: str
    info: dict[str, Any] = field(default_factory=dict)  # base model, steps, ... (written to lora_info.json)
    path: Path | None = None


class NotTrained:
    """What a training node returns for an output of a method it did not run this time."""

    def __repr__(self) -> str:
        return "NOT_TRAINED"


NOT_TRAINED = NotTrained()
"""Saved to a :class:`LoraFolderDataset` or :class:`EmbeddingDataset`, it leaves what is on disk as it is,
so the result of each ``image_ft.method`` stays for the evaluation to compare."""


@dataclass
class TrainedEmbedding:
    """A textual-inversion token and its learned (D,) embedding, as the training node hands it to the catalog.

    ``replaces`` is the caption word the token stands in for (the trigger), which :meth:`prompt`
    swaps for the token. After loading, ``path`` is the diffusers-format file, which
    ``pipe.load_textual_inversion(path, token=token)`` accepts.
    """

    token: str
    vector: Any
    replaces: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def prompt(self, text: str) -> str:
        """``text`` with the token in place of the trigger word (or in front)."""
        from machining_t2v.training.textual_inversion import with_placeholder

        return with_placeholder(text, self.replaces, self.token)


class LoraFolderDataset(AbstractDataset[TrainedLora, TrainedLora | None]):
    """A LoRA folder in every format a user's tool may want.

    - ``pytorch_lora_weights.safetensors``: diffusers format (``pipe.load_lora_weights``), with
      the adapter config in its metadata so ``lora_alpha`` survives the reload;
    - ``image_lora_kohya.safetensors`` (image LoRA): kohya / A1111 / ComfyUI layout;
    - ``motion_lora_animatediff.safetensors`` (motion LoRA): original AnimateDiff MotionLoRA layout;
    - ``lora_info.json``: kind, LoRA config and what produced it.

    With ``allow_missing: true`` loading a folder that holds no LoRA gives ``None`` (a
    consumer such as motion_ft then goes on without it). Saving a LoRA with no weights (what
    motion_ft returns for the spatial LoRA outside dual mode) clears the folder, so no stale
    LoRA from an earlier run is left to be mistaken for this run's.
    """

    def __init__(self, path: str, kind: str, allow_missing: bool = False, metadata: dict[str, Any] | None = None):
        if kind not in ("image", "motion"):
            raise DatasetError(f"LoraFolderDataset kind must be 'image' or 'motion', got {kind!r}")
        self._path = Path(path)
        self._kind = kind
        self._allow_missing = allow_missing
        self.metadata = metadata

    def _save(self, data: TrainedLora | NotTrained) -> None:
        import json

        from machining_t2v.lora import formats

        if isinstance(data, NotTrained):
            logger.info("No %s LoRA of this folder's method trained in this run; %s left as it is", self._kind,
                        self._path)
            return
        if not data.state_dict:
            stale = [self._path / name for name in LORA_FILES if (self._path / name).is_file()]
            for path in stale:
                path.unlink()
            logger.info("No %s LoRA trained in this run; %s cleared of %d old files", self._kind, self._path, len(stale))
            return
        if data.kind != self._kind:
            raise DatasetError(f"{self._path} holds a {self._kind} LoRA, got a {data.kind} LoRA")
        from peft import LoraConfig

        config = LoraConfig(**{k: v for k, v in data.lora_config.items() if k in LoraConfig.__dataclass_fields__})
        formats.save_diffusers_lora(data.state_dict, config, self._path, kind=self._kind)
        alpha = float(data.lora_config["lora_alpha"])
        if self._kind == "image":
            formats.save_safetensors_atomic(
                formats.to_kohya(data.state_dict, alpha), self._path / KOHYA_IMAGE_LORA_FILENAME,
                metadata=formats.kohya_metadata(rank=int(data.lora_config["r"]), alpha=alpha),
            )  # fmt: skip
        else:
            formats.save_safetensors_atomic(
                formats.to_animatediff_motion_lora(data.state_dict, alpha),
                self._path / ANIMATEDIFF_MOTION_LORA_FILENAME,
            )
        config_dict = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
        info = {"kind": self._kind, "lora_config": config_dict, **data.info}
        tmp = self._path / f".{LORA_INFO_FILENAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self._path / LORA_INFO_FILENAME)

    def _load(self) -> TrainedLora | None:
        import json

        from safetensors.torch import load_file


        weights = self._path / DIFFUSERS_LORA_FILENAME
        info_path = self._path / LORA_INFO_FILENAME
        if self._allow_missing and not info_path.is_file():
            return None
        if not weights.is_file() or not info_path.is_file():
            raise DatasetError(f"{self._path}: no trained {self._kind} LoRA here (expected "
                               f"{DIFFUSERS_LORA_FILENAME} and {LORA_INFO_FILENAME}); run the {self._kind}_ft pipeline")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        state_dict = {key.removeprefix("unet."): value for key, value in load_file(weights).items()}
        return TrainedLora(state_dict=state_dict, lora_config=info.pop("lora_config"), kind=info.pop("kind"),
                           info=info, path=self._path)

    def _exists(self) -> bool:
        return (self._path / LORA_INFO_FILENAME).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "kind": self._kind}


class EmbeddingDataset(AbstractDataset[TrainedEmbedding, TrainedEmbedding | None]):
    """A textual-inversion embedding folder: ``learned_embeds.safetensors`` (diffusers), ``<token>.safetensors``
    (A1111, ``{"emb_params": ...}``) and ``embedding_info.json`` (token, the word it replaces, what made it).

    Loading a folder without an embedding gives ``None`` (nothing was trained with textual inversion).
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def _save(self, data: TrainedEmbedding | NotTrained) -> None:
        import json

        from machining_t2v.training.textual_inversion import save_embedding

        if isinstance(data, NotTrained):
            return
        files = save_embedding(data.token, data.vector, self._path, data.info.get("steps"))
        info = {"token": data.token, "replaces": data.replaces, "files": {k: p.name for k, p in files.items()},
                **data.info}
        tmp = self._path / f".{EMBEDDING_INFO_FILENAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self._path / EMBEDDING_INFO_FILENAME)

    def _load(self) -> TrainedEmbedding | None:
        import json

        from machining_t2v.training.textual_inversion import DIFFUSERS_FILENAME, load_embedding

        info_path = self._path / EMBEDDING_INFO_FILENAME
        if not info_path.is_file():
            return None
        info = json.loads(info_path.read_text(encoding="utf-8"))
        token, vector = load_embedding(self._path / DIFFUSERS_FILENAME)
        replaces = info.pop("replaces", None)
        info.pop("token", None)
        return TrainedEmbedding(token=token, vector=vector, replaces=replaces, info=info,
                                path=self._path / DIFFUSERS_FILENAME)

    def _exists(self) -> bool:
        return (self._path / EMBEDDING_INFO_FILENAME).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class VideoSamplesDataset(AbstractDataset[dict[str, np.ndarray], dict[str, Path]]):
    """Sample videos, each written as a looping GIF and a browser-playable H.264 .mp4.

    Saving takes ``{name: uint8 frames (T, H, W, 3)}`` and replaces the folder's previous
    samples; loading gives ``{name: path of the .mp4}``.
    """

    def __init__(self, path: str, fps: float = 8.0, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._fps = fps
        self.metadata = metadata

    def _save(self, data: dict[str, np.ndarray]) -> None:
        from machining_t2v.data.video_io import write_gif, write_h264

        self._path.mkdir(parents=True, exist_ok=True)
        for old in [*self._path.glob("*.gif"), *self._path.glob("*.mp4")]:
            old.unlink()
        for name, frames in data.items():
            if "/" in name or name.startswith("."):
                raise DatasetError(f"Sample video name {name!r} must be a plain file name")
            write_gif(self._path / f"{name}.gif", frames, self._fps)
            write_h264(self._path / f"{name}.mp4", frames, self._fps)

    def _load(self) -> dict[str, Path]:
        return {path.stem: path for path in sorted(self._path.glob("*.mp4"))}

    def _exists(self) -> bool:
        return any(self._path.glob("*.mp4"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "fps": self._fps}
