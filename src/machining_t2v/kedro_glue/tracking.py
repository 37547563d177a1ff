"""MLflow logging that never costs the user a training run.

The pipelines log through these helpers: when no MLflow run is active (a notebook, a
non-main process of ``accelerate launch``) they do nothing, and when the tracking store
fails (locked SQLite file, unreachable server) they log one warning naming the store and
training goes on. After a *store* failure (connection, I/O, database error) the helpers
stop calling MLflow until :func:`reset` (called at the start of every run), because each
call to a dead HTTP store blocks for minutes of retries; other MLflow errors (a bad metric
name...) only skip the call that failed.

:func:`probe_store` checks a tracking URI before a run starts, within a few seconds, so the
project hooks and the launcher can run without tracking instead of failing.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

_warned: set[str] = set()
_store_down: str | None = None  # why the store was given up on in this run, if it was

# Fragments of the messages MLflow wraps store failures in (it re-raises them as MlflowException).
_STORE_FAILURE_HINTS = (
    "api request to",
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "timed out",
    "database is locked",
    "unable to open database",
    "readonly database",
    "disk i/o error",
    "database or disk is full",
    "operationalerror",
)


def reset() -> None:
    """Forget earlier failures: the next run tries the store again and warns again."""
    global _store_down
    _warned.clear()
    _store_down = None


def store_down() -> str | None:
    """Why MLflow logging was given up on in this run (None while it works)."""
    return _store_down


def mark_store_down(reason: str) -> None:
    """Stop calling MLflow for the rest of this run (until :func:`reset`)."""
    global _store_down
    if _store_down is None:
        _store_down = reason


def drop_active_runs() -> None:
    """Forget this thread's active MLflow runs without contacting the store (it is down).

    ``mlflow.end_run`` would first tell the store, which against a dead HTTP server blocks
    for minutes of retries; the run stays RUNNING in a store that comes back.
    """
    try:
        from mlflow.environment_variables import MLFLOW_RUN_ID
        from mlflow.tracking import fluent

        fluent._active_run_stack.get().clear()
        MLFLOW_RUN_ID.unset()
    except Exception as error:  # pragma: no cover - MLflow internals moved
        logger.debug("Could not drop the active MLflow runs: %s", error)


def is_store_error(error: BaseException) -> bool:
    """True for errors that mean the tracking store itself failed (not a bad request)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, sqlite3.Error, TimeoutError)):
            return True
        module = type(current).__module__
        if module.startswith(("requests", "urllib3", "sqlalchemy")):
            return True
        if any(hint in str(current).lower() for hint in _STORE_FAILURE_HINTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe_store() -> str:
    try:
        import mlflow

        return mlflow.get_tracking_uri()
    except Exception:  # pragma: no cover - a broken mlflow install
        return "(unknown tracking URI)"


def _failed(what: str, error: Exception) -> None:
    if is_store_error(error):
        store = _describe_store()
        mark_store_down(f"{store}: {error}")
        if "store" not in _warned:
            _warned.add("store")
            logger.warning(
                "MLflow tracking store %s failed during %s (%s); training goes on, but nothing "
                "more of this run is logged to MLflow. The outputs are still written locally.",
                store,
                what,
                error,
            )
    elif what not in _warned:
        _warned.add(what)
        logger.warning("MLflow %s failed, continuing without it: %s", what, error)


def _active_run():
    if _store_down is not None:
        return None
    try:
        import mlflow

        return mlflow.active_run()
    except Exception as error:  # a broken mlflow install must not stop training either
        _failed("lookup of the active run", error)
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
        _failed("metric logging", error)


def log_params(params: dict[str, object], max_length: int = 6000) -> None:
    """Log parameters (values cut to ``max_length`` characters) to the active run, if any."""
    if _active_run() is None:
        return
    import mlflow

    clean = {str(k): str(v)[:max_length] for k, v in params.items()}
    try:
        for start in range(0, len(clean), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(list(clean.items())[start : start + 100]))
    except Exception as error:
        _failed("parameter logging", error)


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
        _failed(f"artifact logging of {path}", error)


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active MLflow run, if any (e.g. which base model produced it)."""
    if _active_run() is None:
        return
    import mlflow

    try:
        mlflow.set_tags(tags)
    except Exception as error:
        _failed("tagging", error)


# --------------------------------------------------------------------------- store probe


def probe_store(tracking_uri: str, timeout: float = 5.0) -> str | None:
    """Check within about ``timeout`` seconds that an MLflow tracking store can be used.

    * ``http(s)://``: the server answers at all (any HTTP status; no retries);
    * ``sqlite:///``: the database folder exists, and the database (if it exists) can take
      a write lock within ``timeout`` (not locked by a stuck writer, not read-only) or the
      folder accepts a new file;
    * anything else (``postgresql://``, ``databricks``...): one MLflow client call, given
      up after ``timeout``.

    Returns:
        None if the store looks usable, else a one-line reason naming the store.
    """
    scheme = urlparse(tracking_uri).scheme.lower()
    try:
        if scheme in ("http", "https"):
            return _probe_http(tracking_uri, timeout)
        if scheme == "sqlite":
            return _probe_sqlite(tracking_uri, timeout)
        if scheme in ("", "file"):
            return None  # a local folder; MLflow reports its own errors about it
        return _probe_client(tracking_uri, timeout)
    except Exception as error:  # the probe itself must never be what fails a run
        return f"MLflow tracking store {tracking_uri} could not be checked: {error}"


def _probe_http(uri: str, timeout: float) -> str | None:
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=(timeout, timeout), allow_redirects=False)
    except requests.RequestException as error:
        return f"MLflow tracking server {uri} is unreachable ({type(error).__name__}: {error})"
    return None


def _sqlite_path(uri: str) -> str | None:
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        return None  # sqlite:// (in memory) or a form we do not interpret
    path = rest[3:].split("?", 1)[0]
    return path or None


def _probe_sqlite(uri: str, timeout: float) -> str | None:
    path = _sqlite_path(uri)
    if path is None:
        return None
    db = Path(path)
    if not db.parent.is_dir():
        return f"MLflow tracking database {uri}: its folder {db.parent} does not exist"
    if db.exists():
        try:
            connection = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=timeout)
            try:
                connection.execute("BEGIN IMMEDIATE")  # takes the write lock, then gives it back
                connection.rollback()
            finally:
                connection.close()
        except sqlite3.Error as error:
            return f"MLflow tracking database {uri} cannot be written ({error})"
        return None
    probe = db.parent / f".mlflow-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"MLflow tracking database {uri} cannot be created in {db.parent} ({error})"
    return None


def _probe_client(uri: str, timeout: float) -> str | None:
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - reported, not raised
            outcome.append(error)

    worker = threading.Thread(target=call, name="mlflow-store-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"MLflow tracking store {uri} did not answer within {timeout:.0f} s"
    if outcome[0] is not None:
        return f"MLflow tracking store {uri} failed: {outcome[0]}"
    return None
