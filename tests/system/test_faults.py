"""Faults the project survives, each provoked for real (see docs/reliability.md).

* training killed with SIGKILL, then ``resume: latest``: same weights, never a partial checkpoint;
* a checkpoint folder that cannot be written (a path under a regular file; a full disk
  simulated with ``RLIMIT_FSIZE``, which also stops root): a clear error, the previous
  checkpoint intact;
* an MLflow tracking store that is unreachable, missing or locked: the run completes untracked
  with a warning naming the store;
* two ``kedro run`` on one project at once: they take turns (or the second fails at once
  when asked), no corrupted dataset or MLflow database.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from PIL import Image

from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.hooks import ProjectLock
from machining_t2v.training import (
    CheckpointWriteError,
    TrainingConfig,
    latest_checkpoint,
    list_checkpoints,
    train,
)
from tests.system.test_distributed import (
    NUM_SAMPLES,
    PROJECT_ROOT,
    TOY_CONFIG,
    copy_project,
    make_toy_model,
    prepare_project_template,
    run_toy_worker,
    subprocess_env,
    toy_loss,
    trainable,
    worker_result,
)


@pytest.fixture(scope="session")
def prepared_project_template(tmp_path_factory):
    return prepare_project_template(tmp_path_factory)


CHECKPOINT_FILES = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}


def assert_checkpoints_complete(folder: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder (what ``resume`` may pick) is whole and loadable."""
    complete = list_checkpoints(folder)
    named = sorted(p for p in folder.iterdir() if p.name.startswith("checkpoint-") and "." not in p.name)
    assert named == sorted(complete), f"checkpoint folder(s) without state.json: {set(named) - set(complete)}"
    for checkpoint in complete:
        assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES, checkpoint
        state = json.loads((checkpoint / "state.json").read_text())
        assert state["global_step"] == int(checkpoint.name.split("-")[1])
        safetensors.torch.load_file(checkpoint / "trainable.safetensors")
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(checkpoint / name, weights_only=True)
    return complete


