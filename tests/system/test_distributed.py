"""Data-parallel training: N processes (gloo on the CPU here) train what one process trains.

The toy runs go through ``training.train`` in worker processes started with
``accelerate launch --multi_gpu --num_processes 2`` (on a machine without CUDA the core joins
the processes over gloo); this module is also the worker (``python -m tests.system.test_distributed``).
The toy loss adds input noise drawn per sample from the loop's ``LossRandomness``, which
depends on the sample's position in the global batch, not on the process: one and two
processes must end with equal weights up to float rounding. The last tests run the real
launcher, ``machining_t2v.training.launch image_ft``, on one and two processes: the diffusion loss
(noise, timesteps, caption dropout) gives the same image LoRA up to float rounding too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from machining_t2v.training import (
    CheckpointWriteError,
    LossRandomness,
    TrainingConfig,
    distributed_state,
    latest_checkpoint,
    list_checkpoints,
    train,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NUM_SAMPLES = 32
_GEN = torch.Generator().manual_seed(1234)
X = torch.randn(NUM_SAMPLES, 8, generator=_GEN)
Y = X @ torch.randn(8, 1, generator=_GEN) + 0.5
# Global batch 8 split 4 + 4, accumulation, warm-up + cosine and a clip that bites: everything
# whose meaning could change with the process count.
TOY_CONFIG = {"max_steps": 12, "batch_size": 8, "gradient_accumulation_steps": 2, "learning_rate": 1e-2,
              "lr_scheduler": "cosine", "lr_warmup_steps": 3, "max_grad_norm": 0.5, "checkpoint_every": 4,
              "checkpoints_total_limit": None}
TOLERANCE = 1e-6


class Interrupt(Exception):
    """Stands in for a crash in the middle of training."""


def make_toy_model(extra_params: int = 0) -> nn.Module:
    """An MLP with a frozen first-layer weight, no dropout (it would draw from each process's own RNG).

    ``extra_params`` adds a trainable tensor of that many floats, to make checkpoints big.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    model[0].weight.requires_grad_(False)
    if extra_params:
        model.register_parameter("ballast", nn.Parameter(torch.zeros(extra_params)))
    return model


def toy_loss(model: nn.Module, indices: torch.Tensor, randomness: LossRandomness) -> torch.Tensor:
    """MSE with input noise drawn per sample, as the diffusion loss draws its noise and timesteps."""
    noise = 0.05 * randomness.randn(X.shape[1])
    loss = nn.functional.mse_loss(model(X[indices] + noise), Y[indices])
    ballast = getattr(model, "ballast", None)
    return loss if ballast is None else loss + 1e-6 * ballast.square().mean()


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(num_processes: int, module_args: list[str]) -> list[str]:
    """The command that starts ``python -m <module_args>`` on N CPU processes."""
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", *module_args]  # fmt: skip


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
           "COLUMNS": "1000", **extra}  # COLUMNS: Kedro's rich log lines are not wrapped
    env.pop("WORLD_SIZE", None)
    return env


def run_toy_worker(num_processes: int, out: Path, timeout: float = 240, **options) -> subprocess.CompletedProcess:
    """Run the toy training (this module as the worker) on 1 or N processes; see ``_worker``."""
    args = ["tests.system.test_distributed", "--out", str(out), "--options", json.dumps(options)]
    command = accelerate_launch(num_processes, args) if num_processes > 1 else [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def worker_result(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / "result.json").read_text()), safetensors.torch.load_file(out / "final.safetensors")


# --------------------------------------------------------------------------- worker


