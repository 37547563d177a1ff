"""The turning scene: a bar spinning in a lathe chuck while a fixed insert feeds along it or into its end."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import drawing
from .vocabulary import MATERIAL_COLOURS, TURNING_DIRECTIONS

if TYPE_CHECKING:  # clips.py imports this module to render
    from .clips import ClipSpec

__all__ = ["render_turning", "turning_bar_box", "turning_tool_path"]

_TEX_BINS = 128  # samples around the bar's circumference


@dataclass(frozen=True)
class _TurningScene:
    """The geometry, textures and motion of one turning clip, drawn from its spec's seed."""

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
    """The chuck, the bar with its surface textures and the insert's path for ``spec``; checks the turning direction."""
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
        start = (x, yc + radius + 0.04 * h * spec.feed_scale)
        end = (x, yc + radius * rng.uniform(0.1, 0.25))
    else:
        # Real feeds are far too slow to see; keep the exaggerated feed small next to
        # the spin (about a pixel per frame at 256 px) so the bar stays the main motion.
        # A feed_scale above 1 speeds it up and lets it run along more of the bar.
        travel = min(min(0.45 * spec.feed_scale, 0.85) * length,
                     w * rng.uniform(0.004, 0.006) * spec.feed_scale * max(1, spec.num_frames - 1))
        if spec.direction == "left":
            start = (end_x + 0.02 * w, yc + cut_radius)
            end = (start[0] - travel, yc + cut_radius)
        else:
            sx = face_x + 0.08 * w + length * rng.uniform(0.0, 0.1)
            start = (sx, yc + cut_radius)
            end = (min(sx + travel, end_x - 0.02 * w), yc + cut_radius)
    tip_path = drawing.linear_path(start, end, spec.num_frames)

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
    box = drawing.clip_box(
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


def _draw_chip(canvas: np.ndarray, x: float, y: float, radius: float, end_angle_range: tuple[float, float],
               colours: tuple[tuple[int, int, int], tuple[int, int, int]], rng: np.random.Generator) -> None:
    """A curled chip: an arc of a random start angle, sweep end and one of two colours."""
    axis = round(radius * drawing.ONE)
    start, end = rng.uniform(0, 360), rng.uniform(*end_angle_range)
    cv2.ellipse(canvas, drawing.fixed_point(x, y), (axis, axis), 0, start, end, colours[int(rng.integers(2))], 1,
                cv2.LINE_AA, drawing.SHIFT)


def _turning_background(spec: ClipSpec, sc: _TurningScene, rng: np.random.Generator) -> np.ndarray:
    """What stays still: the lathe bed with old chips and the headstock behind the chuck."""
    w, h = spec.width, spec.height
    dx, dy = spec.camera_offset
    bg = drawing.vertical_gradient(h, w, (84, 88, 94), (62, 65, 70))
    # Bed with its ways and a scatter of old chips.
    bed_y = 0.80 * h + dy
    cv2.rectangle(bg, drawing.fixed_point(-5, bed_y), drawing.fixed_point(w + 5, h + 5), (52, 56, 60), -1,
                  cv2.LINE_AA, drawing.SHIFT)
    for fy in (0.03, 0.11):
        cv2.line(
            bg,
            drawing.fixed_point(-5, bed_y + fy * h),
            drawing.fixed_point(w + 5, bed_y + fy * h),
            (150, 154, 160),
            max(1, round(0.012 * h)),
            cv2.LINE_AA,
            drawing.SHIFT,
        )
    chip_cols = _CHIP_COLOURS[spec.material]
    for _ in range(18):
        px, py = rng.uniform(0.25 * w, 0.95 * w) + dx, rng.uniform(bed_y + 0.12 * h, h)
        _draw_chip(bg, px, py, rng.uniform(1.5, 4.0), (200, 320), chip_cols, rng)
    # Headstock housing behind the chuck.
    cv2.rectangle(
        bg,
        drawing.fixed_point(-5, 0.14 * h + dy),
        drawing.fixed_point(sc.chuck_x0 + 2, 0.76 * h + dy),
        (66, 92, 108),
        -1,
        cv2.LINE_AA,
        drawing.SHIFT,
    )
    cv2.line(
        bg,
        drawing.fixed_point(-5, 0.14 * h + dy),
        drawing.fixed_point(sc.chuck_x0, 0.14 * h + dy),
        (110, 136, 150),
        1,
        cv2.LINE_AA,
        drawing.SHIFT,
    )
    return drawing.finish_background(bg, rng)


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
        drawing.fixed_point(min(post[0], post[2]), post[1]),
        drawing.fixed_point(max(post[0], post[2]), post[3]),
        (84, 90, 98),
        -1,
        cv2.LINE_AA,
        drawing.SHIFT,
    )
    cv2.rectangle(
        img,
        drawing.fixed_point(min(post[0], post[2]), post[1]),
        drawing.fixed_point(max(post[0], post[2]), post[3]),
        (62, 66, 72),
        1,
        cv2.LINE_AA,
        drawing.SHIFT,
    )
    cv2.fillPoly(
        img, [np.array([drawing.fixed_point(*p) for p in holder], np.int32)], (48, 50, 55), cv2.LINE_AA, drawing.SHIFT
    )
    cv2.polylines(
        img,
        [np.array([drawing.fixed_point(*p) for p in holder], np.int32)],
        True,
        (66, 69, 75),
        1,
        cv2.LINE_AA,
        drawing.SHIFT,
    )
    pts = np.array([drawing.fixed_point(*p) for p in tri], np.int32)
    cv2.fillPoly(img, [pts], drawing.rgb(colour), cv2.LINE_AA, drawing.SHIFT)
    cv2.polylines(img, [pts], True, drawing.scale_colour(colour, 0.55), 1, cv2.LINE_AA, drawing.SHIFT)
    scx = (tri[0][0] + tri[1][0] + tri[2][0]) / 3
    scy = (tri[0][1] + tri[1][1] + tri[2][1]) / 3
    cv2.circle(
        img, drawing.fixed_point(scx, scy), round(max(1.0, 0.12 * a) * drawing.ONE), (30, 30, 34), -1, cv2.LINE_AA,
        drawing.SHIFT,
    )


def render_turning(spec: ClipSpec) -> np.ndarray:
    """The frames of a turning clip: chuck and bar spin, the insert feeds and leaves a turned surface."""
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
            drawing.fixed_point(face_x - 0.5, sc.yc - sc.chuck_radius + 1),
            drawing.fixed_point(face_x - 0.5, sc.yc + sc.chuck_radius - 1),
            (70, 72, 76),
            1,
            cv2.LINE_AA,
            drawing.SHIFT,
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
