"""Drawing helpers the milling and turning scenes share: sub-pixel coordinates, colours, backgrounds, paths."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ONE",
    "SHIFT",
    "clip_box",
    "finish_background",
    "fixed_point",
    "linear_path",
    "rgb",
    "scale_colour",
    "vertical_gradient",
]

# cv2 drawing calls take fixed-point coordinates with this many fractional bits,
# which keeps slow sub-pixel motion smooth instead of jumping pixel by pixel.
SHIFT = 4
ONE = 1 << SHIFT

Colour = Sequence[float]


def fixed_point(x: float, y: float) -> tuple[int, int]:
    """The point ``(x, y)`` in cv2's fixed-point coordinates (``SHIFT`` fractional bits)."""
    return (round(x * ONE), round(y * ONE))


def rgb(c: Colour) -> tuple[int, int, int]:
    """``c`` as a tuple of three ints in [0, 255], the colour type cv2 accepts."""
    # cv2 rejects numpy scalars inside colour tuples.
    return tuple(int(np.clip(round(float(v)), 0, 255)) for v in c)


def scale_colour(colour: Colour, factor: float, add: float = 0.0) -> tuple[int, int, int]:
    """``colour * factor + add``, clipped: a darker or lighter shade of ``colour``."""
    return rgb(np.asarray(colour, np.float32) * factor + add)


def vertical_gradient(h: int, w: int, top: Colour, bottom: Colour) -> np.ndarray:
    """A float32 ``(h, w, 3)`` image blending from ``top`` at the first row to ``bottom`` at the last."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(col, (h, w, 3)).copy()


def clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple[int, int, int, int] | None:
    """Integer half-open box clipped to the frame, or None when empty."""
    bx0, by0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    bx1, by1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
    if bx0 >= bx1 or by0 >= by1:
        return None
    return bx0, by0, bx1, by1


def finish_background(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The float background ``bg`` with fixed grain added, as ``uint8``."""
    # Fixed sensor-like grain: real footage is never flat, and it is static so it
    # adds no fake motion.
    bg = bg + rng.normal(0.0, 2.0, bg.shape[:2] + (1,)).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def linear_path(start: Sequence[float], end: Sequence[float], n: int) -> np.ndarray:
    """``n`` evenly spaced points from ``start`` to ``end``, shape ``(n, 2)`` (``start`` alone when ``n == 1``)."""
    t = np.linspace(0.0, 1.0, n)[:, None] if n > 1 else np.zeros((1, 1))
    return np.asarray(start, float)[None] * (1 - t) + np.asarray(end, float)[None] * t
