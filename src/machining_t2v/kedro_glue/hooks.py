"""Project hooks: one run at a time per project, tracking that cannot fail a run, and
whole-folder MLflow artifacts.

``ProjectRunLock``
    Two ``kedro run`` on the same project at once overwrite each other's outputs (a
    partitioned dataset with ``overwrite: true`` deletes the other run's files mid-write)
    and race to create the MLflow SQLite database. The hook takes an exclusive lock on
    ``data/.kedro-run.lock`` before anything touches the store or the data and gives it
    back when the pipeline ends, so runs of one project take turns: a second run waits
    (logging who holds the lock) and then runs. ``MACHINING_T2V_RUN_LOCK_TIMEOUT=<seconds>``
    bounds the wait; ``0`` makes a second run fail at once with an error naming the holder.
    The lock is advisory (``flock``): the system drops it when its process dies, even on
    ``kill -9``.

``ResilientMlflowHook``
    kedro-mlflow's own hook, registered in its place (``settings.py`` disables the plugin's
    copy), that first checks the tracking store (:func:`machining_t2v.kedro_glue.tracking.probe_store`,
    a few seconds at most). When the store is unreachable, locked or not writable it logs a
    warning naming the store and the run goes on without MLflow, instead of kedro-mlflow
    failing the run in ``after_context_created``; a store that dies mid-run is given up on the
    same way. ``MACHINING_T2V_REQUIRE_MLFLOW=1`` restores the strict behaviour (the run fails).
    Configuration errors in ``mlflow.yml`` still fail the run.

``ParameterCheck``
    Before the first node of any pipeline, validates the run's merged parameters (conf/base, the
    environment, ``--params``) against the typed models of :mod:`machining_t2v.parameters`. An
    unknown key (``--params image_ft.method=textual_inversion``), a misspelling or a value of the
    wrong type fails the run at once with an error naming the key by its dotted path, instead of
    being silently ignored while a model trains for minutes. It also fails a run whose motion
    concepts differ from those its pipelines were registered with
    (:mod:`machining_t2v.kedro_glue.concepts`).

``ModelDatasetBinding``
    Binds the catalog's model datasets (``base_model``, ``motion_adapter``:
    :mod:`machining_t2v.kedro_glue.model_datasets`) to the run's merged ``base_model`` parameters
    once the catalog exists, so ``--params base_model.pretrained=...``, ``--env sd15`` and
    conf/local choose what they load.

``ModelSourceCheck``
    Before a pipeline that loads the base model (a node taking the ``base_model`` or
    ``motion_adapter`` dataset, or ``params:base_model``) runs its
    first node, checks that the base model and the motion adapter can be found
    (:func:`machining_t2v.models.sources.check_model_sources`: a folder's layout, or one small file of a
    hub id; no weights are loaded), and likewise the evaluation's CLIP when the pipeline scores
    (``params:evaluation``). A wrong id or a broken folder then fails the run in seconds with
    the loaders' own error, before any frames or captions are prepared.

``MlflowArtifactHooks``
    kedro-mlflow's ``MlflowArtifactDataset`` logs single files; LoRA folders and sample-grid
    folders need whole-folder logging, so datasets opt in through their catalog metadata::

        metadata:
          machining_t2v:
            log_to_mlflow: true
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.tracking import log_artifact

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_ENV = "MACHINING_T2V_RUN_LOCK_TIMEOUT"
REQUIRE_MLFLOW_ENV = "MACHINING_T2V_REQUIRE_MLFLOW"
PROBE_TIMEOUT_ENV = "MACHINING_T2V_MLFLOW_PROBE_TIMEOUT"
LOCK_NAME = ".kedro-run.lock"


def _launched_rank() -> int:
    """This process's rank when several were started by ``accelerate launch``/``torchrun``."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        pass
    return 0


# --------------------------------------------------------------------------- project lock


class ProjectBusyError(RuntimeError):
    """Another run holds the project's lock and the wait for it timed out."""


def lock_path(project_path: str | Path) -> Path:
    """Where the project's run lock lives: ``data/.kedro-run.lock`` (git-ignored)."""
    root = Path(project_path)
    return (root / "data" / LOCK_NAME) if (root / "data").is_dir() else (root / LOCK_NAME)


def lock_timeout_from_env() -> float | None:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise ValueError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


