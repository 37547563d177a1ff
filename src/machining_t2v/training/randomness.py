"""Every random draw of a training run, and what makes it repeatable.

Randomness contract (what makes resume bit-identical on CPU, and N processes train what
one process trains):

* a *sampler* generator (:class:`EpochSampler`), seeded from ``config.seed`` and identical
  on every process, draws the epoch permutations of ``range(num_samples)``;
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
  uninterrupted run would (:mod:`machining_t2v.training.checkpoints`);
* callbacks (logging, checkpoint hooks, validation) run inside
  :func:`isolated_global_rng`, so what they draw does not shift the training streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed for a named sub-stream (python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class LossRandomness:
    """The random draws of one micro-batch, the same whichever process computes a sample.

    Sample ``k`` of the global micro-batch (its *position*, ``0..batch_size-1``) has its own
    CPU generator seeded from ``(seed, step, micro_step, k)``, so splitting the batch across
    processes (or not) changes nothing about what each sample draws. Draw from it in a fixed
    order; every method below draws one value per sample, from that sample's generator.

    Attributes:
        seed, step, micro_step: What the generators are seeded from (``step`` is the 1-based
            optimizer step being computed; 0 is left to validation, see :meth:`fixed`).
        positions: The global positions of this process's samples, in ``indices`` order.
        shared: A generator identical on every process, for batch-level decisions (e.g.
            whether this micro-step runs without an adapter).
        per_sample: One generator per position.
    """

    def __init__(self, seed: int, step: int, micro_step: int, positions: Sequence[int]):
        self.seed, self.step, self.micro_step = int(seed), int(step), int(micro_step)
        self.positions = [int(p) for p in positions]
        self.shared = torch.Generator("cpu").manual_seed(
            derive_seed(self.seed, "shared", self.step, self.micro_step)
        )
        self.per_sample = [
            torch.Generator("cpu").manual_seed(
                derive_seed(self.seed, "sample", self.step, self.micro_step, position)
            )
            for position in self.positions
        ]

    @classmethod
    def fixed(cls, seed: int, batch: int) -> LossRandomness:
        """The same draws at every call (step 0, positions ``range(batch)``): for validation."""
        return cls(seed, 0, 0, range(batch))

    def __len__(self) -> int:
        return len(self.per_sample)

    def __repr__(self) -> str:
        return (
            f"LossRandomness(seed={self.seed}, step={self.step}, micro_step={self.micro_step}, "
            f"positions={self.positions})"
        )

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise, (B, *shape): one ``shape`` tensor per sample.

        ``shape`` may also be given as one tuple or ``torch.Size`` (``randn(x.shape[1:])``).
        """
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        if not self.per_sample:
            return torch.empty((0, *shape), device="cpu")
        return torch.stack([torch.randn(shape, generator=g, device="cpu") for g in self.per_sample])

    def randint(self, high: int) -> torch.LongTensor:
        """One integer in ``[0, high)`` per sample, (B,)."""
        if not self.per_sample:
            return torch.empty(0, dtype=torch.long, device="cpu")
        return torch.cat(
            [torch.randint(0, high, (1,), generator=g, device="cpu") for g in self.per_sample]
        )

    def rand(self) -> torch.Tensor:
        """One float uniform in ``[0, 1)`` per sample, (B,)."""
        if not self.per_sample:
            return torch.empty(0, device="cpu")
        return torch.cat([torch.rand(1, generator=g, device="cpu") for g in self.per_sample])


def global_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors/lists/ints only, so ``torch.load(weights_only=True)`` works."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global RNG states :func:`global_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss_next"]))


@contextlib.contextmanager
def isolated_global_rng() -> Iterator[None]:
    """Run a callback without letting it consume the training RNG streams.

    Validation sampling draws from the global RNGs; without isolation an interrupted
    and resumed run would validate at different steps and diverge from the
    uninterrupted one.
    """
    state = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(state)


class EpochSampler:
    """Draws sample indices epoch by epoch: every sample once per epoch, reshuffled each epoch.

    A batch may straddle two epochs. The current permutation and position are part of
    the checkpoint, so a resume continues mid-epoch exactly.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next_batch(self, batch_size: int) -> torch.LongTensor:
        parts = []
        while batch_size > 0:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.num_samples, generator=self.generator)
                self.pos = 0
            take = min(batch_size, len(self.perm) - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            batch_size -= take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["perm"]) not in (0, self.num_samples):
            raise ValueError(
                f"Checkpoint was made with {len(state['perm'])} samples but num_samples is "
                f"{self.num_samples}; resuming would not continue the same epochs."
            )
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])

