"""Model-free video metrics on constructed clips whose motion is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from machining_t2v.evaluation.flow import DIRECTIONS
from machining_t2v.evaluation.metrics import (
    DEFAULT_MAGNITUDE_BINS,
    FlowStatistics,
    dynamic_degree,
    flow_statistics,
    motion_fidelity,
    optical_flow,
    temporal_flickering,
    video_metrics,
)


def square_clip(
    vx: float, vy: float, size: int = 64, frames: int = 16, seed: int = 0
) -> np.ndarray:
    """A bright square moving by (vx, vy) px per frame (image coordinates, y down) over a
    still textured background, centred at the middle frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 90, size=(size, size, 3), dtype=np.uint8)
    side = size // 4
    clip = []
    for t in range(frames):
        frame = background.copy()
        x = round(size / 2 - side / 2 + vx * (t - frames / 2))
        y = round(size / 2 - side / 2 + vy * (t - frames / 2))
        cv2.rectangle(frame, (x, y), (x + side, y + side), (200, 180, 60), thickness=-1)
        clip.append(frame)
    return np.stack(clip)


def rotating_disc_clip(
    degrees_per_frame: float, size: int = 64, frames: int = 16, seed: int = 0
) -> np.ndarray:
    """A blocky random-textured disc spinning about the frame centre (positive = counter-clockwise
    on screen, as cv2.getRotationMatrix2D defines it) on a flat background."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
    texture = cv2.resize(texture, (size, size), interpolation=cv2.INTER_NEAREST)
    inside = np.zeros((size, size), np.uint8)
    cv2.circle(inside, (size // 2, size // 2), int(size * 0.4), 1, thickness=-1)
    inside = inside[..., None].astype(bool)
    background = np.full((size, size, 3), 60, np.uint8)
    disc = np.where(inside, texture, background)
    centre = (size / 2 - 0.5, size / 2 - 0.5)
    clip = []
    for t in range(frames):
        matrix = cv2.getRotationMatrix2D(centre, degrees_per_frame * t, 1.0)
        rotated = cv2.warpAffine(disc, matrix, (size, size), flags=cv2.INTER_LINEAR)
        clip.append(np.where(inside, rotated, background))
    return np.stack(clip)


def still_clip(size: int = 64, frames: int = 16) -> np.ndarray:
    return np.repeat(square_clip(0, 0, size, frames=1), frames, axis=0)


# --------------------------------------------------------------------------- flicker


def test_identical_frames_are_perfectly_steady_and_static():
    clip = still_clip()
    assert temporal_flickering(clip) == 1.0
    assert dynamic_degree(clip) == (0.0, False)
    assert np.all(optical_flow(clip) == 0)
    stats = flow_statistics(clip)
    assert stats.mean_magnitude == 0.0
    assert stats.rotation_ratio == 0.0
    assert not stats.has_motion
    assert stats.magnitude_histogram[0] == 1.0
    assert video_metrics(clip) == {
        "flicker": 1.0,
        "dynamic_degree": 0.0,
        "dynamic": 0.0,
        "mean_flow_magnitude": 0.0,
        "rotation_ratio": 0.0,
    }


def test_alternating_black_and_white_frames_flicker_maximally():
    clip = np.zeros((8, 32, 32, 3), np.uint8)
    clip[1::2] = 255
    assert temporal_flickering(clip) == pytest.approx(0.0, abs=1e-12)
    # One pixel of 64 changed by 255 in each pair: 1 - 1/64.
    clip = np.zeros((4, 8, 8, 3), np.uint8)
    clip[1, 0, 0] = 255
    clip[3, 0, 0] = 255
    assert temporal_flickering(clip) == pytest.approx(1 - 1 / 64)


def test_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        temporal_flickering(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        dynamic_degree(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        flow_statistics(np.zeros((4, 8, 8), np.uint8))


# --------------------------------------------------------------------------- flow, direction


def test_optical_flow_shape_sign_and_determinism():
    clip = square_clip(2, 0)
    flow = optical_flow(clip)
    assert flow.shape == (15, 64, 64, 2) and flow.dtype == np.float32
    moving = np.linalg.norm(flow, axis=-1) > 0.5
    assert flow[..., 0][moving].mean() > 1.0  # dx > 0: rightwards
    assert abs(flow[..., 1][moving].mean()) < 0.2
    assert np.array_equal(flow, optical_flow(clip))
    big = np.repeat(np.repeat(clip[:3], 5, axis=1), 5, axis=2)  # 320 x 320
    assert optical_flow(big, max_short_side=256).shape == (2, 256, 256, 2)


@pytest.mark.parametrize(
    ("vx", "vy", "expected"),
    [
        (2, 0, "right"),
        (0, -2, "up"),  # image y points down, so -dy is up on screen
        (-2, 0, "left"),
        (1.5, 1.5, "down-right"),
    ],
)
def test_direction_histogram_dominant_bin(vx, vy, expected):
    stats = flow_statistics(square_clip(vx, vy))
    assert stats.direction_histogram.shape == (8,)
    assert stats.direction_histogram.sum() == pytest.approx(1.0)
    assert DIRECTIONS[int(np.argmax(stats.direction_histogram))] == expected
    assert stats.direction_histogram.max() > 0.8
    score, dynamic = dynamic_degree(square_clip(vx, vy))
    assert dynamic and score > 6.0


def test_slow_motion_is_not_dynamic_and_scores_scale_with_frame_size():
    score, dynamic = dynamic_degree(square_clip(0.25, 0))
    assert 0 < score < 6.0 and not dynamic
    # The same motion relative to the frame at twice the size: same score in px256 units.
    small, _ = dynamic_degree(square_clip(2, 0, size=64))
    large, _ = dynamic_degree(square_clip(4, 0, size=128))
    assert large == pytest.approx(small, rel=0.25)


def test_magnitude_histogram_uses_fixed_normalised_bins():
    stats = flow_statistics(square_clip(2, 0))
    assert np.array_equal(stats.magnitude_bin_edges, DEFAULT_MAGNITUDE_BINS)
    assert stats.magnitude_histogram.sum() == pytest.approx(1.0)
    # Most of the frame is still background.
    assert stats.magnitude_histogram[0] > 0.5
    custom = flow_statistics(square_clip(2, 0), magnitude_bins=(0, 4), direction_bins=4)
    assert custom.magnitude_histogram.shape == (2,) and custom.direction_histogram.shape == (4,)
    with pytest.raises(ValueError, match="start"):
        flow_statistics(square_clip(2, 0), magnitude_bins=(1, 2))


# --------------------------------------------------------------------------- rotation


def test_rotation_ratio_separates_spinning_from_translating():
    spin_ccw = flow_statistics(rotating_disc_clip(6))
    spin_cw = flow_statistics(rotating_disc_clip(-6))
    slide = flow_statistics(square_clip(2, 0))
    assert spin_ccw.rotation_ratio > 0.6 and spin_cw.rotation_ratio > 0.6
    assert slide.rotation_ratio < 0.3
    # Sign convention: counter-clockwise on screen is positive tangential flow.
    assert spin_ccw.mean_tangential > 0 > spin_cw.mean_tangential
    # A spin has no net translation and moves in every direction.
    assert np.hypot(*spin_ccw.mean_translation) < 0.2 * abs(spin_ccw.mean_tangential)
    assert spin_ccw.direction_histogram.min() > 0.05
    # mean_translation is reported with y up on screen.
    up = flow_statistics(square_clip(0, -2))
    assert up.mean_translation[1] > 0 and abs(up.mean_translation[0]) < 0.5


# --------------------------------------------------------------------------- fidelity


def test_motion_fidelity_of_a_set_with_itself_is_perfect():
    clips = [square_clip(2, 0), rotating_disc_clip(6)]
    result = motion_fidelity(clips, clips)
    assert result["magnitude_histogram_distance"] == pytest.approx(0.0, abs=1e-12)
    assert result["direction_histogram_distance"] == pytest.approx(0.0, abs=1e-12)
    assert result["rotation_ratio_difference"] == 0.0
    assert result["motion_fidelity"] == pytest.approx(1.0, abs=1e-12)
    assert result["mean_magnitude_generated"] == result["mean_magnitude_reference"]


def test_motion_fidelity_penalises_wrong_motion():
    slide, spin = square_clip(2, 0), rotating_disc_clip(6)
    cross = motion_fidelity([slide], [spin])
    for distance in ("magnitude_histogram_distance", "direction_histogram_distance"):
        assert 0.3 < cross[distance] <= 1.0
    assert cross["rotation_ratio_difference"] > 0.5
    assert cross["motion_fidelity"] < 0.5
    # Right direction beats wrong direction at the same speed.
    wrong_way = motion_fidelity([square_clip(-2, 0)], [slide])
    right_way = motion_fidelity([square_clip(2, 0, seed=1)], [slide])
    assert right_way["motion_fidelity"] > wrong_way["motion_fidelity"] + 0.2
    # Still clips against moving references: directions entirely missing.
    assert motion_fidelity([still_clip()], [slide])["direction_histogram_distance"] == 1.0
    assert motion_fidelity([still_clip()], [still_clip()])["motion_fidelity"] == 1.0


def test_motion_fidelity_accepts_precomputed_statistics():
    slide, spin = square_clip(2, 0), rotating_disc_clip(6)
    ref_stats = [flow_statistics(spin)]
    assert isinstance(ref_stats[0], FlowStatistics)
    assert motion_fidelity([slide], ref_stats) == motion_fidelity([slide], [spin])
    with pytest.raises(ValueError):
        motion_fidelity([], [spin])


# --------------------------------------------------------------------------- report + speed


def test_video_metrics_keys_and_consistency():
    clip = square_clip(2, 0)
    metrics = video_metrics(clip)
    assert set(metrics) == {
        "flicker",
        "dynamic_degree",
        "dynamic",
        "mean_flow_magnitude",
        "rotation_ratio",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["flicker"] == temporal_flickering(clip)
    assert (metrics["dynamic_degree"], bool(metrics["dynamic"])) == dynamic_degree(clip)
    stats = flow_statistics(clip)
    assert metrics["mean_flow_magnitude"] == stats.mean_magnitude
    assert metrics["rotation_ratio"] == stats.rotation_ratio