def _worker(argv: list[str]) -> int:
    """Train the toy model; the main process writes ``result.json`` and ``final.safetensors``.

    Options (JSON): ``config`` (TrainingConfig overrides), ``stop_after_calls`` (every
    process raises after that many loss calls: a crash), ``fsize_limit_after_step`` and
    ``fsize_limit`` (from that checkpoint on, the main process may write files of at most
    that many bytes: a full disk), ``extra_params``.
    """
    import logging
    import resource
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    state = distributed_state()
    logging.basicConfig(level=logging.INFO, format=f"[rank {state.process_index}] %(name)s: %(message)s")
    config = TrainingConfig.from_dict({**TOY_CONFIG, **options.get("config", {})})
    model = make_toy_model(options.get("extra_params", 0))
    calls = {"n": 0}

    def loss(model, indices, randomness):
        calls["n"] += 1
        if options.get("stop_after_calls") and calls["n"] > options["stop_after_calls"]:
            raise Interrupt(f"stopped after {options['stop_after_calls']} loss calls")
        return toy_loss(model, indices, randomness)

    def on_checkpoint(step):
        if options.get("fsize_limit_after_step") == step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (options["fsize_limit"], resource.RLIM_INFINITY))

    try:
        result = train(model, loss, NUM_SAMPLES, config, args.out / "checkpoints", on_checkpoint=on_checkpoint,
                       progress=False)  # fmt: skip
    except Interrupt as error:
        print(f"[rank {state.process_index}] INTERRUPTED: {error}", flush=True)
        return 3
    except CheckpointWriteError as error:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print(f"[rank {state.process_index}] CheckpointWriteError: {error}", flush=True)
        if state.is_main_process:
            (args.out / "error.json").write_text(json.dumps(
                {"message": str(error), "errno": error.errno, "step": error.step,
                 "checkpoint_dir": str(error.checkpoint_dir), "last_checkpoint": str(error.last_checkpoint)}))
        return 4
    if state.is_main_process:
        safetensors.torch.save_file(trainable(model), args.out / "final.safetensors")
        (args.out / "result.json").write_text(json.dumps(
            {"losses": result.losses, "global_step": result.global_step, "resumed_from": result.resumed_from,
             "num_processes": state.num_processes}))
    return 0


