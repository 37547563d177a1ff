"""Video reading/writing and the sampling arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from machining_t2v.data.video_io import (
    VideoReadError,
    center_crop,
    clip_frame_indices,
    clip_start_indices,
    motion_score,
    probe_video,
    read_frames,
    still_frame_indices,
    stride_for_fps,
    write_gif,
    write_h264,
    write_video,
)
from tests.conftest import moving_square_frames, write_test_video


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi"])
def test_decord_reads_what_opencv_wrote(tmp_path, suffix):
    frames = moving_square_frames(20, 96, 64)
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=12)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height, info.fps) == (20, 96, 64, 12.0)
    decoded = read_frames(path, [0, 10, 19])
    assert decoded.shape == (3, 64, 96, 3)
    # Lossy codecs: the decoded frames are close to the originals, not equal.
    assert np.abs(decoded.astype(int) - frames[[0, 10, 19]].astype(int)).mean() < 12


@pytest.mark.parametrize("width,height", [(853, 480), (480, 640)])
def test_read_frames_resizes_shorter_side_and_crops_centre(tmp_path, width, height):
    frame = np.zeros((height, width, 3), np.uint8)
    # Mark the central square white: after resize + centre crop the whole output is that square.
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = 255
    path = write_video(tmp_path / "odd.avi", np.stack([frame] * 3), fps=10)
    crop = read_frames(path, [1], resolution=64)
    assert crop.shape == (1, 64, 64, 3)
    assert crop[:, 2:-2, 2:-2].min() > 200


def test_clip_start_indices_spread_and_fit():
    # span = (8 - 1) * 2 + 1 = 15 frames
    assert clip_start_indices(100, 8, 2, 3) == [0, 42, 85]
    assert clip_start_indices(15, 8, 2, 3) == [0]
    assert clip_start_indices(14, 8, 2, 3) == []
    # Two clips only fit without overlap from 30 frames on; at 20 one centred clip is taken.
    assert clip_start_indices(20, 8, 2, 3) == [2]
    assert clip_start_indices(30, 8, 2, 3) == [0, 15]
    for start in clip_start_indices(100, 8, 2, 3):
        assert clip_frame_indices(start, 8, 2)[-1] <= 99
    with pytest.raises(ValueError, match="must be >= 1"):
        clip_start_indices(100, 0, 2, 3)


def test_still_indices_and_stride():
    assert still_frame_indices(100, 4) == [12, 37, 62, 87]
    assert still_frame_indices(2, 5) == [0, 1]
    assert stride_for_fps(30.0, 10.0, 1) == 3
    assert stride_for_fps(30.0, None, 2) == 2


def test_motion_score_zero_for_static_and_positive_for_moving():
    assert motion_score(moving_square_frames(8, 64, 64, static=True)) == 0.0
    assert motion_score(moving_square_frames(8, 64, 64)) > 1.0


def test_center_crop_takes_the_middle():
    frames = np.arange(6 * 10 * 3).reshape(1, 6, 10, 3)
    assert np.array_equal(center_crop(frames, 4), frames[:, 1:5, 3:7])


def test_bad_files_raise_video_read_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for path, reason in [(empty, "empty"), (text, "not a decodable video"), (tmp_path / "gone.mp4", "does not exist")]:
        with pytest.raises(VideoReadError, match=reason) as info:
            probe_video(path)
        assert str(path) in str(info.value)


def test_out_of_range_indices_are_refused(tmp_path):
    path = write_test_video(tmp_path / "short.mp4", num_frames=5)
    with pytest.raises(VideoReadError, match=r"outside 0..4"):
        read_frames(path, [0, 7])


def test_h264_and_gif_are_written_and_decode_back(tmp_path):
    frames = moving_square_frames(9, 33, 47)
    mp4 = write_h264(tmp_path / "clip.mp4", frames, fps=8)
    info = probe_video(mp4)
    # Odd sizes are padded to even for yuv420p.
    assert (info.num_frames, info.width, info.height) == (9, 34, 48)
    gif = write_gif(tmp_path / "clip.gif", frames, fps=8)
    from PIL import Image

    with Image.open(gif) as image:
        assert image.n_frames == 9
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
