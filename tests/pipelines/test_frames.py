"""The frames pipeline on real video files, good and bad."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from machining_t2v.kedro_glue.datasets import ClipStripDataset, VideoFolderDataset
from machining_t2v.pipelines.frames.nodes import (
    extract_frames_and_clips,
    merge_chunks,
    sample_id_prefix,
    unique_sample_id_prefixes,
)
from tests.conftest import add_audio_track, run_pipeline, write_test_video

PARAMS = {"resolution": 32, "num_frames": 4, "frame_stride": 2, "target_fps": None, "clips_per_video": 2,
          "stills_per_video": 3, "min_motion": 1.0, "video_extensions": [".mp4", ".webm"]}


def extract(folder, params):
    """Every stills, clips, manifest and skipped table of the frames node, in memory."""
    return merge_chunks(extract_frames_and_clips(folder, params))


def folder_digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def mixed_folder(tmp_path):
    """Good videos in two containers, odd sizes and an audio track, plus every kind of bad file."""
    root = tmp_path / "videos"
    write_test_video(root / "milling" / "good.mp4", num_frames=30, width=96, height=64)
    write_test_video(root / "turning" / "good.webm", num_frames=24, width=64, height=64, seed=1)
    write_test_video(root / "wide.mp4", num_frames=20, width=853, height=480, seed=2)
    write_test_video(root / "portrait.webm", num_frames=20, width=240, height=320, seed=3)
    add_audio_track(write_test_video(tmp_path / "plain.mp4", num_frames=36, seed=4), root / "with_audio.mp4")
    write_test_video(root / "static.mp4", num_frames=20, static=True)
    write_test_video(root / "short.mp4", num_frames=5)  # a clip spans (4 - 1) * 2 + 1 = 7 frames
    (root / "zero.mp4").write_bytes(b"")
    (root / "notes.webm").write_text("this is a text file with a video extension")
    (root / "corrupt.mp4").write_bytes(os.urandom(4096))
    return root


def test_good_videos_become_stills_and_clips_bad_ones_are_listed(mixed_folder, caplog):
    before = folder_digest(mixed_folder)
    folder = VideoFolderDataset(path=str(mixed_folder)).load()
    with caplog.at_level(logging.WARNING):
        stills, clips, manifest, skipped = extract(folder, PARAMS)

    assert dict(zip(skipped["video"], skipped["reason"], strict=True)).keys() == {
        "short.mp4", "zero.mp4", "notes.webm", "corrupt.mp4"}
    reasons = dict(zip(skipped["video"], skipped["reason"], strict=True))
    assert "empty" in reasons["zero.mp4"]
    assert "not a decodable video" in reasons["notes.webm"]
    assert "5 frames, fewer than the 7" in reasons["short.mp4"]
    # One log line per skipped file, naming it.
    for name in reasons:
        assert sum(name in record.getMessage() for record in caplog.records) == 1

    good = {"milling/good.mp4", "turning/good.webm", "wide.mp4", "portrait.webm", "with_audio.mp4", "static.mp4"}
    assert set(manifest["video"]) == good
    assert len(stills) == 3 * len(good)
    assert all(image.size == (32, 32) for image in stills.values())
    assert all(clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8 for clip in clips.values())
    # The static video keeps its stills but none of its clips.
    static_rows = manifest[manifest["video"] == "static.mp4"]
    assert set(static_rows["kind"]) == {"still"}
    clip_rows = manifest[manifest["kind"] == "clip"]
    assert (clip_rows["motion_score"] >= PARAMS["min_motion"]).all()
    assert set(clip_rows["sample_id"]) == set(clips)
    milling = clip_rows[clip_rows["video"] == "milling/good.mp4"]
    assert milling["frame_indices"].tolist() == ["0 2 4 6", "23 25 27 29"]
    assert milling["start_s"].tolist() == pytest.approx([0.0, 23 / 12])
    assert folder_digest(mixed_folder) == before, "the raw folder must not be modified"


def test_target_fps_sets_the_stride(tmp_path):
    write_test_video(tmp_path / "v" / "a.mp4", num_frames=40, fps=12)
    folder = VideoFolderDataset(path=str(tmp_path / "v")).load()
    _, _, manifest, _ = extract(folder, {**PARAMS, "target_fps": 4, "clips_per_video": 1})
    clip = manifest[manifest["kind"] == "clip"].iloc[0]
    indices = [int(i) for i in clip["frame_indices"].split()]
    assert np.diff(indices).tolist() == [3, 3, 3]


def test_folder_without_videos_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no videos here")
    folder = VideoFolderDataset(path=str(tmp_path / "empty")).load()
    with pytest.raises(ValueError, match=f"No video files .* found in {tmp_path / 'empty'}"):
        extract(folder, PARAMS)


def test_folder_of_only_broken_videos_is_a_clear_error(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"")
    (root / "b.mp4").write_bytes(b"garbage" * 100)
    folder = VideoFolderDataset(path=str(root)).load()
    with pytest.raises(ValueError, match=r"No usable video in .*broken: all 2 skipped"):
        extract(folder, PARAMS)


def test_clip_strip_dataset_round_trips_losslessly(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8)
    dataset = ClipStripDataset(filepath=str(tmp_path / "clip.png"))
    dataset.save(clip)
    assert np.array_equal(dataset.load(), clip)


def test_sample_ids_are_file_name_safe_and_unique():
    assert sample_id_prefix("milling/pocket 01.mp4") == "milling__pocket_01"
    assert sample_id_prefix("../x.mp4") == "__x"
    prefixes = unique_sample_id_prefixes(["milling/a.mp4", "pocket.mp4", "pocket.webm", "bar 1.mp4"])
    # Readable, unique names stay as they are; collisions and changed names get a hash.
    assert prefixes["milling/a.mp4"] == "milling__a"
    assert prefixes["pocket.mp4"].startswith("pocket-") and prefixes["pocket.webm"].startswith("pocket-")
    assert prefixes["pocket.mp4"] != prefixes["pocket.webm"]
    assert prefixes["bar 1.mp4"].startswith("bar_1-")


def test_frames_pipeline_through_kedro_session(project):
    write_test_video(project / "data/01_raw/videos/a.mp4", num_frames=30)
    write_test_video(project / "data/01_raw/videos/b.webm", num_frames=30, seed=5)
    (project / "data/01_raw/videos/broken.mp4").write_bytes(b"")
    run_pipeline(project, "frames")
    manifest = pd.read_csv(project / "data/03_primary/frame_manifest.csv")
    assert set(manifest["video"]) == {"a.mp4", "b.webm"}
    stills = sorted(p.name for p in (project / "data/05_model_input/stills").glob("*.png"))
    assert len(stills) == 2 * 4 and stills[0] == "a_still000.png"
    clips = list((project / "data/05_model_input/clips").glob("*.png"))
    assert len(clips) == (manifest["kind"] == "clip").sum() > 0
    assert ClipStripDataset(filepath=str(clips[0])).load().shape == (8, 64, 64, 3)
    skipped = pd.read_csv(project / "data/08_reporting/skipped_videos.csv")
    assert skipped["video"].tolist() == ["broken.mp4"]


def test_deprecated_pipeline_flag_still_runs_from_the_cli(project):
    write_test_video(project / "data/01_raw/videos/a.mp4", num_frames=30)
    kedro = os.path.join(os.path.dirname(sys.executable), "kedro")
    result = subprocess.run([kedro, "run", "--pipeline=frames"], cwd=project, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (project / "data/03_primary/frame_manifest.csv").is_file()
    assert len(list((project / "data/05_model_input/stills").glob("*.png"))) == 4


def test_stills_and_clips_come_out_at_their_own_resolutions(tmp_path):
    write_test_video(tmp_path / "v" / "a.mp4", num_frames=30, width=96, height=64)
    folder = VideoFolderDataset(path=str(tmp_path / "v")).load()
    stills, clips, manifest, _ = extract(
        folder, {**PARAMS, "still_resolution": 48, "clip_resolution": 16})
    assert stills and clips
    assert all(image.size == (48, 48) for image in stills.values())
    assert all(clip.shape == (4, 16, 16, 3) for clip in clips.values())
    sizes = manifest.groupby("kind")[["width", "height"]].agg(set).to_dict("index")
    assert sizes == {"still": {"width": {48}, "height": {48}}, "clip": {"width": {16}, "height": {16}}}
    # Each kind is the same frame at the same size as a run that uses that size for both.
    only_stills, _, _, _ = extract(folder, {**PARAMS, "resolution": 48})
    _, only_clips, _, _ = extract(folder, {**PARAMS, "resolution": 16})
    assert all(np.array_equal(np.asarray(stills[key]), np.asarray(only_stills[key])) for key in stills)
    assert all(np.array_equal(clips[key], only_clips[key]) for key in clips)


def test_null_still_and_clip_resolutions_keep_the_shared_resolution(tmp_path):
    write_test_video(tmp_path / "v" / "a.mp4", num_frames=30, width=96, height=64)
    folder = VideoFolderDataset(path=str(tmp_path / "v")).load()
    before = extract(folder, PARAMS)  # the keys absent, as in an older conf
    after = extract(folder, {**PARAMS, "still_resolution": None, "clip_resolution": None})
    assert before[0].keys() == after[0].keys() and before[1].keys() == after[1].keys()
    assert all(np.array_equal(np.asarray(before[0][k]), np.asarray(after[0][k])) for k in before[0])
    assert all(np.array_equal(before[1][k], after[1][k]) for k in before[1])
    pd.testing.assert_frame_equal(before[2], after[2])
    assert (after[2]["width"] == 32).all()


def test_a_resolution_under_8_px_is_a_clear_error_naming_its_parameter(tmp_path):
    write_test_video(tmp_path / "v" / "a.mp4", num_frames=30)
    folder = VideoFolderDataset(path=str(tmp_path / "v")).load()
    with pytest.raises(ValueError, match="frames.clip_resolution must be >= 8 px, got 4"):
        extract(folder, {**PARAMS, "clip_resolution": 4})
    with pytest.raises(ValueError, match="frames.resolution must be >= 8 px, got 0"):
        extract(folder, {**PARAMS, "resolution": 0, "clip_resolution": 16})
