"""What a training run is asked to do and what it reports: the loop's settings, the mixed
precision a device gets, the result of a run and the errors that stop one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# The schedules of diffusers.optimization.get_scheduler (a test keeps the two lists equal).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial",
                 "piecewise_constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
# Config keys that change the training trajectory; a resume with different values is
# allowed (e.g. a new learning rate on purpose) but is no longer a faithful continuation.
TRAJECTORY_KEYS = (
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_num_cycles",
    "lr_power",
    "lr_step_rules",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "mixed_precision",
    "optimizer",
)


@dataclass
class TrainingConfig:
    """Hyper-parameters of the training loop (the model-specific ones live with the caller).

    Attributes:
        max_steps: Number of optimizer steps to reach (counting resumed ones).
        batch_size: Global batch per micro-step; split across processes under DDP.
        gradient_accumulation_steps: Micro-steps per optimizer step.
        learning_rate: Default learning rate; a param group's own ``lr`` wins.
        lr_scheduler: A schedule of ``diffusers.optimization.get_scheduler``: ``constant``,
            ``constant_with_warmup``, ``cosine``, ``linear``, ``cosine_with_restarts``,
            ``polynomial`` or ``piecewise_constant``.
        lr_warmup_steps: Linear warm-up length in optimizer steps.
        lr_num_cycles: Hard restarts of ``cosine_with_restarts``.
        lr_power: Power of ``polynomial`` decay (1.0 is linear).
        lr_step_rules: ``piecewise_constant``'s rules, e.g. ``"1:10,0.1:20,0.01"`` (multiplier 1
            until step 10, 0.1 until step 20, then 0.01).
        adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon: AdamW's (and Prodigy's) settings.
        max_grad_norm: Gradient-norm clip; ``<= 0`` disables clipping (norm still logged).
        seed: Seed of every random stream the loop owns.
        mixed_precision: ``no``, ``fp16`` or ``bf16``; fp16 without CUDA falls back to ``no``
            (callers resolve ``auto`` with :func:`choose_mixed_precision`).
        optimizer: ``adamw`` (torch), ``adamw8bit`` (bitsandbytes, CUDA only: its states take
            a quarter of the memory) or ``prodigy`` (prodigyopt, which finds the step size itself:
            ``learning_rate`` is a multiplier of it, usually 1.0).
        checkpoint_every: Periodic checkpoint interval in optimizer steps; 0 disables the
            periodic ones (the final checkpoint is always written).
        checkpoints_total_limit: Keep only this many newest checkpoints; None keeps all.
        resume: None, ``"latest"`` (newest complete checkpoint in the checkpoint folder,
            or a fresh start if there is none) or the path of one checkpoint folder.
        log_every: Call ``on_log`` every this many optimizer steps.
    """

    max_steps: int = 200
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_num_cycles: int = 1
    lr_power: float = 1.0
    lr_step_rules: str | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    optimizer: str = "adamw"
    checkpoint_every: int = 50
    checkpoints_total_limit: int | None = 2
    resume: str | None = None
    log_every: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.resume, os.PathLike):
            self.resume = os.fspath(self.resume)
        problems = []
        if self.max_steps < 0:
            problems.append(f"max_steps must be >= 0, got {self.max_steps}")
        for name in ("batch_size", "gradient_accumulation_steps", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            problems.append(
                f"checkpoints_total_limit must be None or >= 1, got {self.checkpoints_total_limit}"
            )
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(
                f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}"
            )
        if self.lr_scheduler == "piecewise_constant" and not self.lr_step_rules:
            problems.append("lr_scheduler 'piecewise_constant' needs lr_step_rules, e.g. '1:10,0.1:20,0.01'")
        if self.lr_num_cycles < 1:
            problems.append(f"lr_num_cycles must be >= 1, got {self.lr_num_cycles}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            problems.append(
                f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if problems:
            raise ValueError("Invalid TrainingConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainingConfig:
        """Build a config from a mapping (e.g. Kedro parameters), rejecting unknown keys.

        Raises:
            ValueError: naming every unknown key, or describing invalid values.
        """
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown TrainingConfig key(s): {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy of the config."""
        return dataclasses.asdict(self)


