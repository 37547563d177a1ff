"""Deterministic synthetic milling and turning clips for the embedded default.

A fresh machine has no process videos, so this module draws some with OpenCV:

* **milling** -- an oblique top view of a block clamped on a machine table. An end
  mill (a disc with 2-4 flutes that rotate frame to frame) travels along X, Y or a
  diagonal over the block and leaves a darker groove that grows behind it.
* **turning** -- a side view of a lathe. A bar held in a chuck spins (marks on its
  surface sweep across it like on a real rotating cylinder) while a fixed insert on
  a holder feeds along it (or, for facing, radially into its end); the turned part
  behind the tool has a smaller diameter.

The module only returns arrays and metadata: it imports nothing from Kedro and
writes no files, so the sample-data pipeline, tests and notebooks can all use it.
Everything is a pure function of the :class:`ClipSpec` (and of the seed given to
:func:`sample_clip_specs`), so the same seed always yields byte-identical clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "MATERIAL_COLOURS",
    "MILLING_DIRECTION_VECTORS",
    "PROCESSES",
    "TURNING_DIRECTIONS",
    "ClipSpec",
    "make_caption",
    "milling_tool_path",
    "render_clip",
    "sample_clip_specs",
    "turning_bar_box",
    "turning_tool_path",
]

#: Workpiece materials and the RGB colour each is drawn in.
MATERIAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "aluminium": (196, 200, 207),
    "steel": (126, 132, 142),
    "brass": (204, 166, 74),
    "copper": (188, 110, 72),
    "plastic": (44, 110, 196),
}

PROCESSES: tuple[str, str] = ("milling", "turning")
_MACHINES = {"milling": "milling machine", "turning": "lathe"}

#: Unit vector (image x right, image y down) of the tool travel per milling direction.
MILLING_DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "x": (1.0, 0.0),
    "-x": (-1.0, 0.0),
    "y": (0.0, 1.0),
    "-y": (0.0, -1.0),
    "diagonal": (math.sqrt(0.5), math.sqrt(0.5)),
    "-diagonal": (-math.sqrt(0.5), -math.sqrt(0.5)),
}

#: Turning feed directions. The chuck is always on the left of the picture, so
#: "left" feeds towards the chuck; "inward" is the radial feed used for facing.
TURNING_DIRECTIONS: tuple[str, ...] = ("left", "right", "inward")

_DIRECTION_WORDS = {
    "x": "from left to right",
    "-x": "from right to left",
    "y": "from top to bottom",
    "-y": "from bottom to top",
    "diagonal": "diagonally from top left to bottom right",
    "-diagonal": "diagonally from bottom right to top left",
    "left": "towards the chuck",
    "right": "away from the chuck",
    "inward": "inwards towards the centre of the bar",
}

# (operation, direction) pairs; cycled per process so every job shows up.
_MILLING_JOBS: tuple[tuple[str, str], ...] = (
    ("slot milling along X", "x"),
    ("slot milling along X", "-x"),
    ("slot milling along Y", "y"),
    ("slot milling along Y", "-y"),
    ("slot milling diagonally", "diagonal"),
    ("slot milling diagonally", "-diagonal"),
    ("face milling along X", "x"),
    ("face milling along Y", "-y"),
)
_TURNING_JOBS: tuple[tuple[str, str], ...] = (
    ("turn the bar", "left"),
    ("turn the bar", "right"),
    ("finish-turn the bar", "left"),
    ("face the bar", "inward"),
)

# cv2 drawing calls take fixed-point coordinates with this many fractional bits,
# which keeps slow sub-pixel motion smooth instead of jumping pixel by pixel.
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one synthetic clip, and to name and caption it.

    ``direction`` is one of :data:`MILLING_DIRECTION_VECTORS` for milling and one of
    :data:`TURNING_DIRECTIONS` for turning. ``camera_offset`` is ``(dx, dy)`` in
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


def make_caption(process: str, operation: str, material: str, direction: str) -> str:
    """Natural-language caption for a clip, e.g. for a ``.txt`` sidecar.

    >>> make_caption("milling", "slot milling along X", "aluminium", "x")
    'slot milling along X on a milling machine, aluminium workpiece, spinning end mill travelling from left to right'
    """
    words = _DIRECTION_WORDS[direction]
    if process == "milling":
        return (
            f"{operation} on a milling machine, {material} workpiece, "
            f"spinning end mill travelling {words}"
        )
    if process == "turning":
        return (
            f"{operation} on a lathe, {material} bar spinning in the chuck, "
            f"fixed turning tool feeding {words}"
        )
    raise ValueError(f"unknown process {process!r}")


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
    jobs = {"milling": _MILLING_JOBS, "turning": _TURNING_JOBS}
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
                machine=_MACHINES[process],
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
        return _render_milling(spec)
    if spec.process == "turning":
        return _render_turning(spec)
    raise ValueError(f"unknown process {spec.process!r}")


# --------------------------------------------------------------------------- helpers


def _fp(x: float, y: float) -> tuple[int, int]:
    return (round(x * _ONE), round(y * _ONE))


def _draw_chip(canvas: np.ndarray, x: float, y: float, radius: float, end_angle_range: tuple[float, float],
               colours, rng: np.random.Generator) -> None:
    """A curled chip: an arc of a random start angle, sweep end and one of two colours."""
    axis = round(radius * _ONE)
    start, end = rng.uniform(0, 360), rng.uniform(*end_angle_range)
    cv2.ellipse(canvas, _fp(x, y), (axis, axis), 0, start, end, colours[int(rng.integers(2))], 1, cv2.LINE_AA,
                _SHIFT)


def _rgb(c) -> tuple[int, int, int]:
    # cv2 rejects numpy scalars inside colour tuples.
    return tuple(int(np.clip(round(float(v)), 0, 255)) for v in c)


def _scale(colour, factor: float, add: float = 0.0) -> tuple[int, int, int]:
    return _rgb(np.asarray(colour, np.float32) * factor + add)


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(col, (h, w, 3)).copy()


def _clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int):
    """Integer half-open box clipped to the frame, or None when empty."""
    bx0, by0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    bx1, by1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
    if bx0 >= bx1 or by0 >= by1:
        return None
    return bx0, by0, bx1, by1


def _finish_background(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Fixed sensor-like grain: real footage is never flat, and it is static so it
    # adds no fake motion.
    bg = bg + rng.normal(0.0, 2.0, bg.shape[:2] + (1,)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _linear_path(start, end, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None] if n > 1 else np.zeros((1, 1))
    return np.asarray(start, float)[None] * (1 - t) + np.asarray(end, float)[None] * t


# --------------------------------------------------------------------------- milling


@dataclass(frozen=True)
class _MillingScene:
    block: tuple[int, int, int, int]  # top face, half-open (x0, y0, x1, y1)
    side_depth: int  # visible front face of the block (oblique view)
    tool_radius: float
    flutes: int
    tool_colour: tuple[int, int, int]
    groove_shade: float
    path: np.ndarray  # (num_frames, 2) tool centre
    omega_deg: float  # rotation per frame
    phase_deg: float


_TOOL_COATINGS = ((152, 154, 162), (112, 100, 134), (206, 172, 72))


def _milling_scene(spec: ClipSpec) -> _MillingScene:
    if spec.direction not in MILLING_DIRECTION_VECTORS:
        raise ValueError(f"milling direction must be one of {list(MILLING_DIRECTION_VECTORS)}")
    rng = np.random.default_rng([spec.seed, 1])
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    bw, bh = w * rng.uniform(0.56, 0.70), h * rng.uniform(0.46, 0.58)
    cx, cy = w * 0.5 + dx, h * 0.46 + dy
    x0, y0 = round(cx - bw / 2), round(cy - bh / 2)
    x1, y1 = round(cx + bw / 2), round(cy + bh / 2)
    side_depth = max(2, round(bh * rng.uniform(0.10, 0.15)))
    face = spec.operation.startswith("face")
    r = min(bw, bh) * (rng.uniform(0.17, 0.21) if face else rng.uniform(0.10, 0.14))
    flutes = int(rng.integers(2, 5))

    # Build the path for the positive direction, then mirror about the block
    # centre along the axes that the sign flips.
    ux, uy = (abs(c) for c in MILLING_DIRECTION_VECTORS[spec.direction])
    if uy == 0:  # along X, entering through the left edge
        start = (x0 - 0.6 * r, rng.uniform(y0 + 1.5 * r, y1 - 1.5 * r))
    elif ux == 0:  # along Y, entering through the top edge
        start = (rng.uniform(x0 + 1.5 * r, x1 - 1.5 * r), y0 - 0.6 * r)
    else:  # diagonal, entering through the top edge near the left
        start = (rng.uniform(x0 + 1.2 * r, x0 + 0.25 * (x1 - x0)), y0 - 0.6 * r)
    limits = []
    if ux:
        limits.append((x1 - 1.4 * r - start[0]) / ux)
    if uy:
        limits.append((y1 - 1.4 * r - start[1]) / uy)
    travel = max(1.0, min(limits)) * rng.uniform(0.75, 0.95)
    end = (start[0] + travel * ux, start[1] + travel * uy)
    path = _linear_path(start, end, spec.num_frames)
    sx, sy = MILLING_DIRECTION_VECTORS[spec.direction]
    if sx < 0:
        path[:, 0] = (x0 + x1) - path[:, 0]
    if sy < 0:
        path[:, 1] = (y0 + y1) - path[:, 1]

    # Stay below half the flute pitch per frame, or the flutes would seem to turn
    # backwards (wagon-wheel aliasing).
    omega = 0.5 * (180.0 / flutes) * spec.spindle_rpm_scale
    return _MillingScene(
        block=(x0, y0, x1, y1),
        side_depth=side_depth,
        tool_radius=float(r),
        flutes=flutes,
        tool_colour=_TOOL_COATINGS[int(rng.integers(len(_TOOL_COATINGS)))],
        groove_shade=0.66 if face else 0.5,
        path=path,
        omega_deg=float(omega),
        phase_deg=float(rng.uniform(0, 360)),
    )


def milling_tool_path(spec: ClipSpec) -> np.ndarray:
    """Tool-centre pixel position per frame, shape ``(num_frames, 2)`` as ``(x, y)``.

    The tool moves at constant feed along ``MILLING_DIRECTION_VECTORS[spec.direction]``.
    """
    if spec.process != "milling":
        raise ValueError("milling_tool_path needs a milling spec")
    return _milling_scene(spec).path.copy()


def _milling_background(spec: ClipSpec, sc: _MillingScene, rng: np.random.Generator) -> np.ndarray:
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    bg = _gradient(h, w, (92, 96, 101), (58, 61, 65))
    # Machine table with T-slots.
    tx0, ty0, tx1, ty1 = 0.03 * w + dx, 0.10 * h + dy, 0.97 * w + dx, 0.92 * h + dy
    cv2.rectangle(bg, _fp(tx0, ty0), _fp(tx1, ty1), (104, 108, 113), -1, cv2.LINE_AA, _SHIFT)
    slot_h = max(2.0, 0.028 * h)
    for k in range(6):
        ys = ty0 + (k + 0.5) * (ty1 - ty0) / 6
        cv2.rectangle(
            bg, _fp(tx0, ys), _fp(tx1, ys + slot_h), (46, 48, 52), -1, cv2.LINE_AA, _SHIFT
        )

    colour = np.asarray(MATERIAL_COLOURS[spec.material], np.float32)
    x0, y0, x1, y1 = sc.block
    # Vice jaws along the sides the tool path runs parallel to, so it never crosses them.
    jaw = max(3, round(0.05 * h))
    vx, vy = MILLING_DIRECTION_VECTORS[spec.direction]
    jaw_colour = (58, 72, 104)
    if vy == 0:
        boxes = [
            (x0 - 4, y0 - jaw, x1 + 4, y0),
            (x0 - 4, y1 + sc.side_depth, x1 + 4, y1 + sc.side_depth + jaw),
        ]
    else:
        boxes = [
            (x0 - jaw, y0 - 2, x0, y1 + sc.side_depth),
            (x1, y0 - 2, x1 + jaw, y1 + sc.side_depth),
        ]
    for bx0, by0, bx1, by1 in boxes:
        cv2.rectangle(bg, (bx0, by0), (bx1 - 1, by1 - 1), jaw_colour, -1)
        cv2.rectangle(bg, (bx0, by0), (bx1 - 1, by1 - 1), (36, 44, 66), 1)

    # Front face of the block, darker: sells the oblique view.
    cv2.rectangle(bg, (x0, y1), (x1 - 1, y1 + sc.side_depth - 1), _scale(colour, 0.68), -1)
    box = _clip_box(x0, y0, x1, y1, w, h)
    if box is not None:
        bx0, by0, bx1, by1 = box
        # Brushed-metal streaks on the top face.
        streaks = rng.normal(0.0, 1.0, (by1 - by0, bx1 - bx0)).astype(np.float32)
        streaks = cv2.blur(streaks, (15, 1)) * 9.0
        bg[by0:by1, bx0:bx1] = colour[None, None, :] + streaks[..., None]
    cv2.line(bg, (x0, y0), (x1 - 1, y0), _scale(colour, 1.12, 12), 1)
    cv2.line(bg, (x0, y1), (x1 - 1, y1), _scale(colour, 0.5), 1)
    return _finish_background(bg, rng)


def _draw_end_mill(img, centre, r: float, flutes: int, angle_deg: float, colour) -> None:
    """An end mill seen from the top: flute faces as lit sectors, cutting edges as spokes."""
    c = _fp(*centre)
    rr = round(r * _ONE)
    cv2.circle(img, c, rr, _scale(colour, 0.45), -1, cv2.LINE_AA, _SHIFT)
    pitch = 360.0 / flutes
    edge_t = max(1, round(r / 7))
    for k in range(flutes):
        a0 = angle_deg + k * pitch
        cv2.ellipse(
            img, c, (rr, rr), 0, a0 - 0.42 * pitch, a0, _rgb(colour), -1, cv2.LINE_AA, _SHIFT
        )
        ex = centre[0] + r * math.cos(math.radians(a0))
        ey = centre[1] + r * math.sin(math.radians(a0))
        cv2.line(img, c, _fp(ex, ey), (238, 238, 242), edge_t, cv2.LINE_AA, _SHIFT)
    cv2.circle(img, c, rr, (30, 30, 34), 1, cv2.LINE_AA, _SHIFT)
    cv2.circle(img, c, round(max(1.0, r * 0.16) * _ONE), (40, 40, 44), -1, cv2.LINE_AA, _SHIFT)


def _render_milling(spec: ClipSpec) -> np.ndarray:
    sc = _milling_scene(spec)
    rng = np.random.default_rng([spec.seed, 2])
    bg = _milling_background(spec, sc, rng)
    w, h = spec.width, spec.height
    colour = MATERIAL_COLOURS[spec.material]
    groove = _scale(colour, sc.groove_shade)
    floor = _scale(colour, sc.groove_shade + 0.14)
    chip = _scale(colour, 1.0, 35)
    r = sc.tool_radius
    x0, y0, x1, y1 = sc.block
    block_roi = _clip_box(x0, y0, x1, y1, w, h)
    width_px = max(2, round(2 * r))
    start = sc.path[0]
    out = np.empty((spec.num_frames, h, w, 3), np.uint8)
    for i in range(spec.num_frames):
        frame = bg.copy()
        cx, cy = sc.path[i]
        if block_roi is not None:
            # Draw the groove into the top-face view so cv2 clips it to the block.
            bx0, by0, bx1, by1 = block_roi
            roi = frame[by0:by1, bx0:bx1]
            p0 = _fp(start[0] - bx0, start[1] - by0)
            p1 = _fp(cx - bx0, cy - by0)
            cv2.line(roi, p0, p1, groove, width_px, cv2.LINE_AA, _SHIFT)
            # Offset floor leaves a dark wall on the side away from the light.
            off = max(1.0, 0.12 * r)
            q0 = _fp(start[0] - bx0 + off, start[1] - by0 + off)
            q1 = _fp(cx - bx0 + off, cy - by0 + off)
            cv2.line(roi, q0, q1, floor, max(1, width_px - 2 * round(off)), cv2.LINE_AA, _SHIFT)
        # Soft contact shadow under the tool.
        sb = _clip_box(cx - 2 * r, cy - 2 * r, cx + 2 * r, cy + 2 * r, w, h)
        if sb is not None:
            sx0, sy0, sx1, sy1 = sb
            roi = frame[sy0:sy1, sx0:sx1]
            shade = roi.copy()
            cv2.circle(
                shade,
                _fp(cx - sx0 + 0.25 * r, cy - sy0 + 0.3 * r),
                round(r * 1.05 * _ONE),
                (0, 0, 0),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
            cv2.addWeighted(shade, 0.35, roi, 0.65, 0.0, dst=roi)
        # A few chips flung out around the cutter.
        for _ in range(int(rng.integers(2, 6))):
            a = rng.uniform(0, 2 * math.pi)
            rho = r * rng.uniform(1.15, 2.2)
            px, py = cx + rho * math.cos(a), cy + rho * math.sin(a)
            ln = rng.uniform(1.5, 3.5)
            b = rng.uniform(0, 2 * math.pi)
            cv2.line(
                frame,
                _fp(px, py),
                _fp(px + ln * math.cos(b), py + ln * math.sin(b)),
                chip,
                1,
                cv2.LINE_AA,
                _SHIFT,
            )
        _draw_end_mill(
            frame, (cx, cy), r, sc.flutes, sc.phase_deg + i * sc.omega_deg, sc.tool_colour
        )
        out[i] = frame
    return out


# --------------------------------------------------------------------------- turning

_TEX_BINS = 128  # samples around the bar's circumference


@dataclass(frozen=True)
class _TurningScene:
    yc: float
    radius: float
    cut_radius: float
    chuck_x0: int
    chuck_face_x: int  # bar starts here
    bar_end_x: int  # free end (exclusive)
    chuck_radius: float
    facing: bool
    face_depth: int
    tip_path: np.ndarray  # (num_frames, 2) insert tip
    insert_size: float
    insert_colour: tuple[int, int, int]
    omega: float  # rad per frame
    phase: float
    bar_tex: np.ndarray  # (_TEX_BINS, bar length) multiplicative texture, uncut surface
    cut_tex: np.ndarray  # same for the turned surface
    chuck_tex: np.ndarray


_INSERT_COLOURS = ((206, 170, 70), (70, 72, 78), (150, 152, 160))


def _turning_scene(spec: ClipSpec) -> _TurningScene:
    if spec.direction not in TURNING_DIRECTIONS:
        raise ValueError(f"turning direction must be one of {list(TURNING_DIRECTIONS)}")
    rng = np.random.default_rng([spec.seed, 1])
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    yc = 0.42 * h + dy
    radius = h * rng.uniform(0.07, 0.10)
    chuck_radius = h * rng.uniform(0.17, 0.21)
    chuck_x0 = round(0.10 * w + dx)
    face_x = round(0.20 * w + dx)
    length = round(w * rng.uniform(0.56, 0.68))
    end_x = face_x + length
    facing = spec.operation.startswith("face")
    depth = radius * (
        rng.uniform(0.07, 0.11) if spec.operation.startswith("finish") else rng.uniform(0.16, 0.26)
    )
    cut_radius = radius if facing else radius - depth
    face_depth = max(2, round(length * rng.uniform(0.025, 0.04)))

    if facing:
        x = end_x - face_depth
        start = (x, yc + radius + 0.04 * h)
        end = (x, yc + radius * rng.uniform(0.1, 0.25))
    else:
        # Real feeds are far too slow to see; keep the exaggerated feed small next to
        # the spin (about a pixel per frame at 256 px) so the bar stays the main motion.
        travel = min(0.45 * length, w * rng.uniform(0.004, 0.006) * max(1, spec.num_frames - 1))
        if spec.direction == "left":
            start = (end_x + 0.02 * w, yc + cut_radius)
            end = (start[0] - travel, yc + cut_radius)
        else:
            sx = face_x + 0.08 * w + length * rng.uniform(0.0, 0.1)
            start = (sx, yc + cut_radius)
            end = (sx + travel, yc + cut_radius)
    tip_path = _linear_path(start, end, spec.num_frames)

    marks = int(rng.integers(4, 7))
    s = np.linspace(0, 2 * np.pi, _TEX_BINS, endpoint=False)[:, None]
    xs = np.arange(length, dtype=np.float64)[None, :]
    # Axial marks (flats, scale, scribed lines) whose strength varies along the bar;
    # the texture is fixed to the surface so it turns with it.
    bar_tex = np.ones((_TEX_BINS, length))
    for k in range(marks):
        centre = 2 * np.pi * k / marks + rng.uniform(-0.3, 0.3)
        width = rng.uniform(0.08, 0.2)
        dist = np.angle(np.exp(1j * (s - centre)))
        band = np.exp(-0.5 * (dist / width) ** 2)
        f1, f2 = rng.uniform(0.01, 0.05, 2)
        along = 0.7 + 0.3 * np.sin(f1 * xs + rng.uniform(0, 6)) * np.cos(f2 * xs)
        bar_tex -= rng.uniform(0.5, 0.65) * band * along
    blotch = rng.normal(0.0, 1.0, (_TEX_BINS, length)).astype(np.float32)
    # Long along the axis, narrow around it: drawing streaks and scale, like bar stock.
    blotch = cv2.GaussianBlur(blotch, (0, 0), sigmaX=10.0, sigmaY=1.5)
    bar_tex += 0.11 * blotch / max(1e-6, float(blotch.std()))
    # Turned surface: fresh metal with static feed lines; faint residual marks from
    # runout keep a hint of rotation.
    cut_tex = 1.08 + 0.15 * (bar_tex - 1.0)
    cut_tex[:, ::3] *= 0.93
    chuck_tex = np.ones((_TEX_BINS, max(1, face_x - chuck_x0)))
    for k in range(3):  # jaw slots every 120 degrees
        dist = np.angle(np.exp(1j * (s[:, 0] - 2 * np.pi * k / 3)))
        chuck_tex[np.abs(dist) < 0.08] = 0.7

    # Slow enough that neither the marks (half-pitch >= pi/6) nor the blotches
    # alias, and the chuck's jaw slots stay readable.
    omega = 0.22 * spec.spindle_rpm_scale
    return _TurningScene(
        yc=float(yc),
        radius=float(radius),
        cut_radius=float(cut_radius),
        chuck_x0=chuck_x0,
        chuck_face_x=face_x,
        bar_end_x=end_x,
        chuck_radius=float(chuck_radius),
        facing=facing,
        face_depth=face_depth,
        tip_path=tip_path,
        insert_size=float(h * rng.uniform(0.05, 0.075)),
        insert_colour=_INSERT_COLOURS[int(rng.integers(len(_INSERT_COLOURS)))],
        omega=float(omega),
        phase=float(rng.uniform(0, 2 * np.pi)),
        bar_tex=bar_tex.astype(np.float32),
        cut_tex=cut_tex.astype(np.float32),
        chuck_tex=chuck_tex.astype(np.float32),
    )


def turning_bar_box(spec: ClipSpec) -> tuple[int, int, int, int]:
    """Half-open pixel box ``(x0, y0, x1, y1)`` of the bar (full stock diameter).

    Spans from the chuck face to the bar's free end, clipped to the frame. The bar's
    rotation produces most of the frame-to-frame change, and it happens in here.
    """
    if spec.process != "turning":
        raise ValueError("turning_bar_box needs a turning spec")
    sc = _turning_scene(spec)
    box = _clip_box(
        sc.chuck_face_x, sc.yc - sc.radius, sc.bar_end_x, sc.yc + sc.radius, spec.width, spec.height
    )
    if box is None:
        raise ValueError("the bar lies outside the frame")
    return box


def turning_tool_path(spec: ClipSpec) -> np.ndarray:
    """Insert-tip pixel position per frame, shape ``(num_frames, 2)`` as ``(x, y)``."""
    if spec.process != "turning":
        raise ValueError("turning_tool_path needs a turning spec")
    return _turning_scene(spec).tip_path.copy()


def _paint_cylinder(
    frame,
    x0: int,
    x1: int,
    yc: float,
    r: float,
    colour,
    tex: np.ndarray,
    tex_x0: int,
    turn: float,
    shine: float,
) -> None:
    """Composite a horizontal cylinder seen from the side onto ``frame`` in place.

    Each image row sees the surface at angle ``asin((y - yc) / r)``; sampling the
    surface texture there, shifted by ``turn``, makes marks sweep across the bar and
    bunch up near its edges as on a real rotating cylinder.
    """
    h, w = frame.shape[:2]
    if r <= 0.5:
        return
    x0c, x1c = max(0, x0), min(w, x1)
    y0, y1 = max(0, math.floor(yc - r)), min(h, math.ceil(yc + r) + 1)
    if x0c >= x1c or y0 >= y1:
        return
    yy = np.arange(y0, y1, dtype=np.float32) + 0.5 - yc
    alpha = np.clip(r - np.abs(yy) + 0.5, 0.0, 1.0)[:, None, None]
    theta = np.arcsin(np.clip(yy / r, -1.0, 1.0))
    light = -0.65  # light from the top of the picture
    shade = 0.3 + 0.7 * np.clip(np.cos(theta - light), 0.0, 1.0)
    spec_hi = shine * np.exp(-(((theta - light / 2) / 0.16) ** 2))
    rows = np.asarray(colour, np.float32)[None, :] * shade[:, None] + 255.0 * spec_hi[:, None]
    bins = (np.mod(theta - turn, 2 * np.pi) * (_TEX_BINS / (2 * np.pi))).astype(np.int64)
    t = tex[np.minimum(bins, _TEX_BINS - 1)][:, x0c - tex_x0 : x1c - tex_x0]
    col = rows[:, None, :] * t[:, :, None]
    region = frame[y0:y1, x0c:x1c].astype(np.float32)
    frame[y0:y1, x0c:x1c] = np.clip(region + (col - region) * alpha, 0, 255).astype(np.uint8)


_CHIP_COLOURS = {
    "steel": ((96, 112, 170), (196, 150, 84)),  # heat-tinted blue / straw
    "aluminium": ((222, 224, 230), (200, 202, 208)),
    "brass": ((226, 186, 90), (190, 150, 60)),
    "copper": ((214, 130, 88), (170, 92, 60)),
    "plastic": ((70, 140, 220), (40, 100, 180)),
}


def _turning_background(spec: ClipSpec, sc: _TurningScene, rng: np.random.Generator):
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    bg = _gradient(h, w, (84, 88, 94), (62, 65, 70))
    # Bed with its ways and a scatter of old chips.
    bed_y = 0.80 * h + dy
    cv2.rectangle(bg, _fp(-5, bed_y), _fp(w + 5, h + 5), (52, 56, 60), -1, cv2.LINE_AA, _SHIFT)
    for fy in (0.03, 0.11):
        cv2.line(
            bg,
            _fp(-5, bed_y + fy * h),
            _fp(w + 5, bed_y + fy * h),
            (150, 154, 160),
            max(1, round(0.012 * h)),
            cv2.LINE_AA,
            _SHIFT,
        )
    chip_cols = _CHIP_COLOURS[spec.material]
    for _ in range(18):
        px, py = rng.uniform(0.25 * w, 0.95 * w) + dx, rng.uniform(bed_y + 0.12 * h, h)
        _draw_chip(bg, px, py, rng.uniform(1.5, 4.0), (200, 320), chip_cols, rng)
    # Headstock housing behind the chuck.
    cv2.rectangle(
        bg,
        _fp(-5, 0.14 * h + dy),
        _fp(sc.chuck_x0 + 2, 0.76 * h + dy),
        (66, 92, 108),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    cv2.line(
        bg,
        _fp(-5, 0.14 * h + dy),
        _fp(sc.chuck_x0, 0.14 * h + dy),
        (110, 136, 150),
        1,
        cv2.LINE_AA,
        _SHIFT,
    )
    return _finish_background(bg, rng)


def _draw_turning_tool(img, tip, a: float, colour, mirror: bool, h: int) -> None:
    """Triangular insert clamped on a holder that comes up from the cross slide."""
    tx, ty = tip
    m = -1.0 if mirror else 1.0
    tri = [(tx, ty), (tx + m * 0.15 * a, ty + 0.98 * a), (tx + m * 0.98 * a, ty + 0.42 * a)]
    hw = 1.5 * a
    holder = [
        (tx + m * 0.05 * a, ty + 0.6 * a),
        (tx + m * 0.7 * a, ty + 0.15 * a),
        (tx + m * hw, ty + 0.15 * a),
        (tx + m * hw, h + 5.0),
        (tx + m * 0.05 * a, h + 5.0),
    ]
    post = (tx + m * -0.5 * a, ty + 1.9 * a, tx + m * (hw + 0.9 * a), ty + 3.9 * a)
    cv2.rectangle(
        img,
        _fp(min(post[0], post[2]), post[1]),
        _fp(max(post[0], post[2]), post[3]),
        (84, 90, 98),
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    cv2.rectangle(
        img,
        _fp(min(post[0], post[2]), post[1]),
        _fp(max(post[0], post[2]), post[3]),
        (62, 66, 72),
        1,
        cv2.LINE_AA,
        _SHIFT,
    )
    cv2.fillPoly(
        img, [np.array([_fp(*p) for p in holder], np.int32)], (48, 50, 55), cv2.LINE_AA, _SHIFT
    )
    cv2.polylines(
        img,
        [np.array([_fp(*p) for p in holder], np.int32)],
        True,
        (66, 69, 75),
        1,
        cv2.LINE_AA,
        _SHIFT,
    )
    pts = np.array([_fp(*p) for p in tri], np.int32)
    cv2.fillPoly(img, [pts], _rgb(colour), cv2.LINE_AA, _SHIFT)
    cv2.polylines(img, [pts], True, _scale(colour, 0.55), 1, cv2.LINE_AA, _SHIFT)
    scx = (tri[0][0] + tri[1][0] + tri[2][0]) / 3
    scy = (tri[0][1] + tri[1][1] + tri[2][1]) / 3
    cv2.circle(
        img, _fp(scx, scy), round(max(1.0, 0.12 * a) * _ONE), (30, 30, 34), -1, cv2.LINE_AA, _SHIFT
    )


def _render_turning(spec: ClipSpec) -> np.ndarray:
    sc = _turning_scene(spec)
    rng = np.random.default_rng([spec.seed, 2])
    bg = _turning_background(spec, sc, rng)
    w, h = spec.width, spec.height
    colour = MATERIAL_COLOURS[spec.material]
    shine = 0.12 if spec.material == "plastic" else 0.35
    chip_cols = _CHIP_COLOURS[spec.material]
    chuck_colour = (138, 142, 148)
    face_x, end_x = sc.chuck_face_x, sc.bar_end_x
    out = np.empty((spec.num_frames, h, w, 3), np.uint8)
    for i in range(spec.num_frames):
        frame = bg.copy()
        turn = sc.phase + i * sc.omega
        tx, ty = sc.tip_path[i]
        _paint_cylinder(
            frame,
            sc.chuck_x0,
            face_x,
            sc.yc,
            sc.chuck_radius,
            chuck_colour,
            sc.chuck_tex,
            sc.chuck_x0,
            turn,
            0.25,
        )
        cv2.line(
            frame,
            _fp(face_x - 0.5, sc.yc - sc.chuck_radius + 1),
            _fp(face_x - 0.5, sc.yc + sc.chuck_radius - 1),
            (70, 72, 76),
            1,
            cv2.LINE_AA,
            _SHIFT,
        )

        # Split the bar into stock-diameter and turned sections at the tool.
        if sc.facing:
            sections = [
                (face_x, end_x - sc.face_depth, sc.radius, sc.bar_tex),
                (end_x - sc.face_depth, end_x, min(sc.radius, ty - sc.yc), sc.cut_tex),
            ]
        else:
            cut_x = int(np.clip(round(tx), face_x, end_x))
            if spec.direction == "left":
                sections = [
                    (face_x, cut_x, sc.radius, sc.bar_tex),
                    (cut_x, end_x, sc.cut_radius, sc.cut_tex),
                ]
            else:
                start_x = int(np.clip(round(sc.tip_path[0, 0]), face_x, end_x))
                sections = [
                    (face_x, start_x, sc.radius, sc.bar_tex),
                    (start_x, cut_x, sc.cut_radius, sc.cut_tex),
                    (cut_x, end_x, sc.radius, sc.bar_tex),
                ]
        for x0, x1, r, tex in sections:
            if x1 > x0:
                _paint_cylinder(frame, x0, x1, sc.yc, r, colour, tex, face_x, turn, shine)

        # Chips curl off the tip, trailing behind the feed.
        back = 1.0 if spec.direction in ("left", "inward") else -1.0
        for _ in range(int(rng.integers(2, 6))):
            px = tx + back * rng.uniform(0.0, 1.6) * sc.insert_size
            py = ty + rng.uniform(-0.2, 1.2) * sc.insert_size
            _draw_chip(frame, px, py, rng.uniform(1.5, 0.45 * sc.insert_size + 2), (180, 330), chip_cols, rng)
        _draw_turning_tool(
            frame, (tx, ty), sc.insert_size, sc.insert_colour, mirror=spec.direction == "right", h=h
        )
        out[i] = frame
    return out
