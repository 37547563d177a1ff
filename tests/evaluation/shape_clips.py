"""Plain-shape clips with a known motion, drawn with OpenCV, for the in-world evaluator's tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

FRAMES = 8
SIZE = 64
# Unit steps on screen (y points down) for the shape translations.
STEPS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "down-right": (1, 1),
         "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1)}
SHAPE_MOTIONS = (*STEPS, "rotate", "scale", "bounce", "static")


def _luma(rgb: Sequence[int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def shape_clip(motion: str, rng: np.random.Generator, variant: int = 0) -> np.ndarray:
    """A filled circle or square (a bar for "rotate") on a plain background doing ``motion``.

    ``variant`` picks the bounce axis (right, down, up-right, down-right), so that a few
    bounces in a row cover every axis: the evaluator cannot guess an axis it never saw.
    """
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    # Flow is taken on grey frames: an isoluminant shape would be invisible (and so would
    # its neutral version), so insist on a brightness difference; and a "shop" clip must
    # look colourful, so the shape is never near-grey.
    while abs(_luma(background) - _luma(colour)) < 60 or max(colour) - min(colour) < 80:
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    kind = "bar" if motion == "rotate" else str(rng.choice(["circle", "square"]))
    size = rng.uniform(7, 12)
    speed = rng.uniform(2.0, 3.5)
    cx, cy = rng.uniform(24, 40, 2)
    angle0 = rng.uniform(0, 180)
    spin = rng.uniform(12, 25) * rng.choice([-1, 1])
    grow = rng.choice([1.08, 1 / 1.08]) ** rng.uniform(1.0, 1.6)
    bounce_dx, bounce_dy = STEPS[("right", "down", "up-right", "down-right")[variant % 4]]
    frames = []
    for t in range(FRAMES):
        x, y, s, angle = cx, cy, size, angle0
        if motion in STEPS:
            dx, dy = STEPS[motion]
            x += (t - 3.5) * speed * dx / math.hypot(dx, dy)
            y += (t - 3.5) * speed * dy / math.hypot(dx, dy)
        elif motion == "bounce":  # out for four frames, then back
            d = (t if t <= 4 else 8 - t) - 2
            x, y = cx + 1.3 * d * speed * bounce_dx, cy + 1.3 * d * speed * bounce_dy
        elif motion == "rotate":
            angle = angle0 + spin * t
        elif motion == "scale":
            s = size * grow ** (t - 3.5)
        frame = np.full((SIZE, SIZE, 3), background, np.uint8)
        if kind == "circle":
            cv2.circle(frame, (round(x * 16), round(y * 16)), round(s * 16), colour, -1, cv2.LINE_AA, 4)
        else:
            box = ((x, y), (2 * s, 2 * s), angle) if kind == "square" else ((x, y), (2.6 * s, 1.1 * s), angle)
            cv2.fillPoly(frame, [np.round(cv2.boxPoints(box) * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)
        frames.append(frame)
    return np.stack(frames)