# --------------------------------------------------------------------------- toy: equivalence


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    """The uninterrupted one-process run, in this process."""
    out = tmp_path_factory.mktemp("one_process")
    model = make_toy_model()
    result = train(model, toy_loss, NUM_SAMPLES, TrainingConfig(**TOY_CONFIG), out, progress=False)
    return result, trainable(model)


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(one_process_reference, tmp_path):
    reference, reference_weights = one_process_reference
    done = run_toy_worker(2, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result, weights = worker_result(tmp_path)
    assert result["num_processes"] == 2 and result["global_step"] == 12
    difference = max_difference(reference_weights, weights)
    print(f"max |w(1 process) - w(2 processes)| = {difference:.3g}")
    assert difference < TOLERANCE
    assert result["losses"] == pytest.approx(reference.losses, rel=1e-5)
    # Written once, by the main process: one log line per checkpoint, all from rank 0.
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    saved = [line for line in done.stderr.splitlines() if "Saved checkpoint" in line]
    assert len(saved) == 3 and all(line.startswith("[rank 0]") for line in saved), saved
    state = json.loads((checkpoints / "checkpoint-12" / "state.json").read_text())
    assert state["num_processes"] == 2 and state["lr_schedule_unit"] == "optimizer_step"
    # The learning-rate schedule counts optimizer steps, not steps x processes.
    one = torch.load(reference.checkpoint_dir / "checkpoint-12" / "scheduler.pt", weights_only=True)
    two = torch.load(checkpoints / "checkpoint-12" / "scheduler.pt", weights_only=True)
    assert one["last_epoch"] == two["last_epoch"] == 12


@pytest.mark.slow
def test_resume_across_process_counts(one_process_reference, tmp_path):
    _, reference_weights = one_process_reference
    # 2 processes crash at step 6 (each process makes 2 loss calls per step); 1 process finishes.
    crashed = run_toy_worker(2, tmp_path / "two", stop_after_calls=11)
    assert crashed.returncode != 0 and "INTERRUPTED" in crashed.stdout, crashed.stdout + crashed.stderr
    checkpoints = tmp_path / "two" / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    model = make_toy_model()
    resumed = train(model, toy_loss, NUM_SAMPLES, TrainingConfig(**{**TOY_CONFIG, "resume": "latest"}),
                    checkpoints, progress=False)  # fmt: skip
    assert resumed.resumed_from == str(checkpoints / "checkpoint-4") and resumed.global_step == 12
    two_then_one = max_difference(reference_weights, trainable(model))
    assert two_then_one < TOLERANCE

    # 1 process crashes at step 6; 2 processes finish.
    checkpoints = tmp_path / "one" / "out" / "checkpoints"

    def crash_at_6(step, metrics):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(make_toy_model(), toy_loss, NUM_SAMPLES, TrainingConfig(**TOY_CONFIG), checkpoints, on_log=crash_at_6,
              progress=False)  # fmt: skip
    done = run_toy_worker(2, tmp_path / "one" / "out", config={"resume": "latest"})
    assert done.returncode == 0, done.stdout + done.stderr
    result, weights = worker_result(tmp_path / "one" / "out")
    assert result["resumed_from"].endswith("checkpoint-4") and result["global_step"] == 12
    one_then_two = max_difference(reference_weights, weights)
    print(f"resume 2->1 processes: max diff {two_then_one:.3g}; 1->2: {one_then_two:.3g}")
    assert one_then_two < TOLERANCE


@pytest.mark.slow
def test_checkpoint_write_failure_stops_every_process(tmp_path):
    # From the first checkpoint on, the main process can write no file over 1 KiB (a full disk).
    done = run_toy_worker(2, tmp_path, timeout=180, fsize_limit_after_step=4, fsize_limit=1024)
    assert done.returncode != 0
    assert done.stdout.count("CheckpointWriteError") == 2, done.stdout + done.stderr  # both ranks, no hang
    error = json.loads((tmp_path / "error.json").read_text())
    checkpoints = tmp_path / "checkpoints"
    assert error["step"] == 8 and error["checkpoint_dir"] == str(checkpoints)
    assert str(checkpoints) in error["message"] and "File too large" in error["message"]
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-4"]
    safetensors.torch.load_file(checkpoints / "checkpoint-4" / "trainable.safetensors")


# --------------------------------------------------------------------------- the real launcher


@pytest.fixture(scope="session")
def prepared_project_template(tmp_path_factory):
    return prepare_project_template(tmp_path_factory)


def prepare_project_template(tmp_path_factory) -> Path:
    """A project copy after ``data_prep`` (4 small sample videos) with the tiny model built.

    Built once per session and shared with test_faults.py; tests work on copies
    (:func:`copy_project`).
    """
    from machining_t2v.fixtures.tiny_model import build_tiny_model
    from tests.conftest import run_in_new_project

    root = tmp_path_factory.getbasetemp() / "prepared_project"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        run_in_new_project(root, "data_prep", {
            "sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 2.0, "max_seconds": 2.0}})
        build_tiny_model(root / "data/06_models/tiny-sd")
        (root / ".complete").write_text("ok")
    return root


def copy_project(template: Path, root: Path, fresh_mlflow: bool = False) -> Path:
    """A copy of the prepared project whose MLflow store is its own (``fresh_mlflow``: empty)."""
    shutil.copytree(template, root, ignore=shutil.ignore_patterns(".complete"))
    local = root / "conf/local/mlflow.yml"
    local.write_text(local.read_text().replace(f"sqlite:///{template}/", f"sqlite:///{root}/"))
    if fresh_mlflow:
        (root / "mlflow.db").unlink(missing_ok=True)
        shutil.rmtree(root / "mlruns", ignore_errors=True)
    return root


# Accumulation (micro-steps), caption dropout and noise offset: every draw of the diffusion loss.
LAUNCH_PARAMS = ("image_ft.training.max_steps=12,image_ft.training.batch_size=4,"
                 "image_ft.training.gradient_accumulation_steps=2,image_ft.training.checkpoint_every=6,"
                 "image_ft.training.lr_warmup_steps=2,image_ft.loss.caption_dropout=0.25,"
                 "image_ft.loss.noise_offset=0.05,image_ft.validation.every=0,"
                 "image_ft.validation.num_inference_steps=1,image_ft.training.log_every=1")
# Relative to the largest LoRA weight; measured 1-vs-2-process difference: see the test.
REAL_LORA_TOLERANCE = 1e-5
LORA_FILE = "data/06_models/image_lora/pytorch_lora_weights.safetensors"


def launch_image_ft(root: Path, num_processes: int, *options: str) -> subprocess.CompletedProcess:
    """``machining_t2v.training.launch image_ft`` (training only) on 1 process (plain python) or N (accelerate)."""
    args = ["machining_t2v.training.launch", "image_ft", "--project-path", str(root), "--train-only",
            "--params", LAUNCH_PARAMS, *options]  # fmt: skip
    command = accelerate_launch(num_processes, args) if num_processes > 1 else [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=500)


@pytest.fixture(scope="module")
def two_process_image_lora(prepared_project_template, tmp_path_factory) -> Path:
    """The project after the real launcher trained the image LoRA on two processes."""
    root = copy_project(prepared_project_template, tmp_path_factory.mktemp("two_processes") / "project")
    done = launch_image_ft(root, 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return root


@pytest.mark.slow
def test_launcher_trains_the_image_lora_on_two_processes(two_process_image_lora):
    import mlflow

    from machining_t2v.kedro_glue.datasets import LoraFolderDataset

    root = two_process_image_lora
    lora = LoraFolderDataset(path=str(root / "data/06_models/image_lora"), kind="image").load()
    assert lora.info["steps"] == 12 and lora.state_dict
    summary = json.loads((root / "data/08_reporting/image_ft_summary.json").read_text())
    assert summary["steps"] == 12 and summary["training_config"]["batch_size"] == 4
    checkpoints = root / "data/06_models/checkpoints/image_ft"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-12", "checkpoint-6"]
    assert json.loads((checkpoints / "checkpoint-12" / "state.json").read_text())["num_processes"] == 2
    # The LoRA saved through the catalog is the final checkpoint's weights.
    final = safetensors.torch.load_file(checkpoints / "checkpoint-12" / "trainable.safetensors")
    assert len(final) == len(lora.state_dict)
    # One MLflow run, from the main process, with the training metrics.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("launcher")]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["num_processes"] == "2"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "image_ft.loss")] == list(range(1, 13))
    assert runs[0].data.params["image_ft.training.max_steps"] == "12"


@pytest.mark.slow
def test_two_processes_train_the_image_lora_one_process_trains(two_process_image_lora, prepared_project_template,
                                                                tmp_path):
    """The real diffusion loss, with noise, timesteps, caption dropout and noise offset: equal LoRAs."""
    root = copy_project(prepared_project_template, tmp_path / "project")
    done = launch_image_ft(root, 1, "--no-mlflow")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    one = safetensors.torch.load_file(root / LORA_FILE)
    two = safetensors.torch.load_file(two_process_image_lora / LORA_FILE)
    assert one.keys() == two.keys() and one
    scale = max(t.abs().max().item() for t in one.values())
    difference = max_difference(one, two)
    relative_l2 = (sum((one[k].double() - two[k].double()).square().sum() for k in one).sqrt()
                   / sum(t.double().square().sum() for t in one.values()).sqrt()).item()  # fmt: skip
    # The LoRA trained (its up/B matrices start at zero), so these are not just equal initial weights.
    trained = max(t.abs().max().item() for k, t in one.items() if ".lora.up." in k or ".lora_B." in k)
    print(f"image LoRA, 1 vs 2 processes: max |diff| {difference:.3g} ({difference / scale:.3g} of the largest "
          f"weight {scale:.3g}), relative L2 {relative_l2:.3g}; largest up weight {trained:.3g}")
    assert trained > 1e-3
    # Measured on CPU: max |diff| 1.8e-7 (3.3e-7 of the largest weight), relative L2 6.9e-8. With one noise
    # stream per process (before LossRandomness): max |diff| 9e-3, relative L2 1.9e-2.
    assert difference < REAL_LORA_TOLERANCE * scale
    assert relative_l2 < REAL_LORA_TOLERANCE
    summaries = [json.loads((r / "data/08_reporting/image_ft_summary.json").read_text())
                 for r in (root, two_process_image_lora)]  # fmt: skip
    assert summaries[0]["final_loss"] == pytest.approx(summaries[1]["final_loss"], rel=1e-4)
    assert summaries[0]["validation_loss"] == pytest.approx(summaries[1]["validation_loss"], rel=1e-4)


def test_launcher_params_parse_like_kedro_run():
    from machining_t2v.training.launch import parse_params

    assert parse_params(["a.b=1,a.c=x", "d=[1, 2],e=null"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2], "e": None}
    with pytest.raises(ValueError, match="key=value"):
        parse_params(["novalue"])


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