class ProjectLock:
    """An exclusive lock on one project, shared by ``kedro run`` and ``machining_t2v.training.launch``.

    Re-entrant within a process (a second acquire by the same process only counts); between
    processes the second one waits up to ``timeout`` seconds (None: as long as it takes).
    """

    _held: dict[str, list] = {}  # lock path -> [open file, count], per process

    def __init__(self, project_path: str | Path, timeout: float | None = None):
        self.path = lock_path(project_path)
        self.timeout = timeout

    def holder(self) -> str:
        """Who holds the lock, as written by the holder (best effort)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return "another process"
        return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, "
                f"since {info.get('since')})")

    def acquire(self, what: str = "") -> None:
        key = str(self.path.resolve())
        held = self._held.get(key)
        if held is not None:
            held[1] += 1
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, as before
            logger.debug("No fcntl on this platform; runs of %s are not serialised.", self.path)
            self._held[key] = [None, 1]
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while held
        start = time.monotonic()
        announced = False
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - start
                    if self.timeout is not None and waited >= self.timeout:
                        raise ProjectBusyError(
                            f"Another run is using this project: {self.path} is held by "
                            f"{self.holder()}. Wait for it to finish, or set {LOCK_TIMEOUT_ENV} "
                            f"to wait longer (now {self.timeout:g} s)."
                        ) from None
                    if not announced:
                        announced = True
                        logger.warning(
                            "Another run is using this project (%s holds %s); this run waits "
                            "for it to finish. Set %s=0 to fail instead of waiting.",
                            self.holder(), self.path, LOCK_TIMEOUT_ENV,
                        )  # fmt: skip
                    time.sleep(0.2)
        except BaseException:
            handle.close()
            raise
        if announced:
            logger.warning("Got the project lock %s after %.1f s.", self.path, time.monotonic() - start)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": what or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(info))
            handle.flush()
        self._held[key] = [handle, 1]

    def release(self) -> None:
        key = str(self.path.resolve())
        held = self._held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del self._held[key]
        handle = held[0]
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
            handle.close()  # closing the file drops the flock

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ProjectRunLock:
    """Hold the project lock from context creation until the pipeline has finished."""

    def __init__(self) -> None:
        self._lock: ProjectLock | None = None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        # A session of this process that failed before its pipeline ran kept the lock.
        self._release()
        if _launched_rank() > 0:
            return  # under a distributed launch process 0 holds it; the others must not wait on it
        lock = ProjectLock(context.project_path, timeout=lock_timeout_from_env())
        lock.acquire()
        self._lock = lock

    @hook_impl(hookwrapper=True)
    def before_pipeline_run(self) -> Any:
        outcome = yield
        if outcome.excinfo is not None:
            # A hook stopped the run before its first node (e.g. ModelSourceCheck); Kedro calls
            # neither after_pipeline_run nor on_pipeline_error then, so let go here.
            self._release()

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self._release()


# --------------------------------------------------------------------------- MLflow


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def configured_tracking_uri(mlflow_conf: dict[str, Any], project_path: str | Path) -> str:
    """The tracking URI kedro-mlflow would use for this ``mlflow.yml`` content."""
    from kedro_mlflow.config.kedro_mlflow_config import _validate_uri

    uri = (mlflow_conf.get("server") or {}).get("mlflow_tracking_uri")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    return _validate_uri(project_path=str(project_path), uri=uri)


def unreachable_store_warning(reason: str) -> str:
    return (f"{reason}. This run goes on WITHOUT MLflow tracking: no parameters, metrics or "
            f"artifacts are logged; its outputs are still written to the catalog (data/). Fix the "
            f"store (conf/*/mlflow.yml server.mlflow_tracking_uri) and rerun to track it, or set "
            f"{REQUIRE_MLFLOW_ENV}=1 to make an unreachable store fail the run.")


class ResilientMlflowHook(MlflowHook):
    """kedro-mlflow's ``MlflowHook``, except that a failing tracking store does not fail the run."""

    def __init__(self) -> None:
        super().__init__()
        self._disabled: str | None = None

    def _give_up(self, reason: str, catalog: Any = None) -> None:
        if _truthy(REQUIRE_MLFLOW_ENV):
            raise RuntimeError(f"{reason} ({REQUIRE_MLFLOW_ENV} is set, so the run stops).")
        self._disabled = reason
        self._is_mlflow_enabled = False
        self.run_id = None
        tracking.mark_store_down(reason)
        logger.warning(unreachable_store_warning(reason))
        tracking.drop_active_runs()
        if catalog is not None:
            with contextlib.suppress(Exception):
                from kedro_mlflow.io.catalog.switch_catalog_logging import switch_catalog_logging

                switch_catalog_logging(catalog, False)

    def _guard(self, what: str, call, catalog: Any = None) -> None:
        if self._disabled:
            return
        try:
            call()
        except Exception as error:
            if not tracking.is_store_error(error):
                raise
            self._give_up(f"MLflow tracking store {tracking._describe_store()} failed during "
                          f"{what} ({type(error).__name__}: {error})", catalog)

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._disabled = None
        self._is_mlflow_enabled = True
        self.run_id = None
        tracking.reset()
        if _launched_rank() > 0:  # under a distributed launch only process 0 tracks
            self._disabled = f"process {_launched_rank()} of a distributed launch"
            self._is_mlflow_enabled = False
            logger.info("MLflow tracking is left to process 0 of this distributed launch.")
            return
        import mlflow

        if mlflow.active_run() is None:  # with an active run, kedro-mlflow uses it as is
            try:
                conf = context.config_loader["mlflow"]
            except Exception:  # missing mlflow.yml: kedro-mlflow falls back to its defaults
                conf = {}
            uri = configured_tracking_uri(conf or {}, context.project_path)
            timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, "5") or 5)
            reason = tracking.probe_store(uri, timeout=timeout)
            if reason:
                self._give_up(reason)
                return
        self._guard("set-up", lambda: super(ResilientMlflowHook, self).after_context_created(context))

    @hook_impl
    def after_catalog_created(self, catalog: Any, conf_catalog: Any, conf_creds: Any, parameters: Any,
                              save_version: Any, load_versions: Any) -> None:
        if self._disabled:
            return
        super().after_catalog_created(catalog, conf_catalog, conf_creds, parameters, save_version,
                                      load_versions)  # fmt: skip

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self._disabled:
            with contextlib.suppress(Exception):
                from kedro_mlflow.io.catalog.switch_catalog_logging import switch_catalog_logging

                switch_catalog_logging(catalog, False)
            return
        self._guard("the start of the MLflow run",
                    lambda: super(ResilientMlflowHook, self).before_pipeline_run(run_params, pipeline, catalog),
                    catalog)  # fmt: skip

    @hook_impl
    def before_node_run(self, node: Any, catalog: Any, inputs: dict[str, Any], is_async: bool) -> None:
        self._guard(f"parameter logging for node {getattr(node, 'name', node)}",
                    lambda: super(ResilientMlflowHook, self).before_node_run(node, catalog, inputs, is_async),
                    catalog)  # fmt: skip

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self._disabled:
            return
        if tracking.store_down():  # the store died mid-run: do not wait on it to close the run
            tracking.drop_active_runs()
            return
        self._guard("the end of the MLflow run",
                    lambda: super(ResilientMlflowHook, self).after_pipeline_run(run_params, pipeline, catalog))

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Any,
                          catalog: Any) -> None:
        if self._disabled:
            return
        if tracking.store_down():
            tracking.drop_active_runs()
            return
        self._guard("marking the MLflow run failed",
                    lambda: super(ResilientMlflowHook, self).on_pipeline_error(error, run_params, pipeline,
                                                                                catalog))  # fmt: skip


