"""Run a fine-tuning pipeline's training outside Kedro's runner: one process or data parallel.

    # N processes (GPUs, or CPU processes over gloo on a machine without CUDA)
    accelerate launch --multi_gpu --num_processes 2 -m machining_t2v.training.launch image_ft
    torchrun --nproc_per_node 2 -m machining_t2v.training.launch motion_ft --params motion_ft.training.max_steps=400
    # one process: the same as the pipeline's training node under `kedro run`
    python -m machining_t2v.training.launch image_ft

What every process does: read ``conf/`` (base + the run env, plus ``--params`` overrides, with
Kedro's ``OmegaConfigLoader`` and the project's settings), build the catalog, load the
training node's inputs (``stills``/``clips``/``captions`` from ``data/05_model_input``, the
base model and motion adapter the ``base_model`` parameters name, the image LoRA for
motion_ft...) and call the *same node function* ``kedro run`` calls, which drives
``machining_t2v.training.train``. Under N processes that splits every global batch across them
and averages the gradients; ``batch_size`` stays the global batch.

What only the main process does: hold the project lock (``kedro run`` of the same project
waits), save the node's outputs through the catalog (LoRA folders, samples, summary), log
the run to MLflow (when the tracking store answers; otherwise a warning and no tracking),
and run the pipeline's other nodes that come after training (evaluation...), if any.

The data must be prepared first (``kedro run --pipelines=data_prep``). ``accelerate launch
--cpu`` starts a single process whatever ``--num_processes`` says (multi-CPU needs mpirun
there): on a CPU machine use ``--multi_gpu`` as above (the training core switches to gloo)
or ``torchrun``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("machining_t2v.training.launch")

TRAINING_PIPELINES = ("image_ft", "motion_ft")
# Nodes that train through ``training.train`` and so run on every process; every other node
# of the pipeline (after data preparation) runs on the main process only.
DISTRIBUTED_NODES = ("train_image_lora", "train_motion_lora")
# A motion concept's clip selection: cheap and deterministic, and its in-memory output is what every
# process's training node reads, so every process runs it and keeps its output.
EVERY_PROCESS_NODES = ("select_concept_clips",)


def _base_name(node) -> str:
    """A node's name without its namespace (a motion concept's: ``mill_x.train_motion_lora``)."""
    return node.name.rpartition(".")[2]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["a.b=1,c=x", "d=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": "x", "d": [1, 2]}`` (values as YAML).

    A comma starts a new item only when ``key=`` follows it, so list values keep their commas.
    """
    nested: dict[str, Any] = {}
    for item in items:
        for part in re.split(r",(?=\s*[A-Za-z_][\w.]*\s*=)", item):
            if not part.strip():
                continue
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"--params item {part!r} must look like key=value (dots for nesting)")
            value = yaml.safe_load(raw) if raw.strip() else None
            target = nested
            *parents, leaf = key.split(".")
            for name in parents:
                target = target.setdefault(name, {})
                if not isinstance(target, dict):
                    raise ValueError(f"--params {key}: {name} is given both a value and sub-keys")
            target[leaf] = value
    return nested


def _flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def load_project_config(project_path: Path, env: str | None, runtime_params: dict[str, Any],
                        conf_source: str | None = None) -> tuple[dict, dict, dict, dict]:
    """(catalog, credentials, parameters, mlflow config) as ``kedro run`` would see them."""
    from kedro.config import MissingConfigException

    from machining_t2v import settings

    loader_class = getattr(settings, "CONFIG_LOADER_CLASS", None)
    if loader_class is None:  # pragma: no cover - settings always set it
        from kedro.config import OmegaConfigLoader as loader_class
    args = dict(getattr(settings, "CONFIG_LOADER_ARGS", {}))
    loader = loader_class(conf_source=str(conf_source or project_path / "conf"), env=env,
                          runtime_params=runtime_params, **args)  # fmt: skip
    catalog = loader["catalog"]
    parameters = loader["parameters"]
    optional = {}
    for key in ("credentials", "mlflow"):
        try:
            optional[key] = loader[key] or {}
        except (MissingConfigException, KeyError):
            optional[key] = {}
    return catalog, optional["credentials"], parameters, optional["mlflow"]


