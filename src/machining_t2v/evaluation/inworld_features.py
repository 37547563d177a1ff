"""Motion features of the in-world evaluator: what its motion head reads off a clip's optical flow.

:func:`motion_features` fits a clip's frames to 64x64 (:func:`fit_frames`, as the frame CNN sees
them too), takes Farneback flow between consecutive frames with the parameters the evaluator was
trained with (:data:`~machining_t2v.evaluation.flow.EVALUATOR_FARNEBACK_PARAMS`) and summarises it:
where the flow points (direction histograms binned by
:func:`~machining_t2v.evaluation.flow.direction_sums`), how coherent it is, how well a
translation / rotation / scaling explains it, whether it reverses (bounce) and how large it is
(static). The evaluator itself (:mod:`machining_t2v.evaluation.inworld`) records these settings in
its config (:func:`motion_features_config`) and refuses features of another version.

Numpy and OpenCV only: no torch, no Kedro.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from machining_t2v.evaluation.flow import (
    DIRECTIONS,
    EVALUATOR_FARNEBACK_PARAMS,
    direction_sums,
    farneback_flow,
)

__all__ = [
    "IMAGE_SIZE",
    "MOTION_FEATURES_VERSION",
    "MOVING_SHARE_INDEX",
    "check_clips",
    "clip_flows",
    "features_size",
    "fit_frames",
    "flow_features",
    "motion_features",
    "motion_features_config",
]

#: Frames are resized (shorter side) and centre-cropped to this size for both classifiers.
IMAGE_SIZE = 64
#: Bump whenever :func:`motion_features` changes, so a saved evaluator trained on the old
#: features is refused instead of silently misreading the new ones.
MOTION_FEATURES_VERSION = 1
#: Position of the share of moving pixels in the :func:`motion_features` vector.
MOVING_SHARE_INDEX = 2
# Flow below this many pixels per frame counts as "not moving" (encoder noise, shading).
_MOVE_THRESHOLD = 0.25
_DIRECTION_BINS = len(DIRECTIONS)
#: The direction histograms among the motion features run clockwise on screen from "right"
#: (right, down-right, down, ...): :data:`~machining_t2v.evaluation.flow.DIRECTIONS` reversed after "right",
#: the order the committed evaluator was trained with.
_FEATURE_ORDER = (-np.arange(_DIRECTION_BINS)) % _DIRECTION_BINS
_FEATURE_DIRECTIONS: tuple[str, ...] = tuple(DIRECTIONS[k] for k in _FEATURE_ORDER)
_GRID = 2


# --------------------------------------------------------------------------- frames


def check_clips(clips: np.ndarray, name: str = "clips") -> np.ndarray:
    """Validate a batch of clips: uint8 ``(N, F, H, W, 3)`` with ``F >= 2``."""
    if not isinstance(clips, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(clips).__name__}")
    if clips.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {clips.dtype}")
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, F, H, W, 3), got {clips.shape}")
    if clips.shape[1] < 2:
        raise ValueError(f"{name}: need at least 2 frames per clip (for motion), got {clips.shape[1]}")
    if clips.shape[2] < 8 or clips.shape[3] < 8:
        raise ValueError(f"{name} frames are too small: {clips.shape[2]}x{clips.shape[3]}")
    return clips


def fit_frames(frames: np.ndarray) -> np.ndarray:
    """Resize ``(F, H, W, 3)`` frames so the shorter side is 64, then centre-crop to 64x64."""
    h, w = frames.shape[1:3]
    if (h, w) == (IMAGE_SIZE, IMAGE_SIZE):
        return frames
    scale = IMAGE_SIZE / min(h, w)
    new_w, new_h = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
    # INTER_AREA when shrinking avoids aliasing that would look like motion to the flow.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    x0, y0 = (new_w - IMAGE_SIZE) // 2, (new_h - IMAGE_SIZE) // 2
    out = np.empty((len(frames), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, frame in enumerate(frames):
        resized = cv2.resize(frame, (new_w, new_h), interpolation=interp)
        out[i] = resized[y0:y0 + IMAGE_SIZE, x0:x0 + IMAGE_SIZE]
    return out


# --------------------------------------------------------------------------- motion features


def clip_flows(frames: np.ndarray) -> np.ndarray:
    """Farneback flow between consecutive 64x64 frames: ``(F-1, 64, 64, 2)`` float32, px/frame.

    Farneback's own output even between identical frames: the evaluator was trained on it.
    """
    return farneback_flow(frames, EVALUATOR_FARNEBACK_PARAMS, zero_when_identical=False)


def _direction_histogram(u: np.ndarray, v: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Magnitude-weighted histogram of flow directions, normalised to sum to 1 (zeros if no flow).

    Bins in :data:`_FEATURE_DIRECTIONS` order: bin 0 is "right", then clockwise on screen.
    """
    hist = direction_sums(u, v, mag, _DIRECTION_BINS)[_FEATURE_ORDER]
    total = hist.sum()
    return hist / total if total > 0 else hist


