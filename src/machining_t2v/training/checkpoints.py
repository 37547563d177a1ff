"""Checkpoints of a training run: listing them, writing them durably, pruning them, and
saving or restoring everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``checkpoint-<step>`` holding the trainable weights
(``trainable.safetensors``), the optimizer, lr-schedule and (fp16) gradient-scaler states,
the sampler's and the global RNG states (``rng.pt``, see
:mod:`machining_t2v.training.randomness`) and ``state.json`` (step, loss history, config).
The loss's draws are a function of the step, so nothing of them is stored.

Checkpoints are written into ``checkpoint-<step>.tmp-<pid>`` and renamed into place, so
a crash or ``kill -9`` at any moment leaves either the complete new checkpoint or none;
old checkpoints are renamed out of the ``checkpoint-<step>`` namespace before deletion.
Only the main process writes; a checkpoint that cannot be written stops every process with
the same :class:`~machining_t2v.training.config.CheckpointWriteError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch import nn

from machining_t2v.training.config import TRAJECTORY_KEYS, CheckpointWriteError, TrainingConfig
from machining_t2v.training.distributed import raise_together
from machining_t2v.training.randomness import (
    EpochSampler,
    derive_seed,
    global_rng_state,
    set_global_rng_state,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
# Only fully written checkpoints match; ``checkpoint-12.tmp-345`` (being written or
# left by a crash) and ``checkpoint-12.old-345`` (being replaced) never do.
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Return the complete ``checkpoint-<step>`` folders in ``checkpoint_dir``, oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a complete checkpoint folder was written at (from its ``state.json``)."""
    state = Path(checkpoint) / "state.json"
    if not state.is_file():
        raise FileNotFoundError(f"Checkpoint to resume from not found or incomplete (no state.json): {checkpoint}")
    return int(json.loads(state.read_text())["global_step"])


