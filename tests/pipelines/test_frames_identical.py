"""The frames node's outputs do not depend on how it decodes: the same manifest and the same pixels as
decoding every sampled frame with decord's ``get_batch`` (the reference path), whichever access
pattern it picks for a file, and whether it writes its samples in one chunk or many."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from machining_t2v.data.video_io import (
    SEQUENTIAL,
    SPARSE,
    OpenVideo,
    VideoReadError,
    clip_frame_indices,
    clip_start_indices,
    motion_score,
    still_frame_indices,
    stride_for_fps,
)
from machining_t2v.kedro_glue.datasets import VideoFolderDataset
from machining_t2v.pipelines.frames import nodes as frames_nodes
from machining_t2v.pipelines.frames.nodes import (
    MANIFEST_COLUMNS,
    SKIPPED_COLUMNS,
    extract_frames_and_clips,
    frame_resolutions,
    merge_chunks,
    unique_sample_id_prefixes,
)
from machining_t2v.pipelines.sample_data.nodes import render_sample_videos
from tests.conftest import (
    PROJECT_ROOT,
    add_audio_track,
    moving_square_frames,
    run_pipeline,
    write_test_video,
)

DEFAULTS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_frames.yml").read_text())["frames"]


def reference_extract(raw_videos, params):
    """The frames node as it was before it streamed: every frame a video's samples need decoded at once
    with decord's ``get_batch`` (``OpenVideo.frames``), all samples held in memory."""
    still_resolution, clip_resolution = frame_resolutions(params)
    num_frames = int(params["num_frames"])
    stills, clips, manifest, skipped = {}, {}, [], []
    prefixes = unique_sample_id_prefixes([video.name for video in raw_videos.videos])
    for video in raw_videos.videos:
        try:
            opened = OpenVideo(video.path)
            info = opened.info
            stride = stride_for_fps(info.fps, params.get("target_fps"), int(params["frame_stride"]))
            starts = clip_start_indices(info.num_frames, num_frames, stride, int(params["clips_per_video"]))
            if not starts:
                raise VideoReadError(video.path, "too short")
            clip_indices = [clip_frame_indices(start, num_frames, stride) for start in starts]
            still_indices = still_frame_indices(info.num_frames, int(params["stills_per_video"]))
            clip_needed = sorted({i for indices in clip_indices for i in indices})
            clip_decoded = dict(zip(clip_needed, opened.frames(clip_needed, clip_resolution), strict=True))
            still_decoded = dict(zip(still_indices, opened.frames(still_indices, still_resolution), strict=True))
        except VideoReadError as error:
            skipped.append({"video": video.name, "reason": error.reason})
            continue
        prefix = prefixes[video.name]
        source = {"video": video.name, "source_width": info.width, "source_height": info.height,
                  "source_fps": round(info.fps, 3)}
        for number, indices in enumerate(clip_indices):
            clip = np.stack([clip_decoded[i] for i in indices])
            score = motion_score(clip)
            if score < float(params["min_motion"]):
                continue
            clips[f"{prefix}_clip{number:03d}"] = clip
            manifest.append({"sample_id": f"{prefix}_clip{number:03d}", "kind": "clip", "start_s": indices[0] / info.fps,
                             "frame_indices": " ".join(map(str, indices)), "motion_score": round(score, 3), **source,
                             "width": clip_resolution, "height": clip_resolution})
        for number, index in enumerate(still_indices):
            stills[f"{prefix}_still{number:03d}"] = still_decoded[index]
            manifest.append({"sample_id": f"{prefix}_still{number:03d}", "kind": "still", "start_s": index / info.fps,
                             "frame_indices": str(index), "motion_score": float("nan"), **source,
                             "width": still_resolution, "height": still_resolution})
    return (stills, clips, pd.DataFrame(manifest, columns=MANIFEST_COLUMNS),
            pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


def assert_same_outputs(actual, expected):
    stills, clips, manifest, skipped = actual
    ref_stills, ref_clips, ref_manifest, ref_skipped = expected
    pd.testing.assert_frame_equal(manifest, ref_manifest)
    assert skipped["video"].tolist() == ref_skipped["video"].tolist()
    assert stills.keys() == ref_stills.keys() and clips.keys() == ref_clips.keys()
    for key, image in stills.items():
        assert np.array_equal(np.asarray(image), ref_stills[key]), key
    for key, clip in clips.items():
        assert np.array_equal(clip, ref_clips[key]), key


def _write_h264(path, num_frames, width, height, gop):
    """An H.264 file (B-frames, a keyframe every ``gop`` frames, as camera footage has) of a moving square."""
    import imageio_ffmpeg

    frames = moving_square_frames(num_frames, width, height, seed=11)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "30", "-i", "-", "-c:v", "libx264",
                    "-preset", "veryfast", "-g", str(gop), "-pix_fmt", "yuv420p", str(path)],
                   input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    """Six built-in sample videos (MPEG-4 .mp4 and VP9 .webm, as `sample_data` renders them)."""
    root = tmp_path_factory.mktemp("samples") / "videos"
    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_sample_data.yml").read_text())["sample_data"]
    VideoFolderDataset(path=str(root)).save(render_sample_videos({**params, "num_clips": 6}))
    return root


