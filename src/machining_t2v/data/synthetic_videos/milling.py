"""The milling scene: an end mill travelling over a block clamped on a machine table, cutting a groove."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import drawing
from .vocabulary import MATERIAL_COLOURS, MILLING_DIRECTION_VECTORS

if TYPE_CHECKING:  # clips.py imports this module to render
    from .clips import ClipSpec

__all__ = ["milling_tool_path", "render_milling"]


@dataclass(frozen=True)
class _MillingScene:
    """The geometry and motion of one milling clip, drawn from its spec's seed."""

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
    """The block, the tool and its straight path for ``spec``; checks the milling direction."""
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
    path = drawing.linear_path(start, end, spec.num_frames)
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
    """What stays still: the table with its T-slots, the vice jaws and the uncut block."""
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    bg = drawing.vertical_gradient(h, w, (92, 96, 101), (58, 61, 65))
    # Machine table with T-slots.
    tx0, ty0, tx1, ty1 = 0.03 * w + dx, 0.10 * h + dy, 0.97 * w + dx, 0.92 * h + dy
    cv2.rectangle(bg, drawing.fixed_point(tx0, ty0), drawing.fixed_point(tx1, ty1), (104, 108, 113), -1,
                  cv2.LINE_AA, drawing.SHIFT)
    slot_h = max(2.0, 0.028 * h)
    for k in range(6):
        ys = ty0 + (k + 0.5) * (ty1 - ty0) / 6
        cv2.rectangle(
            bg, drawing.fixed_point(tx0, ys), drawing.fixed_point(tx1, ys + slot_h), (46, 48, 52), -1, cv2.LINE_AA,
            drawing.SHIFT,
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
    cv2.rectangle(bg, (x0, y1), (x1 - 1, y1 + sc.side_depth - 1), drawing.scale_colour(colour, 0.68), -1)
    box = drawing.clip_box(x0, y0, x1, y1, w, h)
    if box is not None:
        bx0, by0, bx1, by1 = box
        # Brushed-metal streaks on the top face.
        streaks = rng.normal(0.0, 1.0, (by1 - by0, bx1 - bx0)).astype(np.float32)
        streaks = cv2.blur(streaks, (15, 1)) * 9.0
        bg[by0:by1, bx0:bx1] = colour[None, None, :] + streaks[..., None]
    cv2.line(bg, (x0, y0), (x1 - 1, y0), drawing.scale_colour(colour, 1.12, 12), 1)
    cv2.line(bg, (x0, y1), (x1 - 1, y1), drawing.scale_colour(colour, 0.5), 1)
    return drawing.finish_background(bg, rng)


def _draw_end_mill(img, centre, r: float, flutes: int, angle_deg: float, colour) -> None:
    """An end mill seen from the top: flute faces as lit sectors, cutting edges as spokes."""
    c = drawing.fixed_point(*centre)
    rr = round(r * drawing.ONE)
    cv2.circle(img, c, rr, drawing.scale_colour(colour, 0.45), -1, cv2.LINE_AA, drawing.SHIFT)
    pitch = 360.0 / flutes
    edge_t = max(1, round(r / 7))
    for k in range(flutes):
        a0 = angle_deg + k * pitch
        cv2.ellipse(
            img, c, (rr, rr), 0, a0 - 0.42 * pitch, a0, drawing.rgb(colour), -1, cv2.LINE_AA, drawing.SHIFT
        )
        ex = centre[0] + r * math.cos(math.radians(a0))
        ey = centre[1] + r * math.sin(math.radians(a0))
        cv2.line(img, c, drawing.fixed_point(ex, ey), (238, 238, 242), edge_t, cv2.LINE_AA, drawing.SHIFT)
    cv2.circle(img, c, rr, (30, 30, 34), 1, cv2.LINE_AA, drawing.SHIFT)
    cv2.circle(img, c, round(max(1.0, r * 0.16) * drawing.ONE), (40, 40, 44), -1, cv2.LINE_AA, drawing.SHIFT)


def render_milling(spec: ClipSpec) -> np.ndarray:
    """The frames of a milling clip: the groove grows behind the spinning end mill as it travels."""
    sc = _milling_scene(spec)
    rng = np.random.default_rng([spec.seed, 2])
    bg = _milling_background(spec, sc, rng)
    w, h = spec.width, spec.height
    colour = MATERIAL_COLOURS[spec.material]
    groove = drawing.scale_colour(colour, sc.groove_shade)
    floor = drawing.scale_colour(colour, sc.groove_shade + 0.14)
    chip = drawing.scale_colour(colour, 1.0, 35)
    r = sc.tool_radius
    x0, y0, x1, y1 = sc.block
    block_roi = drawing.clip_box(x0, y0, x1, y1, w, h)
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
            p0 = drawing.fixed_point(start[0] - bx0, start[1] - by0)
            p1 = drawing.fixed_point(cx - bx0, cy - by0)
            cv2.line(roi, p0, p1, groove, width_px, cv2.LINE_AA, drawing.SHIFT)
            # Offset floor leaves a dark wall on the side away from the light.
            off = max(1.0, 0.12 * r)
            q0 = drawing.fixed_point(start[0] - bx0 + off, start[1] - by0 + off)
            q1 = drawing.fixed_point(cx - bx0 + off, cy - by0 + off)
            cv2.line(roi, q0, q1, floor, max(1, width_px - 2 * round(off)), cv2.LINE_AA, drawing.SHIFT)
        # Soft contact shadow under the tool.
        sb = drawing.clip_box(cx - 2 * r, cy - 2 * r, cx + 2 * r, cy + 2 * r, w, h)
        if sb is not None:
            sx0, sy0, sx1, sy1 = sb
            roi = frame[sy0:sy1, sx0:sx1]
            shade = roi.copy()
            cv2.circle(
                shade,
                drawing.fixed_point(cx - sx0 + 0.25 * r, cy - sy0 + 0.3 * r),
                round(r * 1.05 * drawing.ONE),
                (0, 0, 0),
                -1,
                cv2.LINE_AA,
                drawing.SHIFT,
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
                drawing.fixed_point(px, py),
                drawing.fixed_point(px + ln * math.cos(b), py + ln * math.sin(b)),
                chip,
                1,
                cv2.LINE_AA,
                drawing.SHIFT,
            )
        _draw_end_mill(
            frame, (cx, cy), r, sc.flutes, sc.phase_deg + i * sc.omega_deg, sc.tool_colour
        )
        out[i] = frame
    return out
