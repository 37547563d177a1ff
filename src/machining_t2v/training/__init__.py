"""The one training-loop core shared by image-LoRA and motion-LoRA fine-tuning.

What differs between the two LoRA kinds (which model, which parameters train, frames
vs clips, the loss) is passed in: the caller hands over a model whose trainable
parameters have ``requires_grad=True`` and a ``compute_loss(model, indices, randomness)``
function. This module owns everything else: randomness, batching by sample index,
the optimizer and learning-rate schedule, mixed precision and gradient accumulation
(through ``accelerate``), gradient clipping, logging, checkpoints and exact resume.

It deliberately imports nothing from Kedro or MLflow so that it runs unchanged under
``accelerate launch``, in a notebook or from the console script; metrics leave
through the ``on_log`` callback.

Randomness contract (what makes resume bit-identical on CPU, and N processes train what
one process trains):

* a *sampler* generator, seeded from ``config.seed`` and identical on every process,
  draws the epoch permutations of ``range(num_samples)``;
* the loss's randomness is a pure function of the seed, the optimizer step, the
  micro-step and the sample's position in the global micro-batch: every micro-step
  ``compute_loss`` gets a :class:`LossRandomness` with one CPU generator per sample of
  this process's share (``per_sample``, seeded from ``(seed, step, micro_step,
  position)``) plus one generator ``shared`` that is identical on every process (for
  batch-level decisions). ``compute_loss`` must draw all of its randomness (noise,
  timesteps, caption dropout, frame offsets...) from it, in a fixed order, so sample
  ``k`` of the global batch sees the same draws whichever process computes it. Nothing
  of it needs storing in a checkpoint;
* the torch / numpy / python global RNGs are seeded too, from the seed and the process
  index (``set_seed(..., device_specific=True)``). peft's LoRA dropout and ``nn.Dropout``
  draw from torch's global RNG, per process: with dropout > 0 a run is still
  deterministic and resumes bit-identically on one process, but N processes no longer
  train exactly what one process trains;
* every checkpoint stores the sampler's and the global RNG states plus the current
  permutation and the position in it, so a resumed run draws exactly what the
  uninterrupted run would.

Data parallelism (``accelerate launch --multi_gpu --num_processes N``, ``torchrun``; on a
machine without CUDA the processes talk over gloo on the CPU):

* every process draws the same global batch of indices and trains on its
  ``1/N`` slice (``batch_size`` must divide by N); the model is *not* wrapped in
  ``DistributedDataParallel``: after the last micro-step the trainable gradients are
  averaged with one flat all-reduce, so ``compute_loss`` may run several forward passes,
  switch adapters or leave parameters unused, and an N-process step applies the same
  update as a one-process step on the whole batch. As the loss's draws depend on the
  sample's global position, not on the process, N processes end with the one-process
  weights up to float rounding, noise, timesteps and caption dropout included (not with
  dropout > 0, see above; and only if ``compute_loss`` is per-sample: a batch statistic
  such as batch norm sees only this process's share);
* the trainable weights are broadcast from process 0 at the start, like DDP does;
* the learning-rate schedule counts optimizer steps, whatever the process count, so a
  checkpoint resumes under another process count (same weights, optimizer, schedule,
  sample order and loss draws; only process 0's global RNG state is stored, which
  matters for dropout only);
* only the main process writes checkpoints, logs (``on_log``), validates and shows
  progress; a checkpoint that cannot be written stops every process with the same
  :class:`CheckpointWriteError`, and the previous checkpoint stays intact.

Checkpoints are written into ``checkpoint-<step>.tmp-<pid>`` and renamed into place, so
a crash or ``kill -9`` at any moment leaves either the complete new checkpoint or none;
old checkpoints are renamed out of the ``checkpoint-<step>`` namespace before deletion.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, set_seed
from torch import distributed as dist
from torch import nn
from tqdm.auto import tqdm

from machining_t2v.training.config import (
    TRAJECTORY_KEYS,
    CheckpointWriteError,
    NonFiniteLossError,
    TrainingConfig,
    TrainingResult,
    choose_mixed_precision,
    weight_dtype,
)
from machining_t2v.training.randomness import (
    EpochSampler,
    LossRandomness,
    derive_seed,
    global_rng_state,
    isolated_global_rng,
    set_global_rng_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointWriteError",
    "LossRandomness",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingResult",
    "choose_mixed_precision",
    "distributed_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainable",
    "train",
    "weight_dtype",
]

CHECKPOINT_PREFIX = "checkpoint-"
# Only fully written checkpoints match; ``checkpoint-12.tmp-345`` (being written or
# left by a crash) and ``checkpoint-12.old-345`` (being replaced) never do.
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def make_optimizer(name: str, groups: list[dict], config: TrainingConfig, device: torch.device):
    """AdamW from torch, or bitsandbytes' 8-bit AdamW (CUDA only), over ``groups``.

    Raises:
        ValueError: ``adamw8bit`` without a CUDA device, or bitsandbytes not installed.
    """
    options = {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2),
               "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    if name == "adamw":
        return torch.optim.AdamW(groups, **options)
    if device.type != "cuda":
        raise ValueError(f"optimizer 'adamw8bit' (bitsandbytes) needs a CUDA GPU; this run is on {device.type}. "
                         "Use optimizer: adamw.")
    try:
        import bitsandbytes
    except ImportError as error:
        raise ValueError("optimizer 'adamw8bit' needs bitsandbytes: pip install -e \".[gpu]\"") from error
    return bitsandbytes.optim.AdamW8bit(groups, **options)


# --------------------------------------------------------------------------- checkpoints


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
    params = _trainable_named_parameters(model)
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


def _trainable_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
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


# --------------------------------------------------------------------------- set-up helpers


def _use_cpu() -> bool:
    # The callers place tensors on "cuda" when it exists and on the CPU otherwise; without
    # CUDA, accelerate must not pick another device (e.g. MPS) and must join the processes
    # of a distributed launch over gloo instead of treating each one as a lone process.
    return not torch.cuda.is_available()


def distributed_state() -> PartialState:
    """The process state :func:`train` uses: process index/count, main process, barrier.

    A launcher calls this before :func:`train` (e.g. to save outputs on the main process
    only) so that both agree. Under ``accelerate launch --multi_gpu``/``torchrun`` on a
    machine without CUDA the processes join over gloo on the CPU; a state initialised
    earlier as single-process in such a launch is rebuilt.
    """
    shared = PartialState._shared_state
    if shared and not (dist.is_available() and dist.is_initialized()):
        state = PartialState()
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if (launched > 1 and state.num_processes == 1) or (_use_cpu() and state.device.type != "cpu"):
            AcceleratorState._reset_state(reset_partial_state=True)
    return PartialState(cpu=_use_cpu())


def _make_accelerator(config: TrainingConfig) -> Accelerator:
    mixed_precision = config.mixed_precision
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        logger.warning("mixed_precision='fp16' needs CUDA; training in full precision instead.")
        mixed_precision = "no"
    state = distributed_state()
    # accelerate keeps its state in a process-wide singleton that refuses a second
    # Accelerator with another precision; a notebook or a test suite that trains twice
    # in one single-process interpreter needs that state cleared first.
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision and state.num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=_use_cpu(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def _make_param_groups(
    model: nn.Module, param_groups: list[dict] | None, config: TrainingConfig
) -> list[dict]:
    trainable = _trainable_named_parameters(model)
    if param_groups is None:
        groups = [{"params": list(trainable.values()), "lr": config.learning_rate}]
    else:
        # Copy, so the caller's dicts are not mutated by the optimizer (it adds keys).
        groups = [{**g, "params": list(g["params"])} for g in param_groups]
    grouped = {id(p) for g in groups for p in g["params"]}
    frozen = [p for g in groups for p in g["params"] if not p.requires_grad]
    if frozen:
        raise ValueError(
            f"{len(frozen)} parameter(s) in param_groups have requires_grad=False; only "
            f"trainable parameters are optimised and checkpointed."
        )
    left_out = [n for n, p in trainable.items() if id(p) not in grouped]
    if left_out:
        logger.warning(
            "%d trainable parameter(s) are in no param group and will not be updated: %s",
            len(left_out),
            left_out[:5],
        )
    if not grouped:
        raise ValueError("No trainable parameters: set requires_grad=True on what should train.")
    return groups


def _make_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    # Stepped once per optimizer step on every process (not through accelerate's wrapper,
    # which steps once per process and would tie the schedule to the process count).
    warmup = config.lr_warmup_steps
    total = max(config.max_steps, 1)
    kind = config.lr_scheduler

    def lr_lambda(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step < warmup:
            return step / max(warmup, 1)
        if kind == "constant_with_warmup":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


# --------------------------------------------------------------------------- the loop


class _Run:
    """State of one call to :func:`train`: prepared objects, RNG streams, step and losses."""

    def __init__(self, model, compute_loss, num_samples, config, checkpoint_dir, param_groups,
                 loss_runs_backward=False):
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.compute_loss = compute_loss
        self.loss_runs_backward = loss_runs_backward
        self.num_samples = num_samples
        self.accelerator = _make_accelerator(config)
        acc = self.accelerator
        if config.batch_size % acc.num_processes:
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by the "
                f"{acc.num_processes} processes it is split across."
            )
        # Global RNGs (dropout): seed + process index. The loss draws from a LossRandomness
        # per micro-step instead, which depends on no process (see the module docstring).
        set_seed(config.seed, device_specific=True)
        self.sampler = EpochSampler(num_samples, config.seed)  # same on every process
        # This process's positions in every global micro-batch.
        self.positions = torch.arange(config.batch_size).tensor_split(acc.num_processes)[
            acc.process_index
        ].tolist()
        model.train()
        groups = _make_param_groups(model, param_groups, config)
        optimizer = make_optimizer(config.optimizer, groups, config, acc.device)
        # Device placement and mixed-precision autocast, but no DDP wrapper: gradients are
        # averaged explicitly in _sync_gradients (see the module docstring).
        self.model = acc.prepare_model(model, evaluation_mode=True)
        self.optimizer = acc.prepare_optimizer(optimizer)
        self.scheduler = _make_lr_scheduler(optimizer, config)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.global_step = 0
        self.losses: list[float] = []
        self.last_checkpoint: Path | None = None
        self.last_saved_step: int | None = None
        self._broadcast_trainable()

    # ---- data parallelism

    @property
    def distributed(self) -> bool:
        return self.accelerator.num_processes > 1

    def _broadcast_trainable(self) -> None:
        """Give every process process 0's trainable weights (DDP does the same at wrap time)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for group in _by_dtype_and_device(self.trainable):
                flat = torch.cat([p.detach().reshape(-1) for p in group])
                dist.broadcast(flat, src=0)
                for p, chunk in zip(group, flat.split([p.numel() for p in group]), strict=True):
                    p.copy_(chunk.view_as(p))

    def _sync_gradients(self) -> None:
        """Average the trainable gradients over processes with one all-reduce per dtype.

        A parameter with no gradient on any process keeps ``grad=None`` (as it would in a
        one-process run, where AdamW then skips it); one with a gradient somewhere gets
        zeros where it had none.
        """
        if not self.distributed:
            return
        device = self.accelerator.device
        has_grad = torch.tensor(
            [p.grad is not None for p in self.trainable], dtype=torch.float32, device=device
        )
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
        with_grad = []
        for p, flag in zip(self.trainable, has_grad.tolist(), strict=True):
            if flag:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                with_grad.append(p)
        world = self.accelerator.num_processes
        for group in _by_dtype_and_device(with_grad):
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(world)
            for p, chunk in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.grad.copy_(chunk.view_as(p.grad))

    def _raise_together(
        self,
        error: Exception | None,
        make_os_error: Callable[[str, int | None], Exception],
    ) -> None:
        """Raise on every process if the main process failed (the others would hang otherwise).

        ``error`` is the main process's exception (None on success and on other processes).
        An ``OSError`` becomes ``make_os_error(message, errno)`` everywhere; anything else
        is re-raised as is on the main process and as a ``RuntimeError`` on the others.
        """
        report = None
        if error is not None:
            is_os = isinstance(error, OSError)
            report = (f"{type(error).__name__}: {error}", is_os, getattr(error, "errno", None))
        if self.distributed:
            box = [report]
            broadcast_object_list(box, from_process=0)
            report = box[0]
        if report is None:
            return
        message, is_os, errno_ = report
        if is_os:
            raise make_os_error(message, errno_) from error
        if error is not None:
            raise error
        raise RuntimeError(f"The main process failed, stopping this one too: {message}")

    def check_writable(self) -> None:
        """Fail before the first step if the checkpoint folder cannot be created or written."""
        error = None
        if self.accelerator.is_main_process:
            probe = self.checkpoint_dir / f".write-test-{os.getpid()}"
            try:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                _write_durably(probe, b"ok")
                probe.unlink()
            except OSError as exc:
                error = exc
                with contextlib.suppress(OSError):
                    probe.unlink()
        self._raise_together(
            error,
            lambda message, errno_: CheckpointWriteError(
                self.checkpoint_dir, None, self.last_checkpoint, message, errno_
            ),
        )

    # ---- checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` atomically (main process) and prune old ones.

        Raises:
            CheckpointWriteError: on every process when the main process could not write it.
        """
        acc, step = self.accelerator, self.global_step
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
        error = None
        if acc.is_main_process:
            try:
                self._write_checkpoint(final, step)
            except Exception as exc:  # KeyboardInterrupt & co. are not turned into messages
                error = exc
            else:
                logger.info("Saved checkpoint %s", final)
                try:
                    _prune_checkpoints(self.checkpoint_dir, self.config.checkpoints_total_limit)
                except OSError as exc:  # the new checkpoint is safe; an old one left over is no harm
                    logger.warning("Could not remove old checkpoints from %s: %s", self.checkpoint_dir, exc)
        self._raise_together(
            error,
            lambda message, errno_: CheckpointWriteError(
                self.checkpoint_dir, step, self.last_checkpoint, message, errno_
            ),
        )
        acc.wait_for_everyone()
        self.last_checkpoint, self.last_saved_step = final, step
        return final

    def _write_checkpoint(self, final: Path, step: int) -> None:
        acc = self.accelerator
        tmp = self.checkpoint_dir / f"{final.name}.tmp-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            unwrapped = acc.unwrap_model(self.model)
            weights = {
                name: p.detach().to("cpu").contiguous().clone()
                for name, p in _trainable_named_parameters(unwrapped).items()
            }
            _write_durably(
                tmp / "trainable.safetensors",
                safetensors.torch.save(weights, metadata={"format": "pt", "step": str(step)}),
            )
            _write_durably(tmp / "optimizer.pt", _torch_bytes(self.optimizer.state_dict()))
            _write_durably(tmp / "scheduler.pt", _torch_bytes(self.scheduler.state_dict()))
            if acc.scaler is not None:
                _write_durably(tmp / "scaler.pt", _torch_bytes(acc.scaler.state_dict()))
            # The loss's draws are a function of the step: nothing to store for them.
            rng = {"sampler": self.sampler.state_dict(), "global": global_rng_state()}
            _write_durably(tmp / "rng.pt", _torch_bytes(rng))
            state = {
                "global_step": step,
                "losses": self.losses,
                "num_samples": self.num_samples,
                "num_processes": acc.num_processes,
                "lr_schedule_unit": "optimizer_step",
                "config": self.config.to_dict(),
            }
            # state.json last: list_checkpoints() also requires it to be present.
            _write_durably(tmp / "state.json", json.dumps(state, indent=1).encode())
            _publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_foreign_checkpoints(self) -> None:
        """Delete checkpoints later than the starting step: they belong to another history.

        Left in place, ``resume="latest"`` after a crash would jump into that other run,
        and the total limit would prune this run's own (older-numbered) checkpoints.
        """
        foreign = [
            p for p in list_checkpoints(self.checkpoint_dir) if _step_of(p) > self.global_step
        ]
        if foreign and self.accelerator.is_main_process:
            logger.warning(
                "Removing %d checkpoint(s) of a previous run from %s (this run starts at step %d): %s",
                len(foreign),
                self.checkpoint_dir,
                self.global_step,
                [p.name for p in foreign],
            )
            for path in foreign:
                _remove_checkpoint(path)
        self.accelerator.wait_for_everyone()

    def resume(self, resume: str) -> Path | None:
        """Restore everything from a checkpoint; returns its path (None: fresh start)."""
        if resume == "latest":
            # The main process decides, so that every process loads the same checkpoint.
            found = [latest_checkpoint(self.checkpoint_dir)]
            if self.distributed:
                broadcast_object_list(found, from_process=0)
            path = found[0]
            if path is None:
                logger.info(
                    "resume='latest': no checkpoint in %s, starting fresh.", self.checkpoint_dir
                )
                return None
        else:
            path = Path(resume)
            if not path.is_dir():
                raise FileNotFoundError(f"Checkpoint to resume from not found: {path}")
            if not (path / "state.json").is_file():
                raise FileNotFoundError(
                    f"Checkpoint to resume from is incomplete (no state.json): {path}"
                )
        acc = self.accelerator
        state = json.loads((path / "state.json").read_text())
        changed = [k for k in TRAJECTORY_KEYS if state["config"].get(k) != getattr(self.config, k)]
        if changed:
            logger.warning(
                "Resuming from %s with changed settings %s: the run will not continue "
                "exactly as it would have.",
                path,
                {k: (state["config"].get(k), getattr(self.config, k)) for k in changed},
            )
        load_trainable(acc.unwrap_model(self.model), path)
        self.optimizer.load_state_dict(_torch_load(path / "optimizer.pt"))
        self.scheduler.load_state_dict(_torch_load(path / "scheduler.pt"))
        saved_processes = int(state.get("num_processes", 1))
        if state.get("lr_schedule_unit") != "optimizer_step" and saved_processes > 1:
            # Written by an older version whose schedule advanced once per process per step.
            self.scheduler.last_epoch //= saved_processes
            self.scheduler._step_count = self.scheduler.last_epoch + 1
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
        self.sampler.load_state_dict(rng["sampler"])  # identical on all processes
        if acc.process_index == 0:
            set_global_rng_state(rng["global"])
        else:
            # Only the main process's global RNG state is stored; the others continue on
            # fresh streams derived from the step, still deterministic but not bit-identical
            # (only dropout draws from them).
            set_seed(  # numpy takes 32-bit seeds only
                derive_seed(self.config.seed, "resume", acc.process_index, state["global_step"])
                % 2**32
            )
        self.global_step = int(state["global_step"])
        self.losses = [float(x) for x in state["losses"]]
        self.last_checkpoint = path
        if path.resolve().parent == self.checkpoint_dir.resolve():
            self.last_saved_step = self.global_step
        logger.info("Resumed from %s at step %d", path, self.global_step)
        return path

    # ---- one optimizer step

    def step(self) -> tuple[float, float, float]:
        """Run one optimizer step (all its micro-steps); returns (loss, lr, grad_norm)."""
        acc, cfg = self.accelerator, self.config
        micro_losses = []
        for micro_step in range(cfg.gradient_accumulation_steps):
            with acc.accumulate(self.model):
                # Sample batch: the next global batch of indices, this process's shard of it.
                indices = self.sampler.next_batch(cfg.batch_size)
                indices = indices.tensor_split(acc.num_processes)[acc.process_index]
                # Forward + loss: all randomness inside comes from the samples' own generators,
                # keyed by their global position, so the process count does not change it.
                randomness = LossRandomness(
                    cfg.seed, self.global_step + 1, micro_step, self.positions
                )
                # A loss made of parts that need different model states in backward (the dual
                # path's LoRA scales, recomputed under gradient checkpointing) runs each part's
                # backward itself, through accelerate, and returns the detached sum.
                if self.loss_runs_backward:
                    loss = self.compute_loss(self.model, indices, randomness, acc.backward)
                else:
                    loss = self.compute_loss(self.model, indices, randomness)
                # Every process must see the same value, or a NaN on one would hang the others.
                mean_loss = acc.gather(loss.detach().float().reshape(1)).mean().item()
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(
                        self.global_step + 1, mean_loss, self.last_checkpoint, self.checkpoint_dir
                    )
                micro_losses.append(mean_loss)
                # Backward: accelerate divides by the accumulation steps (and scales for fp16).
                if not self.loss_runs_backward:
                    acc.backward(loss)
        # Average the gradients over processes, once per optimizer step.
        self._sync_gradients()
        # Clip: gradients are complete only after the last micro-step.
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.trainable, max_norm)
        # Step: the lr reported is the one this step used.
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16 overflow: no step, no schedule advance
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.losses.append(sum(micro_losses) / len(micro_losses))
        return self.losses[-1], lr, float(grad_norm)


def _by_dtype_and_device(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    return list(groups.values())


def _torch_load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def train(
    model: nn.Module,
    compute_loss: Callable[[nn.Module, torch.Tensor, LossRandomness], torch.Tensor],
    num_samples: int,
    config: TrainingConfig,
    checkpoint_dir: str | Path,
    *,
    param_groups: list[dict] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
    on_validate: Callable[[int], None] | None = None,
    validate_every: int = 0,
    progress: bool = True,
    description: str = "training",
    stop_at: int | None = None,
    loss_runs_backward: bool = False,
) -> TrainingResult:
    """Train the ``requires_grad`` parameters of ``model`` until ``config.max_steps``.

    Args:
        model: The model; only parameters with ``requires_grad=True`` train and are
            checkpointed, everything else is assumed fixed (rebuild it identically
            before resuming).
        compute_loss: ``compute_loss(model, indices, randomness) -> scalar loss``, the mean
            over ``indices``. ``model`` is the prepared model (on the accelerator's device,
            forward under autocast with mixed precision; never a DDP wrapper), ``indices``
            a CPU LongTensor of sample indices in ``range(num_samples)`` for this process's
            share of the batch, ``randomness`` a :class:`LossRandomness` with one CPU
            generator per index (``randomness.per_sample[i]`` belongs to ``indices[i]``)
            and one shared by all processes: all noise, timesteps and caption dropout
            must be drawn from it, so that resume is bit-identical and N processes train
            what one process trains. Dropout in the model draws from torch's global RNG,
            per process (see the module docstring).
        num_samples: Size of the dataset the indices refer to.
        config: Loop hyper-parameters.
        checkpoint_dir: Folder for ``checkpoint-<step>`` folders (created if missing).
        param_groups: AdamW param groups (``[{"params": [...], "lr": ...}]``); default one
            group of all trainable parameters at ``config.learning_rate``.
        on_log: Called every ``config.log_every`` steps with the step and
            ``{"loss", "lr", "steps_per_second", "grad_norm"}`` (main process only).
        on_checkpoint: Called with the step after a checkpoint is complete (main process).
        on_validate: Called with the step every ``validate_every`` steps (main process),
            model in eval mode under ``torch.no_grad()``; RNG use inside it does not
            disturb training.
        validate_every: Validation interval in optimizer steps; 0 disables it.
        progress: Show a tqdm progress bar (main process only).
        description: Progress-bar label.
        stop_at: Stop at this step instead (a checkpoint is written there), with the learning
            rate still on ``config.max_steps``'s schedule: a caller that changes the data
            between parts of one run (the starter's adapter stage renders a new world) calls
            again with ``resume="latest"`` and a later ``stop_at``, and the run goes on as one.
        loss_runs_backward: ``compute_loss`` is called as ``compute_loss(model, indices,
            randomness, backward)``, calls ``backward(part)`` on each part of its loss while the
            model is in the state that part's forward used, and returns the detached total.

    Returns:
        A :class:`TrainingResult`.

    Raises:
        NonFiniteLossError: when a loss is NaN/inf; nothing of that step is applied or saved.
        FileNotFoundError: when ``config.resume`` names a missing checkpoint.
        CheckpointWriteError: when the checkpoint folder cannot be written, before the
            first step or at a checkpoint (the previous checkpoint is left intact).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if stop_at is not None and stop_at < 0:
        raise ValueError(f"stop_at must be >= 0, got {stop_at}")
    last_step = config.max_steps if stop_at is None else min(stop_at, config.max_steps)
    run = _Run(model, compute_loss, num_samples, config, checkpoint_dir, param_groups, loss_runs_backward)
    acc = run.accelerator
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    try:
        run.check_writable()
        resumed = run.resume(config.resume) if config.resume is not None else None
        run.remove_foreign_checkpoints()
        start_step, start_time = run.global_step, time.perf_counter()
        window_step, window_time = start_step, start_time
        bar = tqdm(
            total=config.max_steps,
            initial=run.global_step,
            desc=description,
            unit="step",
            disable=not progress or not acc.is_main_process,
        )
        with bar:
            while run.global_step < last_step:
                loss, lr, grad_norm = run.step()
                step = run.global_step
                # Log
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3g}")
                if on_log is not None and step % config.log_every == 0 and acc.is_main_process:
                    now = time.perf_counter()
                    rate = (step - window_step) / max(now - window_time, 1e-9)
                    window_step, window_time = step, now
                    metrics = {
                        "loss": loss,
                        "lr": lr,
                        "steps_per_second": rate,
                        "grad_norm": grad_norm,
                    }
                    with isolated_global_rng():
                        on_log(step, metrics)
                # Checkpoint (the final one is written after the loop)
                if (
                    config.checkpoint_every
                    and step % config.checkpoint_every == 0
                    and step < last_step
                ):
                    run.save_checkpoint()
                    if on_checkpoint is not None and acc.is_main_process:
                        with isolated_global_rng():
                            on_checkpoint(step)
                # Validate
                if validate_every and step % validate_every == 0:
                    if on_validate is not None and acc.is_main_process:
                        run.model.eval()
                        with isolated_global_rng(), torch.no_grad():
                            on_validate(step)
                        run.model.train()
                    acc.wait_for_everyone()
        elapsed = time.perf_counter() - start_time
        if run.last_saved_step != run.global_step:
            run.save_checkpoint()
            if on_checkpoint is not None and acc.is_main_process:
                with isolated_global_rng():
                    on_checkpoint(run.global_step)
        steps_done = run.global_step - start_step
        result = TrainingResult(
            global_step=run.global_step,
            losses=list(run.losses),
            steps_per_second=steps_done / elapsed if steps_done and elapsed > 0 else 0.0,
            peak_memory_mb=_peak_memory_mb(acc.device),
            resumed_from=str(resumed) if resumed is not None else None,
            checkpoint_dir=run.checkpoint_dir,
            final_checkpoint=run.last_checkpoint,
        )
        logger.info(
            "%s: reached step %d (%d this run, %.2f steps/s, peak %.0f MB)",
            description,
            result.global_step,
            steps_done,
            result.steps_per_second,
            result.peak_memory_mb,
        )
        return result
    finally:
        # Drop accelerate's references to the model and optimizer so a notebook can train again.
        acc.free_memory()
