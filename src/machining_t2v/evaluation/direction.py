"""Which way a clip's tool travels, model-free: the net displacement of the moving region.

A milling clip's tool spins *and* travels; a turning clip's bar spins in place while the tool
feeds. Averaging the optical flow of the fastest pixels reads the spin (the flutes outweigh the
travel at 64 px), so :func:`travel_vector` follows *where* things change instead:

1. grey frames at :data:`WORKING_SIDE` px (shorter side), changes between consecutive frames
   above :data:`CHANGE_THRESHOLD` grey levels;
2. pixels that change in at least :data:`IN_PLACE_SHARE` of the frame pairs move in place (a
   spinning bar, a spinning tool standing still) and are left out, with a margin of
   :data:`IN_PLACE_MARGIN` px;
3. per frame pair, the centroid of what is left (weighted by how much it changed); a straight
   line fitted to the centroids over time gives the net displacement over the clip.

A moving object changes the pixels at its leading and trailing edges, so that centroid follows
it; a pattern spinning in place changes a region that stays where it is. The displacement is
named with :data:`~machining_t2v.evaluation.flow.DIRECTIONS`; below :data:`MIN_TRAVEL` px the clip
has no travel direction (``None``). :func:`screen_direction` reads a ``direction`` column
(``metadata.csv``) in the same words, and :func:`agreement` is the share that matches.

No Kedro import, no torch.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import cv2
import numpy as np

from machining_t2v.data.synthetic_videos.vocabulary import (
    MILLING_DIRECTION_VECTORS,
    TURNING_DIRECTION_VECTORS,
)
from machining_t2v.evaluation.flow import DIRECTIONS, direction_sums

__all__ = [
    "CHANGE_THRESHOLD",
    "IN_PLACE_MARGIN",
    "IN_PLACE_SHARE",
    "MIN_TRAVEL",
    "WORKING_SIDE",
    "agreement",
    "most_common_direction",
    "screen_direction",
    "travel_direction",
    "travel_vector",
]

WORKING_SIDE = 64
"""Clips are resized (INTER_AREA) so that their shorter side has this many pixels."""
CHANGE_THRESHOLD = 8.0
"""A pixel changes between two frames when its grey level moves by more than this (0-255)."""
IN_PLACE_SHARE = 0.55
"""A pixel that changes in at least this share of the frame pairs moves in place (spins)."""
IN_PLACE_MARGIN = 2
"""Pixels this close (working px) to an in-place pixel are left out too: a spin's blurred rim."""
MIN_TRAVEL = 1.0
"""Net displacements shorter than this (working px over the clip) are no travel."""


def _working_greys(frames: np.ndarray) -> np.ndarray:
    """Grey frames as float32 at :data:`WORKING_SIDE` px on the shorter side."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected a uint8 RGB clip (T >= 2, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    scale = WORKING_SIDE / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    greys = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    if size != (width, height):
        greys = [cv2.resize(grey, size, interpolation=cv2.INTER_AREA) for grey in greys]
    return np.stack(greys).astype(np.float32)


def travel_vector(frames: np.ndarray) -> tuple[float, float]:
    """Net displacement ``(dx, dy)`` of the moving region over the clip, in working px, y down.

    See the module docstring for the steps; ``(0.0, 0.0)`` when fewer than two frame pairs have
    a moving region outside what spins in place.
    """
    greys = _working_greys(frames)
    changes = np.abs(np.diff(greys, axis=0))
    changed = changes > CHANGE_THRESHOLD
    in_place = (changed.mean(axis=0) >= IN_PLACE_SHARE).astype(np.uint8)
    kernel = np.ones((2 * IN_PLACE_MARGIN + 1,) * 2, np.uint8)
    travelling = changed & ~cv2.dilate(in_place, kernel).astype(bool)
    ys, xs = np.mgrid[0 : greys.shape[1], 0 : greys.shape[2]]
    times, centroids = [], []
    for pair, (change, mask) in enumerate(zip(changes, travelling, strict=True)):
        weight = np.where(mask, change, 0.0)
        total = float(weight.sum())
        if total > 0:
            times.append(pair)
            centroids.append(((weight * xs).sum() / total, (weight * ys).sum() / total))
    if len(times) < 2:
        return 0.0, 0.0
    # A fitted line, not last minus first: one frame pair with a stray change must not decide.
    slope = np.polyfit(np.asarray(times, np.float64), np.asarray(centroids, np.float64), 1)[0]
    dx, dy = slope * (len(changes) - 1)
    return float(dx), float(dy)


def _name(dx: float, dy: float) -> str:
    """The one of :data:`DIRECTIONS` whose 45-degree sector holds ``(dx, dy)`` (y down)."""
    sums = direction_sums(np.array([dx]), np.array([dy]), np.array([1.0]))
    return DIRECTIONS[int(np.argmax(sums))]


def travel_direction(frames: np.ndarray) -> str | None:
    """The on-screen direction (:data:`DIRECTIONS`) the clip's moving region travels, or None
    when it travels less than :data:`MIN_TRAVEL` working px (standing still, or spinning in place)."""
    dx, dy = travel_vector(frames)
    return _name(dx, dy) if math.hypot(dx, dy) >= MIN_TRAVEL else None


def _vocabulary() -> dict[str, str]:
    words = {name: name for name in DIRECTIONS}
    for word, (dx, dy) in {**MILLING_DIRECTION_VECTORS, **TURNING_DIRECTION_VECTORS}.items():
        words.setdefault(word, _name(dx, dy))
    return words


_SCREEN_WORDS = _vocabulary()


def screen_direction(word: object) -> str | None:
    """A ``direction`` value of ``metadata.csv`` as one of :data:`DIRECTIONS`, or None.

    Accepts the names of :data:`DIRECTIONS` themselves ("right", "up-left") and the sample
    videos' words (milling "x", "-y", "diagonal"; turning "left", "inward"). Empty or missing
    values give None; an unknown word is an error naming the accepted ones.
    """
    if word is None or (isinstance(word, float) and math.isnan(word)) or not str(word).strip():
        return None
    key = str(word).strip().lower()
    if key not in _SCREEN_WORDS:
        raise ValueError(f"direction {word!r} is not one of {sorted(_SCREEN_WORDS)}")
    return _SCREEN_WORDS[key]


def most_common_direction(directions: Iterable[str | None]) -> str | None:
    """The direction most of ``directions`` name (None and NaN ignored; ties: the first of
    :data:`DIRECTIONS`); None when none names one."""
    counts = Counter(d for d in directions if isinstance(d, str))
    if not counts:
        return None
    best = max(counts.values())
    return next(d for d in DIRECTIONS if counts.get(d) == best)


def agreement(measured: str | None, expected: str | None) -> float:
    """1.0 when a clip travels the expected direction, 0.0 when not (or not at all), NaN when
    nothing is expected (None, or NaN from a table)."""
    if not isinstance(expected, str):
        return float("nan")
    return float(measured == expected)

