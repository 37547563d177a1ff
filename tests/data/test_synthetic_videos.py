"""Tests for the synthetic machining clip generator (``machining_t2v.data.synthetic_videos``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from machining_t2v.data.synthetic_videos.clips import ClipSpec, render_clip, sample_clip_specs
from machining_t2v.data.synthetic_videos.milling import milling_tool_path
from machining_t2v.data.synthetic_videos.turning import turning_bar_box, turning_tool_path
from machining_t2v.data.synthetic_videos.vocabulary import (
    MATERIAL_COLOURS,
    MILLING_DIRECTION_VECTORS,
    TURNING_DIRECTIONS,
    make_caption,
)

# A pixel counts as "changed" between two frames when its mean channel difference
# exceeds this; the renderer adds no temporal noise, so anything above it is motion.
CHANGE_LEVEL = 20


@pytest.fixture(scope="module")
def specs() -> list[ClipSpec]:
    return sample_clip_specs(24, seed=0)


@pytest.fixture(scope="module")
def clips(specs) -> dict[str, np.ndarray]:
    return {s.name: render_clip(s) for s in specs}


def _frame_diffs(clip: np.ndarray) -> np.ndarray:
    """Per consecutive pair, per pixel mean absolute channel difference: (F-1, H, W)."""
    return np.abs(np.diff(clip.astype(np.int16), axis=0)).mean(axis=-1)


def _first(specs, **fields) -> ClipSpec:
    return next(s for s in specs if all(getattr(s, k) == v for k, v in fields.items()))


# ----------------------------------------------------------------------------- specs


def test_same_seed_same_specs_other_seed_different():
    assert sample_clip_specs(24, seed=0) == sample_clip_specs(24, seed=0)
    other = sample_clip_specs(24, seed=1)
    assert other != sample_clip_specs(24, seed=0)
    assert [s.seed for s in other] != [s.seed for s in sample_clip_specs(24, seed=0)]


def test_more_clips_only_append():
    assert sample_clip_specs(24, seed=3)[:10] == sample_clip_specs(10, seed=3)


def test_default_specs_cover_what_the_pipelines_need(specs):
    assert len(specs) >= 24
    assert len({s.name for s in specs}) == len(specs)
    assert [s.process for s in specs[:4]] == ["milling", "turning", "milling", "turning"]
    for process, machine in (("milling", "milling machine"), ("turning", "lathe")):
        group = [s for s in specs if s.process == process]
        assert len(group) == len(specs) // 2
        assert {s.machine for s in group} == {machine}
        # Each process gets both containers, several materials and directions.
        assert {s.container for s in group} == {"mp4", "webm"}
        assert len({s.material for s in group}) >= 4
    assert {s.direction for s in specs if s.process == "milling"} == set(MILLING_DIRECTION_VECTORS)
    assert {s.direction for s in specs if s.process == "turning"} == set(TURNING_DIRECTIONS)
    for s in specs:
        assert 2.0 <= s.seconds <= 4.0
        assert s.width >= 256 and s.height >= 256
        assert s.material in MATERIAL_COLOURS
        assert s.name.startswith(s.process + "_")
        assert s.operation in s.caption and s.machine in s.caption and s.material in s.caption
        assert 0.5 <= s.spindle_rpm_scale <= 1.5
    assert len({s.camera_offset for s in specs}) > len(specs) // 2
    assert len({s.num_frames for s in specs}) > 5


def test_container_fraction_is_respected():
    assert {s.container for s in sample_clip_specs(8, webm_fraction=0.0)} == {"mp4"}
    assert {s.container for s in sample_clip_specs(8, webm_fraction=1.0)} == {"webm"}
    quarter = sample_clip_specs(16, webm_fraction=0.25)
    assert sum(s.container == "webm" for s in quarter) == 4


def test_caption_wording():
    assert make_caption("milling", "slot milling along X", "aluminium", "x") == (
        "slot milling along X on a milling machine, aluminium workpiece, "
        "spinning end mill travelling from left to right"
    )
    assert "feeding towards the chuck" in make_caption("turning", "turn the bar", "steel", "left")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 32},
        {"fps": 0},
        {"min_seconds": 3.0, "max_seconds": 2.0},
        {"webm_fraction": 1.5},
        {"num_clips": -1},
        {"seed": -1},
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        sample_clip_specs(**kwargs)


def test_spec_mismatches_are_rejected(specs):
    milling = _first(specs, process="milling")
    with pytest.raises(ValueError):
        render_clip(dataclasses.replace(milling, process="drilling"))
    with pytest.raises(ValueError):
        render_clip(dataclasses.replace(milling, direction="left"))
    with pytest.raises(ValueError):
        turning_bar_box(milling)


# ----------------------------------------------------------------------------- pixels


def test_clips_have_the_declared_shape(specs, clips):
    for s in specs:
        clip = clips[s.name]
        assert clip.dtype == np.uint8
        assert clip.shape == (s.num_frames, s.height, s.width, 3)


def test_rendering_is_deterministic(specs, clips):
    for s in (_first(specs, process="milling"), _first(specs, process="turning")):
        assert np.array_equal(render_clip(s), clips[s.name])
        reseeded = render_clip(dataclasses.replace(s, seed=s.seed + 1))
        assert not np.array_equal(reseeded, clips[s.name])


def test_every_frame_pair_shows_real_motion(specs, clips):
    for s in specs:
        diffs = _frame_diffs(clips[s.name])
        per_pair_mad = diffs.mean(axis=(1, 2))
        per_pair_changed = (diffs > CHANGE_LEVEL).mean(axis=(1, 2))
        # No frozen frame anywhere, and on average clearly visible motion.
        assert per_pair_changed.min() > 0.004, s.name
        assert per_pair_mad.min() > 0.4, s.name
        assert per_pair_mad.mean() > 0.6, s.name


def test_turning_motion_is_mostly_the_spinning_bar(specs, clips):
    for s in (s for s in specs if s.process == "turning"):
        x0, y0, x1, y1 = turning_bar_box(s)
        assert 0 <= x0 < x1 <= s.width and 0 <= y0 < y1 <= s.height
        in_bar = np.zeros((s.height, s.width), bool)
        in_bar[y0:y1, x0:x1] = True
        changed = _frame_diffs(clips[s.name]) > CHANGE_LEVEL
        inside = (changed & in_bar).sum()
        assert inside / changed.sum() > 0.6, s.name
        # And the bar really turns: a good share of it changes in every frame.
        bar_share = (changed & in_bar).sum(axis=(1, 2)) / in_bar.sum()
        assert bar_share.min() > 0.05 and bar_share.mean() > 0.1, s.name


def test_turning_tool_feeds_in_the_spec_direction(specs):
    for s in (s for s in specs if s.process == "turning"):
        step = turning_tool_path(s)[-1] - turning_tool_path(s)[0]
        x0, y0, x1, y1 = turning_bar_box(s)
        if s.direction == "left":
            assert step[0] < -5 and abs(step[1]) < 1e-6
        elif s.direction == "right":
            assert step[0] > 5 and abs(step[1]) < 1e-6
        else:  # facing: radial feed up into the bar's end, towards its axis
            assert step[1] < -5 and abs(step[0]) < 1e-6
            assert turning_tool_path(s)[-1][1] < y1


def test_milling_tool_travels_in_the_spec_direction(specs, clips):
    for s in (s for s in specs if s.process == "milling"):
        want = np.asarray(MILLING_DIRECTION_VECTORS[s.direction])
        path = milling_tool_path(s)
        assert path.shape == (s.num_frames, 2)
        travel = path[-1] - path[0]
        assert np.linalg.norm(travel) > 0.15 * s.width, s.name
        assert travel @ want / np.linalg.norm(travel) > 0.999, s.name

        # The pixels that change (spinning flutes, growing groove, chips) follow the
        # tool: their centroid tracks the path and moves the same way.
        changed = _frame_diffs(clips[s.name]) > CHANGE_LEVEL
        ys, xs = np.mgrid[0 : s.height, 0 : s.width]
        centroids = np.array([[xs[m].mean(), ys[m].mean()] for m in changed], dtype=float)
        midpoints = (path[1:] + path[:-1]) / 2
        err = np.linalg.norm(centroids - midpoints, axis=1)
        assert np.median(err) < 0.05 * s.width, s.name
        third = len(centroids) // 3
        moved = centroids[-third:].mean(axis=0) - centroids[:third].mean(axis=0)
        assert moved @ want / np.linalg.norm(moved) > 0.95, s.name


def test_small_and_non_square_frames_render():
    for width, height in ((64, 64), (320, 192)):
        for s in sample_clip_specs(2, seed=5, width=width, height=height, fps=8):
            clip = render_clip(s)
            assert clip.shape == (s.num_frames, height, width, 3)
            assert _frame_diffs(clip).mean() > 0.3