def wait_for(condition, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def set_tracking_uri(project: Path, uri: str) -> None:
    local = project / "conf/local/mlflow.yml"
    lines = [f"  mlflow_tracking_uri: {uri}" if line.strip().startswith("mlflow_tracking_uri:") else line
             for line in local.read_text().splitlines()]  # fmt: skip
    local.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_partial_checkpoint(tmp_path):
    """Kill the training 5 times at random moments, mostly while it writes 24 MB checkpoints."""
    config = {"max_steps": 16, "checkpoint_every": 1, "checkpoints_total_limit": 2}
    options = {"config": config, "extra_params": 2_000_000}
    reference = make_toy_model(options["extra_params"])
    train(reference, toy_loss, NUM_SAMPLES, TrainingConfig(**{**TOY_CONFIG, **config}), tmp_path / "reference",
          progress=False)  # fmt: skip

    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    rng = random.Random(0)
    mid_write = 0
    command = [sys.executable, "-m", "tests.system.test_distributed", "--out", str(out), "--options",
               json.dumps({**options, "config": {**config, "resume": "latest"}})]  # fmt: skip
    for _ in range(5):
        before = latest_checkpoint(checkpoints)
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(lambda before=before: latest_checkpoint(checkpoints) not in (None, before), 120,
                     "a new checkpoint")
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            process.kill()  # SIGKILL
            process.wait()
        mid_write += any(".tmp-" in p.name or ".old-" in p.name for p in checkpoints.iterdir())
        assert_checkpoints_complete(checkpoints)
    print(f"{mid_write} of 5 kills left an unfinished .tmp/.old folder behind (ignored by resume)")
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result, weights = worker_result(out)
    assert result["global_step"] == 16 and result["resumed_from"]
    for name, tensor in trainable(reference).items():
        assert torch.equal(tensor, weights[name]), name


LAUNCH_PARAMS = ("image_ft.training.max_steps=12,image_ft.training.batch_size=4,image_ft.training.checkpoint_every=4,"
                 "image_ft.training.lr_warmup_steps=2,image_ft.validation.every=0,"
                 "image_ft.validation.num_inference_steps=1")


def launch_image_ft(project: Path, *extra_params: str, mlflow: bool = True) -> list[str]:
    params = ",".join((LAUNCH_PARAMS, *extra_params))
    return [sys.executable, "-m", "machining_t2v.training.launch", "image_ft", "--project-path", str(project), "--train-only",
            "--params", params, *([] if mlflow else ["--no-mlflow"])]  # fmt: skip


@pytest.mark.slow
def test_sigkill_of_the_real_training_then_resume_latest(prepared_project_template, tmp_path):
    full = copy_project(prepared_project_template, tmp_path / "uninterrupted")
    # The uninterrupted run also meets a tracking store whose folder does not exist.
    set_tracking_uri(full, f"sqlite:///{tmp_path}/no-such-folder/mlflow.db")
    killed = copy_project(prepared_project_template, tmp_path / "killed")
    checkpoints = killed / "data/06_models/checkpoints/image_ft"
    env = subprocess_env(OMP_NUM_THREADS="1")  # the same for the three runs; two share the 2 cores

    reference_log = open(tmp_path / "uninterrupted.log", "w")  # noqa: SIM115 - closed below
    reference = subprocess.Popen(launch_image_ft(full), cwd=full, env=env, stdout=reference_log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    victim = subprocess.Popen(launch_image_ft(killed, mlflow=False), cwd=killed, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: latest_checkpoint(checkpoints), 300, "the first checkpoint", poll=0.01)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    survivors = assert_checkpoints_complete(checkpoints)
    assert survivors and latest_checkpoint(checkpoints) == survivors[-1]
    assert not (killed / "data/06_models/image_lora").exists(), "the killed run got to the end"
    reference.wait(timeout=400)
    reference_log.close()
    output = (tmp_path / "uninterrupted.log").read_text()
    assert reference.returncode == 0, output[-4000:]
    assert "no-such-folder" in output and "WITHOUT MLflow tracking" in output

    resumed = subprocess.run(launch_image_ft(killed, "image_ft.training.resume=latest", mlflow=False), cwd=killed,
                             env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    summary = json.loads((killed / "data/08_reporting/image_ft_summary.json").read_text())
    assert summary["resumed_from"] == str(survivors[-1].relative_to(killed)) and summary["steps"] == 12
    expected = safetensors.torch.load_file(full / "data/06_models/image_lora/pytorch_lora_weights.safetensors")
    got = safetensors.torch.load_file(killed / "data/06_models/image_lora/pytorch_lora_weights.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


# --------------------------------------------------------------------------- unwritable checkpoints


def test_checkpoint_folder_under_a_file_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where a folder should be")
    calls = []

    def loss(model, indices, randomness):
        calls.append(1)
        return toy_loss(model, indices, randomness)

    with pytest.raises(CheckpointWriteError) as error:
        train(make_toy_model(), loss, NUM_SAMPLES, TrainingConfig(**TOY_CONFIG), blocker / "checkpoints",
              progress=False)  # fmt: skip
    assert str(blocker / "checkpoints") in str(error.value) and "training did not start" in str(error.value)
    assert error.value.checkpoint_dir == blocker / "checkpoints" and error.value.step is None
    assert isinstance(error.value, OSError) and not calls


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path):
    # RLIMIT_FSIZE makes every write past 1 KiB fail with EFBIG from the first checkpoint on: a
    # full disk that also stops root (chmod does not).
    failed = run_toy_worker(1, tmp_path, timeout=120, fsize_limit_after_step=4, fsize_limit=1024)
    assert failed.returncode == 4, failed.stdout + failed.stderr
    error = json.loads((tmp_path / "error.json").read_text())
    checkpoints = tmp_path / "checkpoints"
    assert error["step"] == 8 and error["errno"] == 27  # EFBIG
    assert str(checkpoints) in error["message"] and "checkpoint-4 is intact" in error["message"]
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-4"]  # no half-written checkpoint-8
    assert_checkpoints_complete(checkpoints)

    # Space is back: resume from the intact checkpoint; the result is the uninterrupted run's.
    resumed_model, reference_model = make_toy_model(), make_toy_model()
    resumed = train(resumed_model, toy_loss, NUM_SAMPLES, TrainingConfig(**{**TOY_CONFIG, "resume": "latest"}),
                    checkpoints, progress=False)  # fmt: skip
    assert resumed.resumed_from == str(checkpoints / "checkpoint-4")
    train(reference_model, toy_loss, NUM_SAMPLES, TrainingConfig(**TOY_CONFIG), tmp_path / "reference",
          progress=False)  # fmt: skip
    for name, tensor in trainable(reference_model).items():
        assert torch.equal(tensor, trainable(resumed_model)[name]), name


# --------------------------------------------------------------------------- MLflow store down


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_in_session(project: Path, pipeline: str, params: dict | None = None, node_names: list[str] | None = None):
    """A real KedroSession run (all project hooks) that records the project's warnings."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    records = Records()
    with KedroSession.create(project_path=project, runtime_params=params or {}) as session:
        logger = logging.getLogger("machining_t2v")
        logger.addHandler(records)
        try:
            session.run(pipeline_names=[pipeline], node_names=node_names)
        finally:
            logger.removeHandler(records)
    return records.messages


SMALL_TRAINING = {"image_ft": {"training": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2},
                               "validation": {"every": 0, "num_inference_steps": 1}}}


@pytest.fixture
def one_torch_thread():
    """Two torch threads on two cores shared with other jobs spin-wait and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_unreachable_tracking_server_does_not_stop_training(prepared_project_template, tmp_path, monkeypatch,
                                                            one_torch_thread):
    import mlflow

    project = copy_project(prepared_project_template, tmp_path / "project")
    server = f"http://127.0.0.1:{closed_port()}"
    set_tracking_uri(project, server)
    monkeypatch.chdir(project)
    start = time.monotonic()
    warnings = run_in_session(project, "image_ft", SMALL_TRAINING, node_names=["train_image_lora"])
    seconds = time.monotonic() - start
    lora = project / "data/06_models/image_lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file() and (lora / "lora_info.json").is_file()
    assert json.loads((project / "data/08_reporting/image_ft_summary.json").read_text())["steps"] == 4
    store_warnings = [m for m in warnings if server in m]
    assert len(store_warnings) == 1 and "WITHOUT MLflow tracking" in store_warnings[0], warnings
    assert mlflow.active_run() is None
    assert seconds < 120, f"the dead store cost {seconds:.0f} s (MLflow's HTTP retries?)"


def test_tracking_store_in_a_missing_folder_or_locked(prepared_project_template, tmp_path, monkeypatch):
    project = copy_project(prepared_project_template, tmp_path / "project")
    monkeypatch.chdir(project)
    # A database whose folder does not exist.
    missing = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    assert "does not exist" in tracking.probe_store(missing)
    set_tracking_uri(project, missing)
    warnings = run_in_session(project, "captions")
    assert any(f"{tmp_path}/nowhere" in m and "WITHOUT MLflow tracking" in m for m in warnings), warnings
    assert pd.read_csv(project / "data/05_model_input/captions.csv").shape[0] == 20  # 16 stills + 4 clips

    # A database another process keeps locked (an exclusive transaction that never ends).
    db = project / "mlflow.db"
    uri = f"sqlite:///{db}"
    set_tracking_uri(project, uri)
    holder = sqlite3.connect(db, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert "locked" in tracking.probe_store(uri, timeout=0.3)
        monkeypatch.setenv("MACHINING_T2V_MLFLOW_PROBE_TIMEOUT", "0.5")
        warnings = run_in_session(project, "captions")
        assert any(str(db) in m and "locked" in m for m in warnings), warnings
    finally:
        holder.rollback()
        holder.close()
    # The database was not damaged and is usable again.
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert tracking.probe_store(uri) is None

    # Whoever prefers no run to an untracked run can have that.
    monkeypatch.setenv("MACHINING_T2V_REQUIRE_MLFLOW", "1")
    set_tracking_uri(project, missing)
    with pytest.raises(RuntimeError, match="MACHINING_T2V_REQUIRE_MLFLOW"):
        run_in_session(project, "captions")


def test_store_failing_mid_run_is_reported_once_then_skipped(monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    calls = []

    def dead_store(*args, **kwargs):
        calls.append(args)
        raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed with "
                              "exception ... Connection refused")

    tracking.reset()
    monkeypatch.setattr(mlflow, "active_run", lambda: object())
    monkeypatch.setattr(mlflow, "log_metrics", dead_store)
    monkeypatch.setattr(mlflow, "set_tags", dead_store)
    records = Records()
    logging.getLogger("machining_t2v.kedro_glue.tracking").addHandler(records)
    try:
        for step in range(1, 50):
            tracking.log_metrics({"loss": 1.0 / step}, step=step)
        tracking.set_tags({"a": "b"})
    finally:
        logging.getLogger("machining_t2v.kedro_glue.tracking").removeHandler(records)
        tracking.reset()
    assert len(calls) == 1, "a dead store must not be called (and waited on) at every step"
    assert len(records.messages) == 1 and "nothing more of this run is logged" in records.messages[0]
    # A bad request is not a dead store: only that call is skipped.
    assert not tracking.is_store_error(MlflowException("Invalid metric name: 'a//b'"))


# --------------------------------------------------------------------------- two runs at once

_KEDRO_RUN = """
import sys
from pathlib import Path
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
from kedro.framework.cli.project import run
run.main(sys.argv[1:], prog_name="kedro run")
"""


def kedro_run(*args: str) -> list[str]:
    """``kedro run ARGS`` as a command line.

    While ``src/machining_t2v/cli.py`` has no click ``cli`` group, the ``kedro`` executable
    refuses to start in this project ("Cannot load commands from machining_t2v.cli"); then
    the command calls Kedro's ``run`` command object directly, which is what ``kedro run``
    dispatches to.
    """
    try:
        import machining_t2v.cli as project_cli

        kedro_cli_broken = not hasattr(project_cli, "cli")
    except ImportError:
        kedro_cli_broken = False
    if not kedro_cli_broken:
        return [str(Path(sys.executable).parent / "kedro"), "run", *args]
    return [sys.executable, "-c", _KEDRO_RUN, *args]


def assert_frames_outputs_consistent(project: Path) -> None:
    manifest = pd.read_csv(project / "data/03_primary/frame_manifest.csv")
    pd.read_csv(project / "data/08_reporting/skipped_videos.csv")
    for kind, folder in (("still", "stills"), ("clip", "clips")):
        files = sorted((project / "data/05_model_input" / folder).iterdir())
        assert all(p.suffix == ".png" for p in files), files  # no temporary files left
        assert sorted(manifest.loc[manifest["kind"] == kind, "sample_id"]) == [p.stem for p in files]
        for path in files:
            with Image.open(path) as image:
                image.load()
                assert np.asarray(image).size > 0


def frames_runs(project: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_two_kedro_runs_at_once_take_turns(prepared_project_template, tmp_path):
    project = copy_project(prepared_project_template, tmp_path / "project", fresh_mlflow=True)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # Both runs start while the project is busy (the test holds its lock), so they surely
    # overlap; once it is released they compete for it between themselves.
    lock = ProjectLock(project)
    lock.acquire("pytest")
    runs = []
    try:
        for log in logs:
            with open(log, "w") as out:
                runs.append(subprocess.Popen(kedro_run("--pipelines=frames"), cwd=project, env=subprocess_env(),
                                             stdout=out, stderr=subprocess.STDOUT))  # fmt: skip
        wait_for(lambda: all("Another run is using this project" in log.read_text() for log in logs), 180,
                 "both runs to wait for the project lock", poll=0.2)  # fmt: skip
    finally:
        lock.release()
    for run in runs:
        run.wait(timeout=300)
    outputs = [log.read_text() for log in logs]
    assert [run.returncode for run in runs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert_frames_outputs_consistent(project)
    db = sqlite3.connect(project / "mlflow.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    recorded = frames_runs(project)
    assert sorted((r.info.run_name, r.info.status) for r in recorded) == [("frames", "FINISHED")] * 2


@pytest.mark.slow
def test_second_run_can_fail_at_once_instead_of_waiting(prepared_project_template, tmp_path):
    project = copy_project(prepared_project_template, tmp_path / "project", fresh_mlflow=True)
    stills_before = {p.name: p.stat().st_mtime_ns for p in (project / "data/05_model_input/stills").iterdir()}
    with ProjectLock(project):  # a long run (e.g. training) holds the project
        done = subprocess.run(kedro_run("--pipelines=frames"), cwd=project, capture_output=True, text=True,
                              env=subprocess_env(MACHINING_T2V_RUN_LOCK_TIMEOUT="0"), timeout=300)  # fmt: skip
    assert done.returncode != 0
    output = " ".join((done.stdout + done.stderr).split())
    assert "Another run is using this project" in output and f"pid {os.getpid()}" in output, output[-3000:]
    # It failed before touching anything: no output rewritten, no MLflow run.
    after = {p.name: p.stat().st_mtime_ns for p in (project / "data/05_model_input/stills").iterdir()}
    assert after == stills_before
    assert not (project / "mlflow.db").exists() or frames_runs(project) == []