def training_nodes(pipeline_name: str) -> list:
    """The nodes of ``pipeline_name`` that come after data preparation, in run order."""
    from machining_t2v.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    if pipeline_name not in pipelines:
        raise ValueError(f"No pipeline named {pipeline_name!r}; choose one of {', '.join(TRAINING_PIPELINES)}")
    pipeline = pipelines[pipeline_name]
    if "data_prep" in pipelines:
        prep = {node.name for node in pipelines["data_prep"].nodes}
        nodes = [node for node in pipeline.nodes if node.name not in prep]
    else:  # pragma: no cover
        nodes = list(pipeline.nodes)
    if not any(_base_name(node) in DISTRIBUTED_NODES for node in nodes):
        raise ValueError(f"Pipeline {pipeline_name!r} has no training node ({', '.join(DISTRIBUTED_NODES)})")
    return nodes


def _keep(catalog, name: str, data: Any) -> None:
    """Save a node's output through the catalog, or keep it in memory when the catalog does not
    define it (as Kedro's runner does: a concept's selected clips)."""
    if name in catalog:
        catalog.save(name, data)
    else:
        catalog[name] = data


def _node_inputs(node, catalog, parameters: dict[str, Any]) -> dict[str, Any]:
    inputs = {}
    for name in node.inputs:
        if name == "parameters":
            inputs[name] = parameters
        elif name.startswith("params:"):
            value: Any = parameters
            for part in name[len("params:"):].split("."):
                value = value[part]
            inputs[name] = value
        else:
            inputs[name] = catalog.load(name)
    return inputs


class _MlflowRun:
    """The main process's MLflow run, started only if the tracking store answers."""

    def __init__(self, mlflow_conf: dict[str, Any], project_path: Path, pipeline_name: str, num_processes: int,
                 enabled: bool):
        from machining_t2v.kedro_glue import tracking
        from machining_t2v.kedro_glue.hooks import (
            configured_tracking_uri,
            unreachable_store_warning,
        )

        self.active = False
        tracking.reset()
        disabled_pipelines = ((mlflow_conf.get("tracking") or {}).get("disable_tracking") or {}).get("pipelines") or []
        if not enabled or pipeline_name in disabled_pipelines:
            logger.info("MLflow tracking is off for this launch.")
            return
        self.conf = mlflow_conf
        self.uri = configured_tracking_uri(mlflow_conf, project_path)
        reason = tracking.probe_store(self.uri, timeout=float(os.environ.get("MACHINING_T2V_MLFLOW_PROBE_TIMEOUT", 5)))
        if reason:
            logger.warning(unreachable_store_warning(reason))
            return
        try:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            experiment = (mlflow_conf.get("tracking") or {}).get("experiment") or {}
            name = experiment.get("name") or "machining_t2v"
            found = mlflow.get_experiment_by_name(name)
            if found is None:
                kwargs = experiment.get("create_experiment_kwargs") or {}
                location = kwargs.get("artifact_location")
                if location and "://" not in location:
                    location = (project_path / location).resolve().as_uri()
                experiment_id = mlflow.create_experiment(name, artifact_location=location, tags=kwargs.get("tags"))
            else:
                experiment_id = found.experiment_id
            run_name = ((mlflow_conf.get("tracking") or {}).get("run") or {}).get("name") or pipeline_name
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
            mlflow.set_tags({"launcher": "machining_t2v.training.launch", "num_processes": str(num_processes),
                             "command": " ".join(sys.argv)[:500]})
            self.active = True
            logger.info("MLflow run %r started in %s", run_name, self.uri)
        except Exception as error:
            if not tracking.is_store_error(error):
                raise
            logger.warning(unreachable_store_warning(f"MLflow tracking store {self.uri} failed ({error})"))
            tracking.drop_active_runs()

    def log_params(self, node, inputs: dict[str, Any]) -> None:
        if not self.active:
            return
        from machining_t2v.kedro_glue import tracking

        params = {name[len("params:"):]: value for name, value in inputs.items() if name.startswith("params:")}
        tracking.log_params(_flatten(params))

    def end(self, failed: bool) -> None:
        if not self.active:
            return
        from machining_t2v.kedro_glue import tracking

        if tracking.store_down():
            tracking.drop_active_runs()
            return
        with contextlib.suppress(Exception):
            import mlflow

            mlflow.end_run("FAILED" if failed else "FINISHED")


def _ensure_builtin_models(parameters: dict[str, Any]) -> None:
    """Build the built-in tiny model once, on the main process, before the others load it.

    transformers 5 writes a model's config.json on rank 0 only once torch.distributed is up,
    so a tiny model built by another process would lack it.
    """
    from machining_t2v.fixtures.tiny_model import build_tiny_model, tiny_model_exists
    from machining_t2v.models.sources import TINY_MODEL

    base = parameters.get("base_model") or {}
    if TINY_MODEL in (base.get("pretrained"), base.get("motion_adapter")) and base.get("tiny_model_dir"):
        if not tiny_model_exists(base["tiny_model_dir"]):
            build_tiny_model(base["tiny_model_dir"])


