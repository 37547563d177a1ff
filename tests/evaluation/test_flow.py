"""The shared optical flow and direction bins (metrics and the in-world evaluator both use them)."""

from __future__ import annotations

import numpy as np

from machining_t2v.evaluation.flow import (
    DIRECTION_VECTORS,
    DIRECTIONS,
    EVALUATOR_FARNEBACK_PARAMS,
    METRICS_FARNEBACK_PARAMS,
    direction_sums,
    farneback_flow,
)
from machining_t2v.evaluation.inworld_features import (
    _FEATURE_DIRECTIONS,
    _direction_histogram,
    clip_flows,
)


def test_each_direction_vector_falls_in_its_own_bin():
    assert list(DIRECTION_VECTORS) == list(DIRECTIONS)
    for k, name in enumerate(DIRECTIONS):
        dx, dy = DIRECTION_VECTORS[name]
        sums = direction_sums(np.array([dx]), np.array([dy]), np.array([2.0]))
        assert sums.dtype == np.float64 and sums[k] == 2.0 and sums.sum() == 2.0, name
    # The evaluator's features read the same bins clockwise on screen from "right".
    assert _FEATURE_DIRECTIONS == ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")


def test_identical_frames_get_zero_flow_unless_farneback_is_asked():
    clip = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8).repeat(3, axis=0)
    assert not farneback_flow(clip, METRICS_FARNEBACK_PARAMS).any()
    raw = farneback_flow(clip, EVALUATOR_FARNEBACK_PARAMS, zero_when_identical=False)
    assert raw.shape == (2, 32, 32, 2) and raw.dtype == np.float32
    assert np.array_equal(raw, clip_flows(clip))


def test_evaluator_direction_histogram_is_the_one_it_was_trained_with():
    """The committed evaluator was trained on a clockwise histogram computed as below."""
    rng = np.random.default_rng(3)
    flow = clip_flows(rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)).astype(np.float64)
    u, v = flow[..., 0], flow[..., 1]
    mag = np.hypot(u, v)
    width = 2 * np.pi / 8
    bins = np.floor((np.arctan2(v, u) + width / 2) / width).astype(np.int64) % 8
    trained = np.bincount(bins.ravel(), weights=mag.ravel(), minlength=8)
    assert np.array_equal(_direction_histogram(u, v, mag), trained / trained.sum())