# --------------------------------------------------------------------------- parameters


class ParameterCheck:
    """Fail a run whose parameters have an unknown key or a value of the wrong type, before its first node."""

    # tryfirst, and registered after ModelSourceCheck (settings.HOOKS): of two tryfirst hooks pluggy
    # calls the later-registered first, so parameters are checked before any model is looked up,
    # and before the MLflow run is opened.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        from machining_t2v.kedro_glue.concepts import check_registered_concepts
        from machining_t2v.parameters import check_parameters

        parameters = catalog.load("parameters")
        check_parameters(parameters)
        check_registered_concepts(parameters, [node.name for node in pipeline.nodes])


# --------------------------------------------------------------------------- model sources


class ModelDatasetBinding:
    """Bind the catalog's base model and motion adapter datasets to the run's ``base_model`` parameters."""

    @hook_impl
    def after_catalog_created(self, catalog: Any, parameters: dict[str, Any]) -> None:
        from machining_t2v.kedro_glue.model_datasets import bind_model_datasets

        # Kedro hands the parameters over as catalog entries: "parameters", "params:<key>", ...
        if "params:base_model" in parameters:
            bind_model_datasets(catalog, parameters["params:base_model"])


class ModelSourceCheck:
    """Fail a run whose base model, motion adapter or evaluation CLIP cannot be found, before its first node."""

    @hook_impl(tryfirst=True)  # before the MLflow run is opened: a failed check leaves no run behind
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        inputs = {name for node in pipeline.nodes for name in node.inputs}
        if inputs & {"params:base_model", "base_model", "motion_adapter"}:
            from machining_t2v.models.sources import check_model_sources

            for line in check_model_sources(catalog.load("params:base_model")):
                logger.info("Found %s", line)
        if "params:evaluation" in inputs:
            from machining_t2v.evaluation.clip_metrics import check_clip_source

            evaluation = catalog.load("params:evaluation") or {}
            if evaluation.get("clip_model"):
                logger.info("Found %s", check_clip_source(str(evaluation["clip_model"])))


# --------------------------------------------------------------------------- artifacts


class MlflowArtifactHooks:
    """After a marked dataset is saved, log its file or folder to the active MLflow run."""

    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        from machining_t2v.kedro_glue.datasets import NotTrained

        # What the dataset holds is an earlier run's, not this run's.
        if self._catalog is None or dataset_name not in self._catalog or isinstance(data, NotTrained):
            return
        dataset = self._catalog.get(dataset_name)
        options = (getattr(dataset, "metadata", None) or {}).get("machining_t2v", {})
        if not options.get("log_to_mlflow"):
            return
        if hasattr(dataset, "artifact_files"):  # a dataset that shares its folder with another one's files
            for file in dataset.artifact_files():
                log_artifact(file, artifact_path=options.get("artifact_path"))
            return
        description = dataset._describe()
        path = description.get("filepath") or description.get("path")
        if path:
            log_artifact(path, artifact_path=options.get("artifact_path"))
