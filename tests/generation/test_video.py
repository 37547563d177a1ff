"""Prompt, frame and size checks, and writing clips (machining_t2v.generation.video)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from machining_t2v.data.video_io import probe_video, read_frames
from machining_t2v.generation.video import prompt_slug, save_video

from .conftest import render


def test_prompt_frames_and_size_checks(generator, caplog):
    for empty in ("", "   ", None):
        with pytest.raises(ValueError, match="prompt is empty"):
            render(generator, prompt=empty)
    with pytest.raises(ValueError, match=r"motion_max_seq_length is 32; ask for at most 32 frames"):
        render(generator, num_frames=33)
    with pytest.raises(ValueError, match="multiple of 8"):
        render(generator, size=60)

    long_prompt = "mtv slot milling " + " ".join(f"pass{i} with coolant" for i in range(40))
    with caplog.at_level(logging.WARNING, logger="machining_t2v.generation.video"):
        clip = render(generator, prompt=long_prompt, num_frames=2, num_inference_steps=1)
    assert clip.shape[0] == 2
    warning = next(r.getMessage() for r in caplog.records if "truncated" in r.getMessage())
    assert "277 tokens long" in warning and "reads at most 77" in warning and "dropping '" in warning


def test_save_video_writes_h264_and_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    mp4, gif = save_video(frames, tmp_path / "out" / "clip", fps=8)
    assert (mp4.name, gif.name) == ("clip.mp4", "clip.gif")
    assert probe_video(mp4).num_frames == 6 and read_frames(mp4, [0, 5]).shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="must end in .mp4"):
        save_video(frames, tmp_path / "clip.avi")
    assert prompt_slug("Face the steel bar, on the lathe!") == "face_the_steel_bar_on_the_lathe"


def test_on_step_follows_every_denoising_step(generator):
    steps = []
    render(generator, num_inference_steps=3, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
