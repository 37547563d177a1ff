"""The close-up sample set: a closer framing of the cutting zone and a faster turning feed, so the
tool's travel shows at 64 px; the default set is untouched."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from machining_t2v.data.synthetic_videos.clips import render_clip, sample_clip_specs
from machining_t2v.data.synthetic_videos.turning import turning_bar_box, turning_tool_path
from machining_t2v.evaluation.direction import screen_direction, travel_direction


def test_the_defaults_draw_the_whole_machine_at_the_usual_feed():
    spec = sample_clip_specs(2)[1]
    assert (spec.close_up, spec.feed_scale) == (1.0, 1.0)
    assert np.array_equal(render_clip(spec), render_clip(dataclasses.replace(spec, close_up=1.0, feed_scale=1.0)))


def test_a_close_up_keeps_the_size_and_frames_the_tool_larger():
    whole, close = sample_clip_specs(1)[0], sample_clip_specs(1, close_up=2.0)[0]
    frames = render_clip(close)
    assert frames.shape == render_clip(whole).shape and frames.dtype == np.uint8
    assert not np.array_equal(frames, render_clip(whole))
    assert (close.name, close.caption, close.direction) == (whole.name, whole.caption, whole.direction)


def test_a_faster_feed_travels_further_and_stays_on_the_bar():
    for slow, fast in zip(sample_clip_specs(24), sample_clip_specs(24, feed_scale=4.0), strict=True):
        if slow.process != "turning":
            continue
        travel = np.abs(turning_tool_path(fast)[-1] - turning_tool_path(fast)[0]).max()
        assert travel > 1.5 * np.abs(turning_tool_path(slow)[-1] - turning_tool_path(slow)[0]).max(), fast.name
        x0, _, x1, _ = turning_bar_box(fast)
        assert x0 <= turning_tool_path(fast)[:, 0].min() and turning_tool_path(fast)[:, 0].max() <= x1 + 0.03 * fast.width


@pytest.mark.parametrize("kwargs", [{"close_up": 0.5}, {"close_up": 4.0}, {"feed_scale": 0.0}, {"feed_scale": 11.0}])
def test_out_of_range_options_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        sample_clip_specs(2, **kwargs)


def test_the_close_up_set_shows_each_clips_direction():
    """At close_up 1.25 and feed_scale 4 the travel direction reads right in at least 90% of the clips
    the frames pipeline would cut (8 frames, stride 2, 64 px), turning included."""
    read = []
    for spec in sample_clip_specs(24, close_up=1.25, feed_scale=4.0):
        frames = render_clip(spec)
        for start in np.unique(np.linspace(0, len(frames) - 16, 3).round().astype(int)):
            clip = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in frames[start:start + 16:2]])
            read.append(travel_direction(clip) == screen_direction(spec.direction))
    assert np.mean(read) >= 0.9
