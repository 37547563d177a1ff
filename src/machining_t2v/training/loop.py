"""The training loop: set up the run, then take optimizer steps, logging, checkpointing and
validating as asked, until the last step.

What differs between the two LoRA kinds (which model, which parameters train, frames vs
clips, the loss) is passed in: the caller hands over a model whose trainable parameters have
``requires_grad=True`` and a ``compute_loss(model, indices, randomness)`` function. This
module owns everything else: batching by sample index, the optimizer and learning-rate
schedule, mixed precision and gradient accumulation (through ``accelerate``), gradient
clipping and logging; randomness, checkpoints and the processes of a distributed launch have
their own modules beside it.

One optimizer step (:func:`_optimizer_step`) reads top to bottom: per micro-step, sample
the batch, draw the loss's randomness, forward and loss, stop on a non-finite loss,
backward; then average the gradients over processes, clip, step the optimizer and schedule.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from machining_t2v.training.checkpoints import (
    RunState,
    check_writable,
    remove_foreign_checkpoints,
    resume_run,
    save_checkpoint,
    trainable_named_parameters,
)
from machining_t2v.training.config import NonFiniteLossError, TrainingConfig, TrainingResult
from machining_t2v.training.distributed import (
    average_gradients,
    broadcast_trainable,
    make_accelerator,
    process_share,
)
from machining_t2v.training.randomness import EpochSampler, LossRandomness, isolated_global_rng

logger = logging.getLogger(__name__)


def make_optimizer(name: str, groups: list[dict], config: TrainingConfig, device: torch.device):
    """AdamW from torch, bitsandbytes' 8-bit AdamW (CUDA only) or Prodigy, over ``groups``.

    Raises:
        ValueError: ``adamw8bit`` without a CUDA device, or bitsandbytes not installed.
    """
    options = {"lr": config.learning_rate, "betas": (config.adam_beta1, config.adam_beta2),
               "weight_decay": config.adam_weight_decay, "eps": config.adam_epsilon}
    if name == "adamw":
        return torch.optim.AdamW(groups, **options)
    if name == "prodigy":
        from prodigyopt import Prodigy

        if config.learning_rate < 0.1:
            logger.warning("optimizer prodigy finds the step size itself and learning_rate (%g) scales it; "
                           "1.0 is the usual value", config.learning_rate)
        # Bias correction and a warm-up safeguard: Prodigy's recommendations for diffusion models.
        return Prodigy(groups, **options, use_bias_correction=True, safeguard_warmup=config.lr_warmup_steps > 0)
    if device.type != "cuda":
        raise ValueError(f"optimizer 'adamw8bit' (bitsandbytes) needs a CUDA GPU; this run is on {device.type}. "
                         "Use optimizer: adamw or prodigy.")
    try:
        import bitsandbytes
    except ImportError as error:
        raise ValueError("optimizer 'adamw8bit' needs bitsandbytes: pip install -e \".[gpu]\"") from error
    return bitsandbytes.optim.AdamW8bit(groups, **options)


def _make_param_groups(
    model: nn.Module, param_groups: list[dict] | None, config: TrainingConfig
) -> list[dict]:
    trainable = trainable_named_parameters(model)
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


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """``config.lr_scheduler`` from ``diffusers.optimization.get_scheduler``, over ``config.max_steps``."""
    from diffusers.optimization import get_scheduler

    # Stepped once per optimizer step on every process (not through accelerate's wrapper,
    # which steps once per process and would tie the schedule to the process count).
    return get_scheduler(
        config.lr_scheduler, optimizer, step_rules=config.lr_step_rules, num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max(config.max_steps, 1), num_cycles=config.lr_num_cycles, power=config.lr_power,
    )  # fmt: skip


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB



def _prepare(
    model: nn.Module,
    num_samples: int,
    config: TrainingConfig,
    param_groups: list[dict] | None,
    accelerator: Accelerator,
) -> RunState:
    """Seed the run, build its optimizer and schedule, place the model: the run at step 0."""
    if config.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the "
            f"{accelerator.num_processes} processes it is split across."
        )
    # Global RNGs (dropout): seed + process index. The loss draws from a LossRandomness
    # per micro-step instead, which depends on no process (see training.randomness).
    set_seed(config.seed, device_specific=True)
    sampler = EpochSampler(num_samples, config.seed)  # same on every process
    model.train()
    groups = _make_param_groups(model, param_groups, config)
    optimizer = make_optimizer(config.optimizer, groups, config, accelerator.device)
    # Device placement and mixed-precision autocast, but no DDP wrapper: gradients are
    # averaged explicitly after the last micro-step (see training.distributed).
    state = RunState(
        model=accelerator.prepare_model(model, evaluation_mode=True),
        optimizer=accelerator.prepare_optimizer(optimizer),
        scheduler=make_lr_scheduler(optimizer, config),
        sampler=sampler,
        num_samples=num_samples,
    )
    broadcast_trainable(accelerator, state.trainable)
    return state


def _optimizer_step(
    state: RunState,
    compute_loss: Callable,
    loss_runs_backward: bool,
    accelerator: Accelerator,
    config: TrainingConfig,
    checkpoint_dir: Path,
) -> tuple[float, float, float]:
    """Run one optimizer step (all its micro-steps); returns (loss, lr, grad_norm)."""
    acc, cfg, step = accelerator, config, state.global_step + 1
    micro_losses = []
    for micro_step in range(cfg.gradient_accumulation_steps):
        with acc.accumulate(state.model):
            # Sample batch: the next global batch of indices, this process's share of it.
            indices = process_share(state.sampler.next_batch(cfg.batch_size), acc)
            # Randomness: every sample's own generators, keyed by its position in the global
            # batch, so the process count does not change what the loss draws.
            positions = process_share(torch.arange(cfg.batch_size), acc).tolist()
            randomness = LossRandomness(cfg.seed, step, micro_step, positions)
            # Forward + loss. A loss made of parts that need different model states in
            # backward (the dual path's LoRA scales, recomputed under gradient checkpointing)
            # runs each part's backward itself, through accelerate, and returns the detached sum.
            if loss_runs_backward:
                loss = compute_loss(state.model, indices, randomness, acc.backward)
            else:
                loss = compute_loss(state.model, indices, randomness)
            # Stop on NaN/inf, on every process alike (a NaN on one would hang the others).
            mean_loss = acc.gather(loss.detach().float().reshape(1)).mean().item()
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(step, mean_loss, state.last_checkpoint, checkpoint_dir)
            micro_losses.append(mean_loss)
            # Backward: accelerate divides by the accumulation steps (and scales for fp16).
            if not loss_runs_backward:
                acc.backward(loss)
    # Average the gradients over processes, once per optimizer step.
    average_gradients(acc, state.trainable)
    # Clip: gradients are complete only after the last micro-step.
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    grad_norm = acc.clip_grad_norm_(state.trainable, max_norm)
    # Step: the lr reported is the one this step used.
    lr = state.scheduler.get_last_lr()[0]
    state.optimizer.step()
    if not state.optimizer.step_was_skipped:  # fp16 overflow: no step, no schedule advance
        state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.global_step = step
    state.losses.append(sum(micro_losses) / len(micro_losses))
    return state.losses[-1], lr, float(grad_norm)


def _save_checkpoint(
    state: RunState,
    checkpoint_dir: Path,
    accelerator: Accelerator,
    config: TrainingConfig,
    on_checkpoint: Callable[[int], None] | None,
) -> None:
    """Write a checkpoint of ``state``, then call ``on_checkpoint`` (main process, RNG isolated)."""
    save_checkpoint(state, checkpoint_dir, accelerator, config)
    if on_checkpoint is not None and accelerator.is_main_process:
        with isolated_global_rng():
            on_checkpoint(state.global_step)


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
            per process (see :mod:`machining_t2v.training.randomness`).
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
    checkpoint_dir = Path(checkpoint_dir)
    acc = make_accelerator(config)
    state = _prepare(model, num_samples, config, param_groups, acc)
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(acc.device)
    try:
        # Start or resume: the checkpoint folder must be writable before the first step.
        check_writable(checkpoint_dir, acc)
        resumed = (
            resume_run(state, config.resume, checkpoint_dir, acc, config)
            if config.resume is not None
            else None
        )
        remove_foreign_checkpoints(checkpoint_dir, state.global_step, acc)
        start_step, start_time = state.global_step, time.perf_counter()
        window_step, window_time = start_step, start_time
        bar = tqdm(
            total=config.max_steps,
            initial=state.global_step,
            desc=description,
            unit="step",
            disable=not progress or not acc.is_main_process,
        )
        with bar:
            while state.global_step < last_step:
                # Train
                loss, lr, grad_norm = _optimizer_step(
                    state, compute_loss, loss_runs_backward, acc, config, checkpoint_dir
                )
                step = state.global_step
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
                    _save_checkpoint(state, checkpoint_dir, acc, config, on_checkpoint)
                # Validate
                if validate_every and step % validate_every == 0:
                    if on_validate is not None and acc.is_main_process:
                        state.model.eval()
                        with isolated_global_rng(), torch.no_grad():
                            on_validate(step)
                        state.model.train()
                    acc.wait_for_everyone()
        elapsed = time.perf_counter() - start_time
        if state.last_saved_step != state.global_step:
            _save_checkpoint(state, checkpoint_dir, acc, config, on_checkpoint)
        steps_done = state.global_step - start_step
        result = TrainingResult(
            global_step=state.global_step,
            losses=list(state.losses),
            steps_per_second=steps_done / elapsed if steps_done and elapsed > 0 else 0.0,
            peak_memory_mb=_peak_memory_mb(acc.device),
            resumed_from=str(resumed) if resumed is not None else None,
            checkpoint_dir=checkpoint_dir,
            final_checkpoint=state.last_checkpoint,
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
