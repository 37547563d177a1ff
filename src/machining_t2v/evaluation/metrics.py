"""Model-free video metrics: temporal flickering, optical flow, dynamic degree, flow statistics
and motion fidelity to reference clips.

All functions take one clip as a uint8 RGB array of shape ``(T, H, W, 3)`` with ``T >= 2``.

Units. Flow magnitudes reported by :func:`dynamic_degree`, :func:`flow_statistics`,
:func:`motion_fidelity` and :func:`video_metrics` are in **px256**: pixels per frame as if the
clip's shorter side were 256 pixels (raw flow magnitude x 256 / min(H, W)). This is the scale
VBench's dynamic-degree threshold is defined at, and it lets a 64-px generated clip be compared
with a 480-px reference clip on the same fixed histogram bins.

Optical flow is OpenCV's Farneback on grey frames with fixed parameters
(:data:`~machining_t2v.evaluation.flow.METRICS_FARNEBACK_PARAMS`, the values of OpenCV's own
tutorial), so results are deterministic and need no model. Clips whose shorter side exceeds
:data:`WORKING_SHORT_SIDE` are first downscaled to it (INTER_AREA) for the flow-based metrics:
VBench-like resolution, and bounded cost for large reference videos.

This module must not import Kedro: it also runs in notebooks and evaluation scripts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from machining_t2v.evaluation.flow import METRICS_FARNEBACK_PARAMS, direction_sums, farneback_flow

WORKING_SHORT_SIDE = 256
"""Flow-based metrics downscale clips whose shorter side is larger than this."""

REFERENCE_SHORT_SIDE = 256.0
"""Flow magnitudes are reported as if the shorter side were this many pixels (px256)."""

DYNAMIC_THRESHOLD = 6.0
"""VBench's dynamic-degree threshold: 6 px per frame at a 256-pixel shorter side."""

DYNAMIC_TOP_FRACTION = 0.05
"""Dynamic degree averages the largest 5% of flow magnitudes of each frame pair (VBench)."""

DEFAULT_MAGNITUDE_BINS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Left edges (px256) of the magnitude histogram's bins; the last bin is open-ended."""

MOVING_THRESHOLD = 1.0
"""A pixel "moves" when its flow magnitude exceeds this many px256 (0.25 px on a 64-px clip)."""

# --------------------------------------------------------------------------- helpers


