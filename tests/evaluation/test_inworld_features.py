"""Motion features of the in-world evaluator: computed from the flow of constructed shape clips."""

from __future__ import annotations

import numpy as np
import pytest

from machining_t2v.evaluation.inworld_features import motion_features
from tests.evaluation.shape_clips import shape_clip


def test_motion_features_point_the_way_the_shape_moves() -> None:
    rng = np.random.default_rng(0)
    right = motion_features(shape_clip("right", rng))
    left = motion_features(shape_clip("left", rng))
    still = motion_features(shape_clip("static", rng))
    assert right.dtype == np.float32 and right.shape == left.shape == still.shape
    assert np.isfinite(right).all()
    # Features 3..10: the global 8-direction histogram, bin 0 = right, bin 4 = left.
    assert right[3:11].argmax() == 0 and left[3:11].argmax() == 4
    assert right[0] > 1.0 > still[0] - 1e-6  # log flow magnitude: moving vs static
    # Any frame size works: frames are fitted to 64x64 first.
    big = motion_features(shape_clip("down", rng).repeat(2, axis=1).repeat(3, axis=2))
    assert big.shape == right.shape and big[3:11].argmax() == 2


def test_motion_features_reject_bad_clips() -> None:
    with pytest.raises(ValueError, match="uint8"):
        motion_features(np.zeros((8, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        motion_features(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        motion_features(np.zeros((64, 64, 3), np.uint8))
