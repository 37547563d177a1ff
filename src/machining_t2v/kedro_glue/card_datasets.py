"""The Kedro dataset of a LoRA's model card: ``README.md``, ``sample.gif`` and the ComfyUI workflow,
written into the LoRA's folder beside the files the LoRA's own dataset writes
(:class:`~machining_t2v.kedro_glue.datasets.LoraFolderDataset`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

if TYPE_CHECKING:
    from machining_t2v.publishing.model_card import ModelCard


class ModelCardDataset(AbstractDataset["ModelCard", "ModelCard"]):
    """The model card beside a LoRA (:class:`machining_t2v.publishing.model_card.ModelCard`):
    ``README.md``, ``sample.gif`` and, when the card has one, ``comfyui_workflow.json``.

    Saving an empty card (no LoRA) or a card without a sample or workflow removes those files, so
    no card from an earlier run describes a LoRA that is no longer there. Loading reads them back
    (the sample as its frames).
    """

    def __init__(self, path: str, fps: float = 8.0, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._fps = fps
        self.metadata = metadata

    def _save(self, data: ModelCard) -> None:
        import json

        from machining_t2v.data.video_io import write_gif
        from machining_t2v.publishing.model_card import README_FILE, SAMPLE_FILE, WORKFLOW_FILE

        wanted = {README_FILE: bool(data.readme), SAMPLE_FILE: data.readme and data.sample is not None,
                  WORKFLOW_FILE: data.readme and data.workflow is not None}
        for name, keep in wanted.items():
            if not keep and (self._path / name).is_file():
                (self._path / name).unlink()
        if not data.readme:
            return
        self._path.mkdir(parents=True, exist_ok=True)
        if data.sample is not None:
            write_gif(self._path / SAMPLE_FILE, data.sample, self._fps)
        if data.workflow is not None:
            _write_text_atomic(self._path / WORKFLOW_FILE, json.dumps(data.workflow, indent=2))
        _write_text_atomic(self._path / README_FILE, data.readme)

    def _load(self) -> ModelCard:
        import json

        from machining_t2v.publishing.model_card import (
            README_FILE,
            SAMPLE_FILE,
            WORKFLOW_FILE,
            ModelCard,
        )

        readme, sample, workflow = (self._path / name for name in (README_FILE, SAMPLE_FILE, WORKFLOW_FILE))
        if not readme.is_file():
            raise DatasetError(f"{readme} does not exist: run the evaluation pipeline after training the LoRA")
        return ModelCard(readme=readme.read_text(encoding="utf-8"),
                         sample=_read_gif(sample) if sample.is_file() else None,
                         workflow=json.loads(workflow.read_text(encoding="utf-8")) if workflow.is_file() else None)

    def _exists(self) -> bool:
        from machining_t2v.publishing.model_card import README_FILE

        return (self._path / README_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "fps": self._fps}

    def artifact_files(self) -> list[Path]:
        """The card's files on disk: what the MLflow hook logs, rather than the folder, which also holds
        the LoRA (logged by the run that trained it)."""
        from machining_t2v.publishing.model_card import README_FILE, SAMPLE_FILE, WORKFLOW_FILE

        return [self._path / name for name in (README_FILE, SAMPLE_FILE, WORKFLOW_FILE)
                if (self._path / name).is_file()]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as gif:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])
