"""Accelerate set-up and data parallelism: which processes train, and how they stay in step.

Data parallelism (``accelerate launch --multi_gpu --num_processes N``, ``torchrun``; on a
machine without CUDA the processes talk over gloo on the CPU):

* every process draws the same global batch of indices and trains on its
  ``1/N`` slice (``batch_size`` must divide by N); the model is *not* wrapped in
  ``DistributedDataParallel``: after the last micro-step the trainable gradients are
  averaged with one flat all-reduce (:func:`average_gradients`), so ``compute_loss`` may
  run several forward passes, switch adapters or leave parameters unused, and an
  N-process step applies the same update as a one-process step on the whole batch. As
  the loss's draws depend on the sample's global position, not on the process (see
  :mod:`machining_t2v.training.randomness`), N processes end with the one-process
  weights up to float rounding, noise, timesteps and caption dropout included (not with
  dropout > 0; and only if ``compute_loss`` is per-sample: a batch statistic such as
  batch norm sees only this process's share);
* the trainable weights are broadcast from process 0 at the start, like DDP does
  (:func:`broadcast_trainable`);
* the learning-rate schedule counts optimizer steps, whatever the process count, so a
  checkpoint resumes under another process count (same weights, optimizer, schedule,
  sample order and loss draws; only process 0's global RNG state is stored, which
  matters for dropout only);
* only the main process writes checkpoints, logs (``on_log``), validates and shows
  progress; a checkpoint that cannot be written stops every process with the same
  :class:`~machining_t2v.training.config.CheckpointWriteError`, and the previous
  checkpoint stays intact (:func:`raise_together`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list
from torch import distributed as dist
from torch import nn

from machining_t2v.training.config import TrainingConfig

logger = logging.getLogger(__name__)


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


def make_accelerator(config: TrainingConfig) -> Accelerator:
    """The run's Accelerator: device, mixed precision and gradient accumulation of ``config``."""
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


def process_share(batch: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """This process's slice of a global batch (all of it on one process)."""
    return batch.tensor_split(accelerator.num_processes)[accelerator.process_index]


def broadcast_trainable(accelerator: Accelerator, trainable: list[nn.Parameter]) -> None:
    """Give every process process 0's trainable weights (DDP does the same at wrap time)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for group in _by_dtype_and_device(trainable):
            flat = torch.cat([p.detach().reshape(-1) for p in group])
            dist.broadcast(flat, src=0)
            for p, chunk in zip(group, flat.split([p.numel() for p in group]), strict=True):
                p.copy_(chunk.view_as(p))


def average_gradients(accelerator: Accelerator, trainable: list[nn.Parameter]) -> None:
    """Average the trainable gradients over processes with one all-reduce per dtype.

    A parameter with no gradient on any process keeps ``grad=None`` (as it would in a
    one-process run, where AdamW then skips it); one with a gradient somewhere gets
    zeros where it had none.
    """
    if accelerator.num_processes == 1:
        return
    device = accelerator.device
    has_grad = torch.tensor(
        [p.grad is not None for p in trainable], dtype=torch.float32, device=device
    )
    dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
    with_grad = []
    for p, flag in zip(trainable, has_grad.tolist(), strict=True):
        if flag:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            with_grad.append(p)
    world = accelerator.num_processes
    for group in _by_dtype_and_device(with_grad):
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        for p, chunk in zip(group, flat.split([p.numel() for p in group]), strict=True):
            p.grad.copy_(chunk.view_as(p.grad))


def raise_together(
    accelerator: Accelerator,
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
    if accelerator.num_processes > 1:
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


def _by_dtype_and_device(params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    return list(groups.values())
