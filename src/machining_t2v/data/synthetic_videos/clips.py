"""The synthetic clips: what one clip shows (:class:`ClipSpec`), a varied set of them, and their frames."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .milling import render_milling
from .turning import render_turning
from .vocabulary import (
    MACHINES,
    MATERIAL_COLOURS,
    MILLING_JOBS,
    PROCESSES,
    TURNING_JOBS,
    make_caption,
)

__all__ = ["ClipSpec", "render_clip", "sample_clip_specs"]


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one synthetic clip, and to name and caption it.

    ``direction`` is one of :data:`.vocabulary.MILLING_DIRECTION_VECTORS` for milling and one of
    :data:`.vocabulary.TURNING_DIRECTIONS` for turning. ``camera_offset`` is ``(dx, dy)`` in
    pixels, added to the whole scene. ``container`` is the file extension a writer
    should use (``"mp4"`` or ``"webm"``). Geometry that is not listed here (block,
    bar and tool sizes, flute count, colours of tools) is drawn from ``seed``.
    """

    name: str
    process: str
    operation: str
    machine: str
    material: str
    direction: str
    spindle_rpm_scale: float
    width: int
    height: int
    fps: int
    num_frames: int
    camera_offset: tuple[int, int]
    container: str
    seed: int
    caption: str

    @property
    def seconds(self) -> float:
        """Clip duration in seconds."""
        return self.num_frames / self.fps


def sample_clip_specs(
    num_clips: int = 24,
    seed: int = 0,
    width: int = 256,
    height: int = 256,
    fps: int = 12,
    min_seconds: float = 2.0,
    max_seconds: float = 4.0,
    webm_fraction: float = 0.5,
) -> list[ClipSpec]:
    """Specs for ``num_clips`` varied clips, deterministic from ``seed``.

    Clips alternate milling / turning (even index milling). Materials, operations
    and directions are cycled in a seed-dependent order per process so that every
    value appears; speeds, durations, camera offsets and per-clip seeds are random.
    Containers follow ``webm_fraction`` within each process, so both processes get
    both containers when ``0 < webm_fraction < 1`` and a process has >= 2 clips.

    The first ``k`` specs do not depend on ``num_clips``: asking for more clips
    only appends.
    """
    if num_clips < 0:
        raise ValueError("num_clips must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if width < 64 or height < 64:
        raise ValueError("width and height must be >= 64")
    if fps < 1:
        raise ValueError("fps must be >= 1")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError("need 0 < min_seconds <= max_seconds")
    if not 0.0 <= webm_fraction <= 1.0:
        raise ValueError("webm_fraction must be within [0, 1]")

    root = np.random.default_rng([seed, 0x5EED])
    materials = list(MATERIAL_COLOURS)
    material_order = {p: root.permutation(len(materials)) for p in PROCESSES}
    jobs = {"milling": MILLING_JOBS, "turning": TURNING_JOBS}
    job_order = {p: root.permutation(len(jobs[p])) for p in PROCESSES}
    container_phase = {p: float(root.random()) for p in PROCESSES}
    min_frames = max(1, math.ceil(min_seconds * fps - 1e-9))
    max_frames = max(min_frames, math.floor(max_seconds * fps + 1e-9))

    specs: list[ClipSpec] = []
    counters = dict.fromkeys(PROCESSES, 0)
    for i in range(num_clips):
        process = PROCESSES[i % 2]
        j = counters[process]
        counters[process] += 1
        rng = np.random.default_rng([seed, i])

        material = materials[material_order[process][j % len(materials)]]
        operation, direction = jobs[process][job_order[process][j % len(jobs[process])]]
        num_frames = int(
            np.clip(round(rng.uniform(min_seconds, max_seconds) * fps), min_frames, max_frames)
        )
        max_dx, max_dy = round(0.06 * width), round(0.06 * height)
        camera_offset = (
            int(rng.integers(-max_dx, max_dx + 1)),
            int(rng.integers(-max_dy, max_dy + 1)),
        )
        # Low-discrepancy split: the webm share is met in every prefix of a process.
        phase = container_phase[process]
        is_webm = math.floor((j + 1) * webm_fraction + phase) > math.floor(
            j * webm_fraction + phase
        )
        specs.append(
            ClipSpec(
                name=f"{process}_{i:03d}",
                process=process,
                operation=operation,
                machine=MACHINES[process],
                material=material,
                direction=direction,
                spindle_rpm_scale=round(float(rng.uniform(0.6, 1.4)), 3),
                width=width,
                height=height,
                fps=fps,
                num_frames=num_frames,
                camera_offset=camera_offset,
                container="webm" if is_webm else "mp4",
                seed=int(rng.integers(0, 2**31 - 1)),
                caption=make_caption(process, operation, material, direction),
            )
        )
    return specs


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render ``spec`` as a ``uint8`` RGB array of shape ``(num_frames, height, width, 3)``.

    Deterministic: the same spec always gives the same array.
    """
    if spec.process == "milling":
        return render_milling(spec)
    if spec.process == "turning":
        return render_turning(spec)
    raise ValueError(f"unknown process {spec.process!r}")

