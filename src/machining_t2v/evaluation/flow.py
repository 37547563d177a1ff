"""Optical flow and on-screen directions: the one implementation the metrics and the in-world
evaluator share.

* :func:`farneback_flow` is OpenCV's Farneback flow between consecutive grey frames, with one of
  the two parameter sets defined here: the user-facing metrics use OpenCV's tutorial values
  (:data:`METRICS_FARNEBACK_PARAMS`), the in-world evaluator's motion features the values it was
  trained with (:data:`EVALUATOR_FARNEBACK_PARAMS`, recorded in its ``inworld_evaluator.json``).
* :data:`DIRECTIONS` names the eight on-screen directions, and :func:`direction_sums` bins flow
  vectors into them. A direction histogram anywhere in the product (the metrics'
  ``direction_histogram``, the evaluator's motion features) is made by this function; only the
  order in which a caller lays the bins out may differ, and it says so.

Image coordinates throughout: x points right, y points *down*, flow in pixels per frame.
This module must not import Kedro.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

__all__ = [
    "DIRECTIONS",
    "DIRECTION_VECTORS",
    "EVALUATOR_FARNEBACK_PARAMS",
    "METRICS_FARNEBACK_PARAMS",
    "direction_sums",
    "farneback_flow",
]

METRICS_FARNEBACK_PARAMS: dict[str, float | int] = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
"""Farneback parameters of the video metrics (:mod:`machining_t2v.evaluation.metrics`): OpenCV's
tutorial values."""

# Three pyramid levels reach ~8 px/frame of motion at 64x64, enough for strided clips. No "flags"
# key: the evaluator's config records these exactly as it was trained with them.
EVALUATOR_FARNEBACK_PARAMS: dict[str, float | int] = {
    "pyr_scale": 0.5, "levels": 3, "winsize": 9, "iterations": 3, "poly_n": 5, "poly_sigma": 1.1,
}
"""Farneback parameters of the in-world evaluator's motion features
(:mod:`machining_t2v.evaluation.inworld_features`): the values the committed evaluator was trained with."""

DIRECTIONS: tuple[str, ...] = (
    "right",
    "up-right",
    "up",
    "up-left",
    "left",
    "down-left",
    "down",
    "down-right",
)
"""The eight on-screen directions, counter-clockwise as seen on screen from "right": bin ``k``
of an 8-bin :func:`direction_sums` is centred on ``k * 45`` degrees above the +x axis."""

_DIAGONAL = math.sqrt(0.5)
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "up-right": (_DIAGONAL, -_DIAGONAL),
    "up": (0.0, -1.0),
    "up-left": (-_DIAGONAL, -_DIAGONAL),
    "left": (-1.0, 0.0),
    "down-left": (-_DIAGONAL, _DIAGONAL),
    "down": (0.0, 1.0),
    "down-right": (_DIAGONAL, _DIAGONAL),
}
"""Unit vector of each of :data:`DIRECTIONS` in image coordinates ``(dx, dy)``, y down."""


def farneback_flow(
    frames: np.ndarray,
    params: Mapping[str, float | int],
    *,
    max_short_side: int | None = None,
    zero_when_identical: bool = True,
) -> np.ndarray:
    """Dense flow between consecutive frames of a uint8 RGB clip ``(T, H, W, 3)``, ``T >= 2``.

    Returns ``(T-1, H', W', 2)`` float32: channel 0 is dx (rightwards), channel 1 dy (downwards),
    in pixels per frame at the working size. Frames are converted with ``cv2.COLOR_RGB2GRAY``;
    when ``max_short_side`` is given and the shorter side is larger, the grey frames are first
    downscaled (INTER_AREA) so that it equals ``max_short_side``. Deterministic.

    Args:
        frames: the clip; the caller validates it.
        params: ``pyr_scale``, ``levels``, ``winsize``, ``iterations``, ``poly_n``, ``poly_sigma``
            and optionally ``flags`` (default 0) of ``cv2.calcOpticalFlowFarneback``.
        max_short_side: see above; ``None`` keeps the frames' size.
        zero_when_identical: a pair of identical grey frames gets exactly zero flow without
            running Farneback (which returns ~1e-3 px of numerical noise there). The in-world
            evaluator was trained on Farneback's own output and turns this off.
    """
    height, width = frames.shape[1:3]
    size = None
    if max_short_side is not None and min(height, width) > max_short_side:
        scale = max_short_side / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
    greys = []
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if size is not None:
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        greys.append(grey)
    args = (float(params["pyr_scale"]), int(params["levels"]), int(params["winsize"]),
            int(params["iterations"]), int(params["poly_n"]), float(params["poly_sigma"]),
            int(params.get("flags", 0)))
    flows = []
    for a, b in zip(greys[:-1], greys[1:], strict=True):
        if zero_when_identical and np.array_equal(a, b):
            flows.append(np.zeros((*a.shape, 2), np.float32))
        else:
            flows.append(cv2.calcOpticalFlowFarneback(a, b, None, *args))
    return np.stack(flows).astype(np.float32, copy=False)


def direction_sums(dx: np.ndarray, dy: np.ndarray, weight: np.ndarray, bins: int = 8) -> np.ndarray:
    """Sum of ``weight`` per on-screen direction of the flow vectors ``(dx, dy)`` (y down).

    The on-screen angle ``atan2(-dy, dx)`` (counter-clockwise as seen) falls in one of ``bins``
    equal sectors, bin 0 *centred* on "right": with 8 bins the order of :data:`DIRECTIONS`.
    Computed in the inputs' precision; not normalised (float64, zeros where nothing is weighted);
    arrays of any matching shape.
    """
    sector = 2 * np.pi / bins
    angle = np.mod(np.arctan2(-np.ravel(dy), np.ravel(dx)), 2 * np.pi)
    index = np.floor(angle / sector + 0.5).astype(np.int64) % bins
    return np.bincount(index, weights=np.ravel(weight), minlength=bins).astype(np.float64)
