"""MLflow logging that never costs the user a training run.

The pipelines log through these helpers: when no MLflow run is active (a notebook, a
plain ``accelerate launch``) they do nothing, and when the tracking store fails (locked
SQLite file, unreachable server) they log one warning and training goes on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(what: str, error: Exception) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning("MLflow %s failed, continuing without it: %s", what, error)


def _active_run():
    try:
        import mlflow

        return mlflow.active_run()
    except Exception as error:  # a broken mlflow install must not stop training either
        _warn_once("lookup of the active run", error)
        return None


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log finite numeric metrics to the active MLflow run, if any."""
    if _active_run() is None:
        return
    import mlflow

    clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    try:
        mlflow.log_metrics(clean, step=step)
    except Exception as error:
        _warn_once("metric logging", error)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file or a whole folder to the active MLflow run, if any."""
    path = Path(path)
    if _active_run() is None or not path.exists():
        return
    import mlflow

    try:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
    except Exception as error:
        _warn_once(f"artifact logging of {path}", error)


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active MLflow run, if any (e.g. which base model produced it)."""
    if _active_run() is None:
        return
    import mlflow

    try:
        mlflow.set_tags(tags)
    except Exception as error:
        _warn_once("tagging", error)
