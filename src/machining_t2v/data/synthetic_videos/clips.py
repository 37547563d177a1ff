"""The synthetic clips: what one clip shows (:class:`ClipSpec`), a varied set of them, and their frames."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .milling import milling_tool_path, render_milling
from .turning import render_turning, turning_tool_path
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

    ``close_up`` frames the cutting zone that many times closer (1: the whole machine), as many
    shop videos do: the scene is drawn ``close_up`` times larger and cropped around the tool's
    path. ``feed_scale`` multiplies the turning insert's feed (and the facing insert's approach),
    which at 1 is about a pixel per frame at 256 px, so slow that the spinning bar hides it.
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
    close_up: float = 1.0
    feed_scale: float = 1.0

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
    close_up: float = 1.0,
    feed_scale: float = 1.0,
) -> list[ClipSpec]:
    """Specs for ``num_clips`` varied clips, deterministic from ``seed``.

    Clips alternate milling / turning (even index milling). Materials, operations
    and directions are cycled in a seed-dependent order per process so that every
    value appears; speeds, durations, camera offsets and per-clip seeds are random.
    Containers follow ``webm_fraction`` within each process, so both processes get
    both containers when ``0 < webm_fraction < 1`` and a process has >= 2 clips.

    The first ``k`` specs do not depend on ``num_clips``: asking for more clips
    only appends. ``close_up`` and ``feed_scale`` (see :class:`ClipSpec`) change how the clips
    are drawn, not what they show or how they are named and captioned.
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
    if not 1.0 <= close_up <= 3.0:
        raise ValueError("close_up must be within [1, 3] (1 = the whole machine)")
    if not 0.0 < feed_scale <= 10.0:
        raise ValueError("feed_scale must be within (0, 10]")

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
                close_up=float(close_up),
                feed_scale=float(feed_scale),
            )
        )
    return specs


def render_clip(spec: ClipSpec) -> np.ndarray:
    """Render ``spec`` as a ``uint8`` RGB array of shape ``(num_frames, height, width, 3)``.

    Deterministic: the same spec always gives the same array.
    """
    if spec.close_up != 1.0:
        return _render_close_up(spec)
    if spec.process == "milling":
        return render_milling(spec)
    if spec.process == "turning":
        return render_turning(spec)
    raise ValueError(f"unknown process {spec.process!r}")


def _render_close_up(spec: ClipSpec) -> np.ndarray:
    """The scene drawn ``close_up`` times larger, cropped to the spec's size around the centre of
    the tool's path (kept inside the larger picture)."""
    zoom = spec.close_up
    dx, dy = spec.camera_offset
    large = replace(spec, width=round(spec.width * zoom), height=round(spec.height * zoom),
                    camera_offset=(round(dx * zoom), round(dy * zoom)), close_up=1.0)
    frames = render_clip(large)
    path = milling_tool_path(large) if spec.process == "milling" else turning_tool_path(large)
    centre_x, centre_y = path.mean(axis=0)
    x0 = int(np.clip(round(centre_x - spec.width / 2), 0, large.width - spec.width))
    y0 = int(np.clip(round(centre_y - spec.height / 2), 0, large.height - spec.height))
    return np.ascontiguousarray(frames[:, y0 : y0 + spec.height, x0 : x0 + spec.width])