def choose_mixed_precision(requested: str, *, cuda: bool, native_bf16: bool) -> tuple[str, str]:
    """The mixed precision a run uses and why, from the one asked for and the device.

    ``auto`` means bf16 where the GPU runs it natively, fp16 (with accelerate's gradient
    scaler) on older GPUs, full precision on a CPU. ``torch.cuda.is_bf16_supported()`` says
    True on T4/V100 through emulation, which is slow: pass
    ``is_bf16_supported(including_emulation=False)`` as ``native_bf16``. An explicit bf16 on a
    GPU without native bf16 falls back to fp16; fp16 without CUDA falls back to full precision.

    Returns:
        (``no`` | ``fp16`` | ``bf16``, a sentence for the log).
    """
    if requested not in ("auto", *MIXED_PRECISIONS):
        raise ValueError(f"mixed_precision must be auto or one of {MIXED_PRECISIONS}, got {requested!r}")
    if not cuda:
        if requested == "fp16":
            return "no", "fp16 was asked for but there is no CUDA GPU: full precision (fp32) on the CPU"
        if requested == "bf16":
            return "bf16", "bf16 as asked, on the CPU"
        return "no", "no CUDA GPU: full precision (fp32) on the CPU"
    if requested == "auto":
        if native_bf16:
            return "bf16", "auto: the GPU runs bf16 natively"
        return "fp16", "auto: the GPU has no native bf16, so fp16 with a gradient scaler"
    if requested == "bf16" and not native_bf16:
        return "fp16", "bf16 was asked for but the GPU has no native bf16 (only emulated): fp16 with a gradient scaler"
    return requested, f"{requested} as asked"


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen weights under ``mixed_precision`` (trainable ones stay fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


class NonFiniteLossError(RuntimeError):
    """Raised when the loss becomes NaN or infinite; no optimizer step was taken.

    Attributes:
        step: The optimizer step (1-based) whose loss was not finite.
        last_checkpoint: The newest good checkpoint folder, or None if there is none.
    """

    def __init__(self, step: int, value: float, last_checkpoint: Path | None, checkpoint_dir: Path):
        self.step = step
        self.value = value
        self.last_checkpoint = last_checkpoint
        self._checkpoint_dir = checkpoint_dir
        where = (
            f"last good checkpoint: {last_checkpoint}"
            if last_checkpoint is not None
            else f"no checkpoint has been written yet in {checkpoint_dir}"
        )
        super().__init__(
            f"Non-finite loss ({value}) at step {step}; training stopped before the optimizer "
            f"step and no checkpoint of this state was written ({where}). Lower the learning "
            f"rate or check the data, then resume from that checkpoint."
        )

    def __reduce__(self):
        # The custom __init__ would break default exception pickling (multiprocessing runners).
        return (type(self), (self.step, self.value, self.last_checkpoint, self._checkpoint_dir))


class CheckpointWriteError(OSError):
    """Raised when the checkpoint folder cannot be written (missing, read-only, disk full...).

    Raised on every process, before training when the folder is not writable at all, or at
    the checkpoint that failed; nothing of the failed checkpoint is left under a
    ``checkpoint-<step>`` name, so the previous one is still what ``resume: latest`` picks.

    Attributes:
        checkpoint_dir: The folder that could not be written.
        step: The step whose checkpoint failed (None: the check before training).
        last_checkpoint: The newest complete checkpoint, or None if there is none.
        reason: The underlying error, as text.
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        step: int | None,
        last_checkpoint: Path | None,
        reason: str,
        errno_: int | None = None,
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.step = step
        self.last_checkpoint = last_checkpoint
        self.reason = reason
        what = (
            f"Cannot write checkpoints into {self.checkpoint_dir}"
            if step is None
            else f"Could not write the step-{step} checkpoint into {self.checkpoint_dir}"
        )
        where = (
            f"the last complete checkpoint {last_checkpoint} is intact; resume from it "
            f"(resume: latest) once the folder is writable again"
            if last_checkpoint is not None
            else "no checkpoint of this run exists yet"
        )
        stopped = "training did not start" if step is None else "training stopped"
        super().__init__(f"{what}: {reason}. The folder must exist or be creatable and have "
                         f"free space; {stopped}, {where}.")
        self.errno = errno_

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (
            type(self),
            (self.checkpoint_dir, self.step, self.last_checkpoint, self.reason, self.errno),
        )


@dataclass
class TrainingResult:
    """Outcome of :func:`train`.

    Attributes:
        global_step: Optimizer steps reached (including resumed ones).
        losses: One mean loss per optimizer step, from step 1 (resumed history included).
        steps_per_second: Optimizer steps per wall-clock second in this run.
        peak_memory_mb: Peak CUDA memory allocated, or the process's peak RSS without CUDA.
        resumed_from: The checkpoint folder this run resumed from, if any.
        checkpoint_dir: The folder holding the ``checkpoint-<step>`` folders.
        final_checkpoint: The checkpoint folder holding the final state, if any.
    """

    global_step: int
    losses: list[float]
    steps_per_second: float
    peak_memory_mb: float
    resumed_from: str | None
    checkpoint_dir: Path
    final_checkpoint: Path | None = field(default=None)

