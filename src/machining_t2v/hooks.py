"""Project hooks: log catalog outputs marked ``log_to_mlflow`` as MLflow artifacts.

kedro-mlflow's ``MlflowArtifactDataset`` logs single files; LoRA folders and sample-grid
folders need whole-folder logging, so datasets opt in through their catalog metadata:

    metadata:
      machining_t2v:
        log_to_mlflow: true
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from machining_t2v.tracking import log_artifact

logger = logging.getLogger(__name__)


class MlflowArtifactHooks:
    """After a marked dataset is saved, log its file or folder to the active MLflow run."""

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        if self._catalog is None or dataset_name not in self._catalog:
            return
        dataset = self._catalog.get(dataset_name)
        options = (getattr(dataset, "metadata", None) or {}).get("machining_t2v", {})
        if not options.get("log_to_mlflow"):
            return
        description = dataset._describe()
        path = description.get("filepath") or description.get("path")
        if path:
            log_artifact(path, artifact_path=options.get("artifact_path"))
