"""Travel direction: constructed clips with known answers, a spin that must not count, and the
sample videos' own milling clips read against their ``direction`` column."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from machining_t2v.data.synthetic_videos.clips import render_clip, sample_clip_specs
from machining_t2v.evaluation.direction import (
    agreement,
    most_common_direction,
    screen_direction,
    travel_direction,
)
from machining_t2v.evaluation.flow import DIRECTION_VECTORS, DIRECTIONS

SIZE = 64
FRAMES = 8


def _fluted_disc(frame: np.ndarray, centre: tuple[float, float], radius: float, angle: float) -> None:
    """A bright disc with four dark flutes turned by ``angle`` degrees, like an end mill from above."""
    cv2.circle(frame, (round(centre[0] * 16), round(centre[1] * 16)), round(radius * 16), (220, 220, 220), -1,
               cv2.LINE_AA, 4)
    for k in range(4):
        a = math.radians(angle + 90 * k)
        tip = (centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a))
        cv2.line(frame, (round(centre[0] * 16), round(centre[1] * 16)), (round(tip[0] * 16), round(tip[1] * 16)),
                 (30, 30, 30), 2, cv2.LINE_AA, 4)


def spinning_tool_clip(step: tuple[float, float], spin: float = 25.0, size: int = SIZE) -> np.ndarray:
    """A fluted disc turning ``spin`` degrees per frame while its centre moves ``step`` px per frame
    (at 64 px; scaled with ``size``) over a textured background."""
    rng = np.random.default_rng(0)
    background = cv2.resize(rng.integers(60, 110, (16, 16, 3), dtype=np.uint8), (size, size),
                            interpolation=cv2.INTER_LINEAR)
    scale = size / SIZE
    frames = []
    for t in range(FRAMES):
        frame = background.copy()
        centre = ((32 + (t - 3.5) * step[0]) * scale, (32 + (t - 3.5) * step[1]) * scale)
        _fluted_disc(frame, centre, 6 * scale, spin * t)
        frames.append(frame)
    return np.stack(frames)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_travelling_spinning_tool_reads_its_direction(direction):
    dx, dy = DIRECTION_VECTORS[direction]
    assert travel_direction(spinning_tool_clip((2.5 * dx, 2.5 * dy))) == direction


@pytest.mark.parametrize("direction", ["right", "up-left"])
def test_the_direction_does_not_depend_on_the_resolution(direction):
    dx, dy = DIRECTION_VECTORS[direction]
    assert travel_direction(spinning_tool_clip((2.5 * dx, 2.5 * dy), size=256)) == direction


def test_a_spin_in_place_has_no_travel_direction():
    # Fast enough that flow of the flutes is large: it must not read as travel.
    for spin in (15.0, 25.0, 40.0):
        assert travel_direction(spinning_tool_clip((0.0, 0.0), spin=spin)) is None


def test_a_still_clip_has_no_travel_direction():
    still = np.repeat(spinning_tool_clip((0.0, 0.0))[:1], FRAMES, axis=0)
    assert travel_direction(still) is None


def test_bad_clips_are_rejected():
    with pytest.raises(ValueError, match="uint8 RGB clip"):
        travel_direction(np.zeros((1, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB clip"):
        travel_direction(np.zeros((4, SIZE, SIZE, 3), np.float32))


def test_metadata_words_map_to_screen_directions():
    assert screen_direction("x") == "right" and screen_direction("-x") == "left"
    assert screen_direction("y") == "down" and screen_direction("-y") == "up"
    assert screen_direction("diagonal") == "down-right" and screen_direction("-diagonal") == "up-left"
    assert screen_direction("inward") == "up" and screen_direction(" Up-Left ") == "up-left"
    assert screen_direction("") is None and screen_direction(None) is None and screen_direction(float("nan")) is None
    with pytest.raises(ValueError, match="'sideways' is not one of"):
        screen_direction("sideways")


def test_agreement_and_the_most_common_direction():
    assert agreement("right", "right") == 1.0 and agreement(None, "right") == 0.0
    assert agreement("left", "right") == 0.0 and math.isnan(agreement("right", None))
    assert most_common_direction(["left", None, "right", "left", float("nan")]) == "left"
    assert most_common_direction(["left", "right"]) == "right"  # a tie goes to the first of DIRECTIONS
    assert most_common_direction([None]) is None


def _training_clip(frames: np.ndarray, start: int) -> np.ndarray:
    """What the frames pipeline makes of a sample video at its defaults: 8 frames, stride 2, 64 px."""
    picked = frames[start : start + 16 : 2]
    return np.stack([cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for frame in picked])


def test_the_sample_milling_clips_read_their_direction_column():
    specs = [spec for spec in sample_clip_specs(num_clips=24) if spec.process == "milling"]
    read = []
    for spec in specs:
        frames = render_clip(spec)
        for start in (0, len(frames) - 16):
            read.append(travel_direction(_training_clip(frames, start)) == screen_direction(spec.direction))
    assert len(read) == 24 and np.mean(read) >= 0.9