def _similarity_fit(u: np.ndarray, v: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                    weight: np.ndarray) -> tuple[float, float, float, float, float]:
    """Weighted least-squares fit ``flow = [[a, -b], [b, a]] @ (p - c) + t`` over the moving pixels.

    Returns ``(a, b, tx, ty, r)``: ``a`` is the scaling rate and ``b`` the rotation rate
    (radians/frame), ``t`` the translation and ``r`` the RMS radius of the moving region
    around its centroid ``c``. Closed form because the centred coordinates decouple ``t``.
    """
    wsum = weight.sum()
    if wsum <= 0:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    cx, cy = (weight * xs).sum() / wsum, (weight * ys).sum() / wsum
    x, y = xs - cx, ys - cy
    tx, ty = (weight * u).sum() / wsum, (weight * v).sum() / wsum
    r2 = (weight * (x * x + y * y)).sum()
    if r2 <= 1e-6:
        return 0.0, 0.0, float(tx), float(ty), 0.0
    a = (weight * (x * (u - tx) + y * (v - ty))).sum() / r2
    b = (weight * (x * (v - ty) - y * (u - tx))).sum() / r2
    return float(a), float(b), float(tx), float(ty), float(math.sqrt(r2 / wsum))


def flow_features(flows: np.ndarray) -> np.ndarray:
    """Fixed-length features of ``(T, H, W, 2)`` flow fields (see :func:`motion_features`)."""
    steps, h, w = flows.shape[:3]
    u, v = flows[..., 0].astype(np.float64), flows[..., 1].astype(np.float64)
    mag = np.hypot(u, v)
    moving = mag > _MOVE_THRESHOLD
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    eps = 1e-6

    # How much moves: log scale so static clips and 5 px/frame strokes are both resolved.
    mean_mag = mag.mean()
    moving_frac = moving.mean()
    mean_moving_mag = mag[moving].mean() if moving.any() else 0.0
    # (Index MOVING_SHARE_INDEX of the vector is moving_frac.)
    scale_feats = [math.log1p(mean_mag * 10), math.log1p(mean_moving_mag * 10), moving_frac]

    # Where it points: global and per-cell direction histograms (cells show *where* things move).
    weight = np.where(moving, mag, 0.0)
    hist = _direction_histogram(u, v, weight)
    cells = []
    for gy in range(_GRID):
        for gx in range(_GRID):
            sl = (slice(None), slice(gy * h // _GRID, (gy + 1) * h // _GRID),
                  slice(gx * w // _GRID, (gx + 1) * w // _GRID))
            cell_weight = weight[sl]
            cell_share = cell_weight.sum() / (weight.sum() + eps)
            cells.append(_direction_histogram(u[sl], v[sl], cell_weight) * cell_share)

    # Per-step similarity fit: translation t, scaling a and rotation b of the moving region.
    fits = np.array([
        _similarity_fit(u[k][moving[k]], v[k][moving[k]], xs[moving[k]], ys[moving[k]],
                        mag[k][moving[k]])
        for k in range(steps)
    ])
    a, b, tx, ty, r = fits.T
    step_mag = np.array([mag[k][moving[k]].mean() if moving[k].any() else 0.0 for k in range(steps)])
    norm = step_mag + eps
    scale_rate = a * r / norm  # ~ +-1 when the region grows/shrinks, ~0 for a translation
    spin_rate = b * r / norm   # ~ +-1 for a rotation about the region's centre
    trans = np.stack([tx, ty], axis=1)
    t_mean = trans.mean(axis=0)
    coherent = t_mean / (step_mag.mean() + eps)  # unit-ish vector when everything translates
    signed_log = np.sign(t_mean) * np.log1p(np.abs(t_mean) * 10)
    similarity_feats = [
        scale_rate.mean(), np.abs(scale_rate).mean(), spin_rate.mean(), np.abs(spin_rate).mean(),
        *coherent, *signed_log,
    ]

    # Does it come back? Net over path length of the translation, and reversals along its axis.
    path = np.linalg.norm(trans, axis=1).sum()
    net = np.linalg.norm(trans.sum(axis=0))
    net_ratio = net / (path + eps)
    # Share of the flow that is translation: ~1 when the moving thing slides (or bounces),
    # ~0 when it spins or scales in place. It gates the reversal statistics below, which are
    # noise when the translation is.
    share = np.linalg.norm(trans, axis=1).mean() / (step_mag.mean() + eps)
    if steps >= 2 and path > eps:
        axis = np.linalg.svd(trans, full_matrices=False)[2][0]
        proj = trans @ axis
        strong = proj[np.abs(proj) > 0.25 * np.abs(proj).max()]
        reversals = float((np.diff(np.sign(strong)) != 0).sum()) if len(strong) > 1 else 0.0
        # Bounce: the first half and the second half of the path point opposite ways...
        half = steps // 2
        first, second = trans[:half].sum(axis=0), trans[half:].sum(axis=0)
        opposite = -float(first @ second) / (np.linalg.norm(first) * np.linalg.norm(second) + eps)
        # ...and the position along the axis ends closer to the start than it got away from it.
        travelled = np.abs(np.cumsum(proj))
        comes_back = (travelled.max() - travelled[-1]) / (travelled.max() + eps)
    else:
        reversals, opposite, comes_back = 0.0, 0.0, 0.0
    temporal_feats = [net_ratio, reversals / max(1, steps - 1), opposite, share,
                      min(share, 1.0) * comes_back, min(share, 1.0) * opposite]

    # Shape of the moving region: a long bar spinning in a lathe vs a compact tool or shape.
    if moving.any():
        spread_x = xs[np.broadcast_to(moving.any(axis=0), (h, w))].std() / w
        spread_y = ys[np.broadcast_to(moving.any(axis=0), (h, w))].std() / h
    else:
        spread_x = spread_y = 0.0
    region_feats = [spread_x, spread_y]

    return np.concatenate([
        scale_feats, hist, np.concatenate(cells), similarity_feats, temporal_feats, region_feats,
    ]).astype(np.float32)


def motion_features(clip: np.ndarray) -> np.ndarray:
    """Optical-flow features of one clip ``(F, H, W, 3)`` uint8 RGB, ``F >= 2``; float32 vector.

    Frames are fitted to 64x64, converted to grey and Farneback flow is taken between
    consecutive frames. The vector holds: flow scale (log mean magnitude, share of moving
    pixels); a magnitude-weighted 8-direction histogram, globally and on a 2x2 grid; a
    per-frame similarity fit of the moving region (scaling and rotation rates relative to
    the flow, mean translation); reversal statistics of the translation (bounce); and
    the spatial spread of the moving region. A few ms per 8-frame clip.
    """
    if not isinstance(clip, np.ndarray):
        raise TypeError(f"clip must be a numpy array, got {type(clip).__name__}")
    if clip.ndim != 4:
        raise ValueError(f"clip must have shape (F, H, W, 3), got {clip.shape}")
    clip = check_clips(clip[None], "clip")[0]
    return flow_features(clip_flows(fit_frames(clip)))


def features_size() -> int:
    """Length of the :func:`motion_features` vector."""
    blank = np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 2), np.float32)
    return len(flow_features(blank))


def motion_features_config(size: int) -> dict[str, Any]:
    """The ``motion_features`` entry of an evaluator's config: how its ``size`` features were computed."""
    return {
        "version": MOTION_FEATURES_VERSION,
        "size": size,
        "flow": "farneback",
        "flow_params": EVALUATOR_FARNEBACK_PARAMS,
        "move_threshold": _MOVE_THRESHOLD,
        "direction_bins": _DIRECTION_BINS,
        "grid": _GRID,
    }