@pytest.fixture(scope="module")
def long_h264(tmp_path_factory):
    root = tmp_path_factory.mktemp("long") / "videos"
    root.mkdir()
    _write_h264(root / "long_gop30.mp4", 600, 320, 240, gop=30)
    return root


@pytest.mark.parametrize("params", [
    DEFAULTS,
    {**DEFAULTS, "still_resolution": 96, "clip_resolution": 40},
], ids=["shared-size", "own-sizes"])
def test_sample_videos_give_the_reference_outputs(sample_folder, params):
    folder = VideoFolderDataset(path=str(sample_folder)).load()
    assert_same_outputs(merge_chunks(extract_frames_and_clips(folder, params)), reference_extract(folder, params))


def test_long_h264_gives_the_reference_outputs_on_the_sparse_path(long_h264):
    folder = VideoFolderDataset(path=str(long_h264)).load()
    params = {**DEFAULTS, "resolution": 96, "stills_per_video": 6}
    outputs = merge_chunks(extract_frames_and_clips(folder, params))
    assert_same_outputs(outputs, reference_extract(folder, params))
    # 600 frames with a keyframe every 30: seeking to the sampled frames beats decoding them all.
    sampled = sorted({int(i) for indices in outputs[2]["frame_indices"] for i in indices.split()})
    assert OpenVideo(folder.videos[0].path).access_pattern(sampled) == SPARSE


def test_odd_sizes_audio_and_both_containers_give_the_reference_outputs(tmp_path):
    root = tmp_path / "videos"
    write_test_video(root / "milling" / "good.mp4", num_frames=30, width=96, height=64)
    write_test_video(root / "turning" / "good.webm", num_frames=24, width=64, height=64, seed=1)
    write_test_video(root / "wide.mp4", num_frames=20, width=853, height=480, seed=2)
    write_test_video(root / "portrait.webm", num_frames=20, width=240, height=320, seed=3)
    add_audio_track(write_test_video(tmp_path / "plain.mp4", num_frames=36, seed=4), root / "with_audio.mp4")
    write_test_video(root / "static.mp4", num_frames=20, static=True)
    write_test_video(root / "short.mp4", num_frames=5)
    (root / "zero.mp4").write_bytes(b"")
    _write_h264(root / "camera.mp4", 90, 200, 150, gop=30)
    params = {**DEFAULTS, "resolution": 32, "num_frames": 4, "clips_per_video": 2, "stills_per_video": 3,
              "min_motion": 1.0}
    folder = VideoFolderDataset(path=str(root)).load()
    assert_same_outputs(merge_chunks(extract_frames_and_clips(folder, params)), reference_extract(folder, params))