def _step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT_RE.match(checkpoint.name).group(1))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint folder in ``checkpoint_dir`` (None if none)."""
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def load_trainable(model: nn.Module, checkpoint: str | Path) -> list[str]:
    """Copy the trainable weights of ``checkpoint`` into ``model`` in place.

    The names must match the model's ``requires_grad`` parameters exactly, so a resume
    onto a model with a different LoRA layout fails loudly instead of half-loading.

    Returns:
        The parameter names that were loaded.
    """
    path = Path(checkpoint) / "trainable.safetensors"
    weights = safetensors.torch.load_file(str(path))
    params = trainable_named_parameters(model)
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model's trainable parameters: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    return list(params)


def trainable_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, so the ones a checkpoint holds, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _write_durably(path: Path, data: bytes) -> None:
    # fsync before the folder rename, so the rename never publishes empty files after a
    # power cut (the rename itself is what protects against a crash of this process).
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _publish_dir(tmp: Path, final: Path) -> None:
    """Atomically rename ``tmp`` to ``final``, replacing an existing ``final`` if needed."""
    if final.exists():
        # A directory cannot be os.replace'd over a non-empty one; move the old one aside
        # under a name that never counts as a checkpoint, then drop it.
        aside = final.with_name(f"{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    with contextlib.suppress(OSError):  # directory fsync is not possible on every OS
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted one is ever listed.

    It is first renamed out of the ``checkpoint-<step>`` namespace (atomic), then deleted:
    a crash in the middle of the deletion leaves a ``.old-<pid>`` folder, never a
    ``checkpoint-<step>`` that ``resume: latest`` could pick with files missing.
    """
    aside = path.with_name(f"{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _prune_checkpoints(checkpoint_dir: Path, limit: int | None) -> None:
    if limit is None:
        return
    for old in list_checkpoints(checkpoint_dir)[:-limit]:
        logger.info("Removing old checkpoint %s (checkpoints_total_limit=%d)", old, limit)
        _remove_checkpoint(old)


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- a run's state


@dataclass
class RunState:
    """A run between two optimizer steps: what a checkpoint stores and a resume restores.

    Attributes:
        model: The model as accelerate prepared it; its ``requires_grad`` parameters train.
        optimizer: The optimizer as accelerate prepared it.
        scheduler: The learning-rate schedule, stepped once per optimizer step.
        sampler: The epoch sampler drawing the sample indices.
        num_samples: Size of the dataset the indices refer to.
        global_step: Optimizer steps taken (including resumed ones).
        losses: One mean loss per optimizer step, from step 1.
        last_checkpoint: The newest complete checkpoint of this run (or the one it resumed
            from), if any.
        last_saved_step: The step of the newest checkpoint in this run's checkpoint folder.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: EpochSampler
    num_samples: int
    global_step: int = 0
    losses: list[float] = field(default_factory=list)
    last_checkpoint: Path | None = None
    last_saved_step: int | None = None

    @property
    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def check_writable(checkpoint_dir: Path, accelerator: Accelerator) -> None:
    """Fail before the first step if the checkpoint folder cannot be created or written.

    Raises:
        CheckpointWriteError: on every process when the main process could not write there.
    """
    error = None
    if accelerator.is_main_process:
        probe = checkpoint_dir / f".write-test-{os.getpid()}"
        try:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _write_durably(probe, b"ok")
            probe.unlink()
        except OSError as exc:
            error = exc
            with contextlib.suppress(OSError):
                probe.unlink()
    raise_together(
        accelerator,
        error,
        lambda message, errno_: CheckpointWriteError(checkpoint_dir, None, None, message, errno_),
    )


def save_checkpoint(
    state: RunState, checkpoint_dir: Path, accelerator: Accelerator, config: TrainingConfig
) -> Path:
    """Write ``checkpoint-<step>`` of ``state`` atomically (main process) and prune old ones.

    Raises:
        CheckpointWriteError: on every process when the main process could not write it.
    """
    step = state.global_step
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    error = None
    if accelerator.is_main_process:
        try:
            _write_checkpoint(state, final, accelerator, config)
        except Exception as exc:  # KeyboardInterrupt & co. are not turned into messages
            error = exc
        else:
            logger.info("Saved checkpoint %s", final)
            try:
                _prune_checkpoints(checkpoint_dir, config.checkpoints_total_limit)
            except OSError as exc:  # the new checkpoint is safe; an old one left over is no harm
                logger.warning("Could not remove old checkpoints from %s: %s", checkpoint_dir, exc)
    raise_together(
        accelerator,
        error,
        lambda message, errno_: CheckpointWriteError(
            checkpoint_dir, step, state.last_checkpoint, message, errno_
        ),
    )
    accelerator.wait_for_everyone()
    state.last_checkpoint, state.last_saved_step = final, step
    return final


def _write_checkpoint(
    state: RunState, final: Path, accelerator: Accelerator, config: TrainingConfig
) -> None:
    step = state.global_step
    tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        unwrapped = accelerator.unwrap_model(state.model)
        weights = {
            name: p.detach().to("cpu").contiguous().clone()
            for name, p in trainable_named_parameters(unwrapped).items()
        }
        _write_durably(
            tmp / "trainable.safetensors",
            safetensors.torch.save(weights, metadata={"format": "pt", "step": str(step)}),
        )
        _write_durably(tmp / "optimizer.pt", _torch_bytes(state.optimizer.state_dict()))
        _write_durably(tmp / "scheduler.pt", _torch_bytes(state.scheduler.state_dict()))
        if accelerator.scaler is not None:
            _write_durably(tmp / "scaler.pt", _torch_bytes(accelerator.scaler.state_dict()))
        # The loss's draws are a function of the step: nothing to store for them.
        rng = {"sampler": state.sampler.state_dict(), "global": global_rng_state()}
        _write_durably(tmp / "rng.pt", _torch_bytes(rng))
        saved = {
            "global_step": step,
            "losses": state.losses,
            "num_samples": state.num_samples,
            "num_processes": accelerator.num_processes,
            "lr_schedule_unit": "optimizer_step",
            "config": config.to_dict(),
        }
        # state.json last: list_checkpoints() also requires it to be present.
        _write_durably(tmp / "state.json", json.dumps(saved, indent=1).encode())
        _publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_foreign_checkpoints(checkpoint_dir: Path, step: int, accelerator: Accelerator) -> None:
    """Delete checkpoints later than the starting ``step``: they belong to another history.

    Left in place, ``resume="latest"`` after a crash would jump into that other run,
    and the total limit would prune this run's own (older-numbered) checkpoints.
    """
    foreign = [p for p in list_checkpoints(checkpoint_dir) if _step_of(p) > step]
    if foreign and accelerator.is_main_process:
        logger.warning(
            "Removing %d checkpoint(s) of a previous run from %s (this run starts at step %d): %s",
            len(foreign),
            checkpoint_dir,
            step,
            [p.name for p in foreign],
        )
        for path in foreign:
            _remove_checkpoint(path)
    accelerator.wait_for_everyone()


def resume_run(
    state: RunState,
    resume: str,
    checkpoint_dir: Path,
    accelerator: Accelerator,
    config: TrainingConfig,
) -> Path | None:
    """Restore ``state`` from a checkpoint (``"latest"`` in ``checkpoint_dir``, or a folder).

    Returns:
        The checkpoint's path; None when ``resume="latest"`` found none (a fresh start).

    Raises:
        FileNotFoundError: when ``resume`` names a missing or incomplete checkpoint.
    """
    if resume == "latest":
        # The main process decides, so that every process loads the same checkpoint.
        found = [latest_checkpoint(checkpoint_dir)]
        if accelerator.num_processes > 1:
            broadcast_object_list(found, from_process=0)
        path = found[0]
        if path is None:
            logger.info("resume='latest': no checkpoint in %s, starting fresh.", checkpoint_dir)
            return None
    else:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"Checkpoint to resume from not found: {path}")
        if not (path / "state.json").is_file():
            raise FileNotFoundError(
                f"Checkpoint to resume from is incomplete (no state.json): {path}"
            )
    acc = accelerator
    saved = json.loads((path / "state.json").read_text())
    changed = [k for k in TRAJECTORY_KEYS if saved["config"].get(k) != getattr(config, k)]
    if changed:
        logger.warning(
            "Resuming from %s with changed settings %s: the run will not continue "
            "exactly as it would have.",
            path,
            {k: (saved["config"].get(k), getattr(config, k)) for k in changed},
        )
    load_trainable(acc.unwrap_model(state.model), path)
    state.optimizer.load_state_dict(_torch_load(path / "optimizer.pt"))
    state.scheduler.load_state_dict(_torch_load(path / "scheduler.pt"))
    saved_processes = int(saved.get("num_processes", 1))
    if saved.get("lr_schedule_unit") != "optimizer_step" and saved_processes > 1:
        # Written by an older version whose schedule advanced once per process per step.
        state.scheduler.last_epoch //= saved_processes
        state.scheduler._step_count = state.scheduler.last_epoch + 1
    if saved_processes != acc.num_processes:
        logger.info(
            "Resuming a checkpoint written by %d process(es) with %d: same weights, "
            "optimizer, schedule, sample order and loss draws; new global RNG streams "
            "(dropout) on processes > 0.",
            saved_processes,
            acc.num_processes,
        )
    if acc.scaler is not None and (path / "scaler.pt").is_file():
        acc.scaler.load_state_dict(_torch_load(path / "scaler.pt"))
    # Older checkpoints also hold a per-process "loss_generator" state: no longer used,
    # the loss's draws are derived from the step.
    rng = _torch_load(path / "rng.pt")
    state.sampler.load_state_dict(rng["sampler"])  # identical on all processes
    if acc.process_index == 0:
        set_global_rng_state(rng["global"])
    else:
        # Only the main process's global RNG state is stored; the others continue on
        # fresh streams derived from the step, still deterministic but not bit-identical
        # (only dropout draws from them).
        set_seed(  # numpy takes 32-bit seeds only
            derive_seed(config.seed, "resume", acc.process_index, saved["global_step"]) % 2**32
        )
    state.global_step = int(saved["global_step"])
    state.losses = [float(x) for x in saved["losses"]]
    state.last_checkpoint = path
    if path.resolve().parent == checkpoint_dir.resolve():
        state.last_saved_step = state.global_step
    logger.info("Resumed from %s at step %d", path, state.global_step)
    return path