def _configure_logging(is_main: bool, rank: int) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "alembic", "kedro.io"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m machining_t2v.training.launch",
        description="Train a LoRA with the project's data and parameters, on one process or under "
                    "`accelerate launch` / `torchrun` (data parallel).")  # fmt: skip
    parser.add_argument("pipeline", choices=TRAINING_PIPELINES)
    parser.add_argument("--project-path", type=Path, default=Path.cwd(),
                        help="the Kedro project (default: the current folder)")
    parser.add_argument("--env", default=None, help="configuration env (default: the project's run env, local)")
    parser.add_argument("--conf-source", default=None, help="configuration folder (default: <project>/conf)")
    parser.add_argument("--params", action="append", default=[],
                        help="overrides as in `kedro run --params`, e.g. image_ft.training.max_steps=50")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log this launch to MLflow")
    parser.add_argument("--train-only", action="store_true",
                        help="run only the training node, not the pipeline's nodes after it (evaluation)")
    args = parser.parse_args(argv)

    for name in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    project_path = args.project_path.resolve()
    os.chdir(project_path)  # the catalog's paths are relative to the project
    from machining_t2v.training import distributed_state

    state = distributed_state()
    _configure_logging(state.is_main_process, state.process_index)
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") and "MASTER_ADDR" in os.environ
            and state.num_processes == 1):
        logger.warning("Running as ONE process: `accelerate launch --cpu` starts a single process whatever "
                       "--num_processes says. For N CPU processes use `accelerate launch --multi_gpu "
                       "--num_processes N` or `torchrun --nproc_per_node N`.")

    runtime_params = parse_params(args.params)
    catalog_conf, credentials, parameters, mlflow_conf = load_project_config(
        project_path, args.env, runtime_params, args.conf_source)
    from machining_t2v.parameters import check_parameters

    check_parameters(parameters)  # an unknown key or a wrong type fails here, as `kedro run` does
    from kedro.io import DataCatalog

    from machining_t2v.kedro_glue.hooks import (
        MlflowArtifactHooks,
        ProjectLock,
        lock_timeout_from_env,
    )
    from machining_t2v.kedro_glue.model_datasets import bind_model_datasets

    catalog = DataCatalog.from_config(catalog_conf, credentials)
    bind_model_datasets(catalog, parameters["base_model"])  # as the ModelDatasetBinding hook does under kedro run
    nodes = training_nodes(args.pipeline)
    if args.train_only:
        nodes = [node for node in nodes if _base_name(node) in DISTRIBUTED_NODES + EVERY_PROCESS_NODES]

    lock = ProjectLock(project_path, timeout=lock_timeout_from_env())
    if state.is_main_process:
        lock.acquire(f"machining_t2v.training.launch {args.pipeline} ({state.num_processes} processes)")
    state.wait_for_everyone()
    mlflow_run = None
    failed = True
    start = time.perf_counter()
    try:
        if state.is_main_process:
            mlflow_run = _MlflowRun(mlflow_conf, project_path, args.pipeline, state.num_processes,
                                    enabled=not args.no_mlflow)
            artifacts = MlflowArtifactHooks()
            artifacts.after_catalog_created(catalog)
        with state.main_process_first():
            _ensure_builtin_models(parameters)
        for node in nodes:
            everywhere = _base_name(node) in DISTRIBUTED_NODES + EVERY_PROCESS_NODES
            if not (everywhere or state.is_main_process):
                continue
            logger.info("Running node %s on %s", node.name,
                        f"{state.num_processes} process(es)" if everywhere else "the main process")
            inputs = _node_inputs(node, catalog, parameters)
            if mlflow_run is not None:
                mlflow_run.log_params(node, inputs)
            outputs = node.run(inputs)
            if not state.is_main_process and _base_name(node) in EVERY_PROCESS_NODES:
                for name, data in outputs.items():
                    _keep(catalog, name, data)
            if state.is_main_process:
                for name, data in outputs.items():
                    _keep(catalog, name, data)
                    artifacts.after_dataset_saved(name, data, node)
                    logger.info("Saved %s", name)
            if everywhere:
                state.wait_for_everyone()
        failed = False
    finally:
        if mlflow_run is not None:
            mlflow_run.end(failed)
        if state.is_main_process:
            lock.release()
    if state.is_main_process:
        logger.info("%s finished on %d process(es) in %.1f s", args.pipeline, state.num_processes,
                    time.perf_counter() - start)
    state.wait_for_everyone()
    with contextlib.suppress(Exception):
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