@pytest.mark.parametrize("pattern", [SEQUENTIAL, SPARSE])
def test_both_access_patterns_decode_the_same_frames(sample_folder, long_h264, pattern):
    videos = sorted(path for path in sample_folder.iterdir() if path.suffix in (".mp4", ".webm"))
    for path in [*videos, *long_h264.glob("*.mp4")]:
        video = OpenVideo(path)
        wanted = sorted({0, 3, 4, 5, video.num_frames // 2, video.num_frames - 1})
        frames = dict(video.iter_frames(wanted, pattern=pattern))
        assert list(frames) == wanted
        reference = OpenVideo(path).frames(wanted)
        assert all(np.array_equal(frames[i], reference[k]) for k, i in enumerate(wanted)), (path.name, pattern)


def test_the_sequential_pattern_reads_again_from_the_start_with_the_same_reader(long_h264):
    video = OpenVideo(next(long_h264.glob("*.mp4")))
    wanted = [0, 1, 31, 299, 300]
    first = dict(video.iter_frames(wanted, pattern=SEQUENTIAL))
    assert video.info.width == 320  # decodes frame 0 with the reader the sequential pattern uses
    again = dict(video.iter_frames(wanted[1:], pattern=SEQUENTIAL))
    reference = OpenVideo(video.path).frames(wanted)
    assert all(np.array_equal(first[i], reference[k]) for k, i in enumerate(wanted))
    assert all(np.array_equal(again[i], reference[k + 1]) for k, i in enumerate(wanted[1:]))


@pytest.mark.parametrize("pattern", [SEQUENTIAL, SPARSE])
def test_a_video_damaged_mid_stream_gives_its_good_frames_then_an_error_naming_it(tmp_path, pattern):
    path = _write_h264(tmp_path / "damaged.mp4", 60, 64, 64, gop=30)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) * 7 // 10] = bytes(len(data) * 7 // 10 - len(data) // 2)
    path.write_bytes(bytes(data))
    reference = OpenVideo(_write_h264(tmp_path / "intact.mp4", 60, 64, 64, gop=30)).frames(list(range(60)))
    decoded = {}
    with pytest.raises(VideoReadError, match="damaged.mp4: decoding failed"):
        for index, frame in OpenVideo(path).iter_frames(list(range(60)), pattern=pattern):
            decoded[index] = frame
    # The sequential pattern stops at the damage and leaves the rest to the seeking reader, which reports it.
    assert 8 <= len(decoded) < 60 and list(decoded) == list(range(len(decoded)))
    assert all(np.array_equal(frame, reference[index]) for index, frame in decoded.items())


def test_small_chunks_give_the_same_outputs_as_one(sample_folder, monkeypatch):
    folder = VideoFolderDataset(path=str(sample_folder)).load()

    def sizes(chunks):
        # What each chunk holds when it comes (a chunk is emptied once the next one is asked for).
        return [(len(stills), len(clips), len(manifest)) for stills, clips, manifest, _ in chunks]

    whole = merge_chunks(extract_frames_and_clips(folder, DEFAULTS))
    assert len(sizes(extract_frames_and_clips(folder, DEFAULTS))) == 1  # a small folder is one chunk
    monkeypatch.setattr(frames_nodes, "FLUSH_MB", 0)  # hand over after every video
    chunks = sizes(extract_frames_and_clips(folder, DEFAULTS))
    assert len(chunks) == len(folder.videos) + 1  # and the complete tables at the end
    # The partitions come once each; the tables come whole with the last chunk.
    assert sum(stills + clips for stills, clips, _ in chunks) == chunks[-1][2] == len(whole[2])
    assert all(rows == 0 for _, _, rows in chunks[:-1]) and chunks[-1][:2] == (0, 0)
    assert_same_outputs(merge_chunks(extract_frames_and_clips(folder, DEFAULTS)), whole)


def test_a_run_saved_in_many_chunks_writes_the_same_files_as_one_and_replaces_the_last_run(project, monkeypatch):
    raw = project / "data/01_raw/videos"
    for number in range(3):
        write_test_video(raw / f"v{number}.mp4", num_frames=30, seed=number)
    (raw / "broken.mp4").write_bytes(b"")
    outputs = [project / "data/05_model_input/stills", project / "data/05_model_input/clips",
               project / "data/03_primary/frame_manifest.csv", project / "data/08_reporting/skipped_videos.csv"]

    def written() -> dict[str, bytes]:
        files = [p for out in outputs for p in ([out] if out.is_file() else sorted(out.rglob("*")))]
        return {str(p.relative_to(project)): p.read_bytes() for p in files if p.is_file()}

    run_pipeline(project, "frames")
    one_chunk = written()
    stale = project / "data/05_model_input/stills/gone_still000.png"
    stale.write_bytes(b"a still of a video that is no longer in the raw folder")
    monkeypatch.setattr(frames_nodes, "FLUSH_MB", 0)  # one chunk per video
    run_pipeline(project, "frames")
    assert not stale.exists()
    assert written() == one_chunk
    assert len([name for name in one_chunk if name.endswith(".png")]) > 3 * 4


def test_videos_extracted_side_by_side_come_out_as_one_at_a_time(sample_folder, monkeypatch):
    folder = VideoFolderDataset(path=str(sample_folder)).load()
    monkeypatch.setattr(frames_nodes, "VIDEOS_AT_ONCE", 3)
    side_by_side = merge_chunks(extract_frames_and_clips(folder, DEFAULTS))
    monkeypatch.setattr(frames_nodes, "VIDEOS_AT_ONCE", 1)
    assert_same_outputs(side_by_side, merge_chunks(extract_frames_and_clips(folder, DEFAULTS)))