def _check_clip(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"expected uint8 frames, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"need at least 2 frames, got {frames.shape[0]}")
    return frames


def _flow_px256(frames: np.ndarray) -> np.ndarray:
    """Flow at the working resolution, rescaled to px256 units."""
    flow = optical_flow(frames, max_short_side=WORKING_SHORT_SIDE)
    return flow * np.float32(REFERENCE_SHORT_SIDE / min(flow.shape[1:3]))


def _top_fraction_means(magnitude: np.ndarray, fraction: float) -> np.ndarray:
    """Per frame pair, the mean of the largest ``fraction`` of magnitudes (at least one value)."""
    flat = magnitude.reshape(magnitude.shape[0], -1)
    k = max(1, int(flat.shape[1] * fraction))
    # partition is O(n) against sort's O(n log n); only the top-k set matters, not its order.
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.mean(axis=1, dtype=np.float64)


# --------------------------------------------------------------------------- public API


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench temporal flickering: mean over consecutive frame pairs of
    ``(255 - mean|f_t - f_{t+1}|) / 255``, the inner mean over all pixels and channels.

    1.0 for identical frames; near 0 for frames alternating black and white. Higher is steadier.
    """
    frames = _check_clip(frames)
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0))
    per_pair = (255.0 - diffs.mean(axis=(1, 2, 3), dtype=np.float64)) / 255.0
    return float(per_pair.mean())


def optical_flow(frames: np.ndarray, max_short_side: int | None = None) -> np.ndarray:
    """Dense optical flow between consecutive grey frames, shape ``(T-1, H, W, 2)``, float32.

    Channel 0 is dx (rightwards), channel 1 is dy (downwards, image coordinates), in pixels per
    frame. Computed with ``cv2.calcOpticalFlowFarneback`` and
    :data:`~machining_t2v.evaluation.flow.METRICS_FARNEBACK_PARAMS`
    (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, poly_sigma 1.2), grey frames
    from ``cv2.COLOR_RGB2GRAY``. Deterministic. A pair of identical (grey) frames gets exactly
    zero flow without running Farneback.

    Args:
        frames: uint8 RGB clip ``(T, H, W, 3)``, ``T >= 2``.
        max_short_side: if given and the shorter side is larger, frames are first downscaled
            (INTER_AREA) so that it equals this; the flow is then at (and in pixels of) that size.
    """
    return farneback_flow(_check_clip(frames), METRICS_FARNEBACK_PARAMS, max_short_side=max_short_side)


def dynamic_degree(frames: np.ndarray, threshold: float = DYNAMIC_THRESHOLD) -> tuple[float, bool]:
    """VBench-style dynamic degree: ``(score, score > threshold)``.

    For each consecutive frame pair, the flow magnitudes (px256, see module docstring) are
    sorted and the largest 5% averaged; the clip's score is the **mean** of these per-pair
    values. ``threshold`` is in px256 too: the default 6.0 is VBench's ``6.0 * min(H, W) / 256``
    pixels expressed at 256 px. (VBench instead counts pairs above the threshold and calls a
    clip dynamic once about a quarter of them are; the mean is steadier for short clips.)

    Identical frames give ``(0.0, False)``.
    """
    frames = _check_clip(frames)
    return _dynamic_from_flow(_flow_px256(frames), threshold)


def _dynamic_from_flow(flow: np.ndarray, threshold: float) -> tuple[float, bool]:
    magnitude = np.linalg.norm(flow, axis=-1)
    score = float(_top_fraction_means(magnitude, DYNAMIC_TOP_FRACTION).mean())
    return score, bool(score > threshold)


@dataclass(frozen=True)
class FlowStatistics:
    """Motion summary of one clip (see :func:`flow_statistics` for the definitions).

    Attributes:
        magnitude_histogram: fraction of all pixels of all frame pairs per magnitude bin (sums to 1).
        magnitude_bin_edges: left edges of those bins in px256; the last bin is open-ended.
        direction_histogram: magnitude-weighted direction histogram of moving pixels (sums to 1,
            or all zeros if nothing moves); bin 0 is centred on "right", counter-clockwise on screen.
        mean_magnitude: mean flow magnitude over all pixels and pairs, px256 per frame.
        moving_fraction: fraction of pixels (over all pairs) whose magnitude exceeds the
            moving threshold.
        rotation_ratio: share of rotation in the motion, in [0, 1] (0 if nothing moves).
        mean_tangential: signed mean tangential flow of moving pixels around their centroid,
            px256 per frame; positive = counter-clockwise on screen.
        mean_translation: mean flow vector of moving pixels ``(dx, dy_up)`` in px256 per frame,
            y pointing up on screen.
    """

    magnitude_histogram: np.ndarray
    magnitude_bin_edges: np.ndarray
    direction_histogram: np.ndarray
    mean_magnitude: float
    moving_fraction: float
    rotation_ratio: float
    mean_tangential: float
    mean_translation: tuple[float, float]

    @property
    def has_motion(self) -> bool:
        return bool(self.direction_histogram.sum() > 0)


def flow_statistics(
    frames: np.ndarray,
    magnitude_bins: Sequence[float] = DEFAULT_MAGNITUDE_BINS,
    direction_bins: int = 8,
    moving_threshold: float = MOVING_THRESHOLD,
) -> FlowStatistics:
    """Flow statistics of a clip, from :func:`optical_flow` at the working resolution, in px256.

    Definitions (all over every consecutive frame pair):

    - **magnitude histogram**: every pixel's flow magnitude counted in fixed bins whose left
      edges are ``magnitude_bins`` (default 0, 0.5, 1, 2, 4, 8, 16, 32, 64 px256; the last bin
      is open-ended), normalised to sum 1. Fixed edges make clips of any size comparable.
    - **moving pixels**: magnitude > ``moving_threshold`` (default 1.0 px256).
    - **direction histogram**: on-screen angle ``atan2(-dy, dx)`` of each moving pixel (image y
      points down, so ``-dy`` makes angles counter-clockwise as seen on screen), in
      ``direction_bins`` equal sectors with bin 0 *centred* on +x (rightwards); weighted by
      magnitude, normalised to sum 1 (all zeros if nothing moves). With 8 bins:
      0 right, 1 up-right, 2 up, 3 up-left, 4 left, 5 down-left, 6 down, 7 down-right
      (:data:`~machining_t2v.evaluation.flow.DIRECTIONS`).
    - **rotation ratio**: per pair, take the moving pixels, their magnitude-weighted centroid
      ``c``, and for each pixel at distance >= 1 px from ``c`` the component of its flow along
      the counter-clockwise tangent around ``c``. With ``n`` moving pixels, ``T`` the mean
      tangential component (signed, so a coherent spin adds up while a translation cancels
      out around the centroid) and ``M = |mean flow vector|`` (the translation),
      ``rotation_ratio = sum_pairs n|T| / (sum_pairs n|T| + sum_pairs n M)``, in [0, 1]:
      about 1 for a pattern spinning in the image plane, about 0 for a translating object,
      0 if nothing moves.
    """
    frames = _check_clip(frames)
    return _stats_from_flow(_flow_px256(frames), magnitude_bins, direction_bins, moving_threshold)


def _stats_from_flow(
    flow: np.ndarray,
    magnitude_bins: Sequence[float],
    direction_bins: int,
    moving_threshold: float,
) -> FlowStatistics:
    edges = np.asarray(magnitude_bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 1 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"magnitude_bins must be increasing left edges starting at 0, got {edges}")
    if direction_bins < 1:
        raise ValueError(f"direction_bins must be >= 1, got {direction_bins}")

    dx, dy = flow[..., 0], flow[..., 1]
    magnitude = np.sqrt(dx * dx + dy * dy)
    bin_index = np.searchsorted(edges, magnitude.ravel(), side="right") - 1
    magnitude_hist = np.bincount(bin_index, minlength=edges.size).astype(np.float64)
    magnitude_hist /= magnitude_hist.sum()

    moving = magnitude > moving_threshold
    direction_hist = direction_sums(dx[moving], dy[moving], magnitude[moving], direction_bins)
    if direction_hist.sum() > 0:
        direction_hist /= direction_hist.sum()

    height, width = flow.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    tangential_sum = 0.0  # sum over pairs of n * T (signed)
    rotation_sum = 0.0  # sum over pairs of n * |T|
    translation_sum = 0.0  # sum over pairs of n * M
    translation_vec = np.zeros(2)
    moving_total = 0
    for p in range(flow.shape[0]):
        mask = moving[p]
        n = int(mask.sum())
        if n == 0:
            continue
        w = magnitude[p][mask].astype(np.float64)
        x, y = xs[mask], ys[mask]
        u, v = dx[p][mask].astype(np.float64), dy[p][mask].astype(np.float64)
        rx, ry = x - np.average(x, weights=w), y - np.average(y, weights=w)
        radius = np.hypot(rx, ry)
        # Pixels on the centroid have no defined tangent.
        ok = radius >= 1.0
        # Counter-clockwise on screen (y up) is (ry, -rx) in image coordinates (y down).
        mean_t = float(np.mean((u[ok] * ry[ok] - v[ok] * rx[ok]) / radius[ok])) if ok.any() else 0.0
        mean_vec = np.array([u.mean(), v.mean()])
        tangential_sum += n * mean_t
        rotation_sum += n * abs(mean_t)
        translation_sum += n * float(np.hypot(*mean_vec))
        translation_vec += n * mean_vec
        moving_total += n

    denominator = rotation_sum + translation_sum
    return FlowStatistics(
        magnitude_histogram=magnitude_hist,
        magnitude_bin_edges=edges,
        direction_histogram=direction_hist,
        mean_magnitude=float(magnitude.mean(dtype=np.float64)),
        moving_fraction=float(moving.mean()),
        rotation_ratio=float(rotation_sum / denominator) if denominator > 0 else 0.0,
        mean_tangential=tangential_sum / moving_total if moving_total else 0.0,
        mean_translation=(
            (float(translation_vec[0] / moving_total), float(-translation_vec[1] / moving_total))
            if moving_total
            else (0.0, 0.0)
        ),
    )


def _histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """``1 - sum(min(p, q))`` (= total variation distance for normalised histograms)."""
    p_empty, q_empty = p.sum() == 0, q.sum() == 0
    if p_empty or q_empty:
        return 0.0 if p_empty and q_empty else 1.0
    return float(np.clip(1.0 - np.minimum(p, q).sum(), 0.0, 1.0))


def _average(stats: Sequence[FlowStatistics]) -> tuple[np.ndarray, np.ndarray, float, float]:
    magnitude_hist = np.mean([s.magnitude_histogram for s in stats], axis=0)
    moving = [s for s in stats if s.has_motion]
    if moving:
        direction_hist = np.mean([s.direction_histogram for s in moving], axis=0)
        rotation = float(np.mean([s.rotation_ratio for s in moving]))
    else:
        direction_hist = np.zeros_like(stats[0].direction_histogram)
        rotation = 0.0
    return (
        magnitude_hist,
        direction_hist,
        rotation,
        float(np.mean([s.mean_magnitude for s in stats])),
    )


def motion_fidelity(
    generated: Sequence[np.ndarray | FlowStatistics],
    reference: Sequence[np.ndarray | FlowStatistics],
) -> dict[str, float]:
    """Compare the average flow statistics of generated clips with those of reference clips.

    Each set is summarised by the mean of its clips' magnitude histograms, the mean direction
    histogram and mean rotation ratio of its clips that move at all, and the mean magnitude.
    Clips may be given as frames or as precomputed :class:`FlowStatistics` (with the default
    bins, so reference statistics can be computed once). Returns:

    - ``magnitude_histogram_distance``: ``1 - sum(min(p, q))`` of the two magnitude histograms
      (total variation distance), in [0, 1], 0 = same.
    - ``direction_histogram_distance``: the same for the direction histograms; 0 if neither set
      moves, 1 if exactly one does.
    - ``rotation_ratio_difference``: ``|rotation_ratio_gen - rotation_ratio_ref|``, in [0, 1].
    - ``motion_fidelity``: ``1 - mean`` of those three distances, in [0, 1], 1 = identical.
    - ``mean_magnitude_generated``, ``mean_magnitude_reference``: px256 per frame, for context.
    """
    if not generated or not reference:
        raise ValueError("motion_fidelity needs at least one generated and one reference clip")

    def summarise(clips: Sequence[np.ndarray | FlowStatistics]) -> list[FlowStatistics]:
        return [c if isinstance(c, FlowStatistics) else flow_statistics(c) for c in clips]

    gen_mag, gen_dir, gen_rot, gen_mean = _average(summarise(generated))
    ref_mag, ref_dir, ref_rot, ref_mean = _average(summarise(reference))
    if gen_mag.shape != ref_mag.shape or gen_dir.shape != ref_dir.shape:
        raise ValueError("generated and reference statistics use different histogram bins")
    distances = {
        "magnitude_histogram_distance": _histogram_distance(gen_mag, ref_mag),
        "direction_histogram_distance": _histogram_distance(gen_dir, ref_dir),
        "rotation_ratio_difference": float(abs(gen_rot - ref_rot)),
    }
    return {
        **distances,
        "motion_fidelity": float(1.0 - np.mean(list(distances.values()))),
        "mean_magnitude_generated": gen_mean,
        "mean_magnitude_reference": ref_mean,
    }


def video_metrics(frames: np.ndarray) -> dict[str, float]:
    """All per-clip model-free metrics in one call (the optical flow is computed once).

    Keys: ``flicker`` (:func:`temporal_flickering`), ``dynamic_degree`` (px256) and ``dynamic``
    (1.0 or 0.0) from :func:`dynamic_degree` with the default threshold, ``mean_flow_magnitude``
    (px256 per frame) and ``rotation_ratio`` from :func:`flow_statistics`.
    """
    frames = _check_clip(frames)
    flow = _flow_px256(frames)
    score, dynamic = _dynamic_from_flow(flow, DYNAMIC_THRESHOLD)
    stats = _stats_from_flow(flow, DEFAULT_MAGNITUDE_BINS, 8, MOVING_THRESHOLD)
    return {
        "flicker": temporal_flickering(frames),
        "dynamic_degree": score,
        "dynamic": float(dynamic),
        "mean_flow_magnitude": stats.mean_magnitude,
        "rotation_ratio": stats.rotation_ratio,
    }
