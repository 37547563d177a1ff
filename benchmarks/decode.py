"""Decoding: decord vs cv2.VideoCapture vs the ffmpeg CLI, and the `frames` pipeline against the fastest.

Every decoder returns the requested frames as one uint8 RGB array (N, H, W, 3) at full size, so
they do the same work: cv2's BGR frames are converted, ffmpeg converts to rgb24 itself.

File sets:
  * ``sample_videos``: the built-in sample videos (256x256, 12 fps, mp4v .mp4 and VP9 .webm);
  * ``long_h264``: one 640x480 30 fps H.264 file rendered by the sample renderer and encoded by the
    ffmpeg binary of imageio-ffmpeg (keyframe every 30 frames, as camera footage has).

Sampling patterns:
  * ``full``: every frame;
  * ``sparse30``: 30 indices spread evenly over the long file;
  * ``pipeline``: exactly the frames the `frames` pipeline needs (its clips and stills, default
    parameters), which is what its throughput is compared with.

The frames node runs as it does in the pipeline (every chunk it yields collected, so every sample
is decoded, resized and converted), once with the access pattern it picks per file and once with
each pattern forced, to show the pick is the faster one.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Context, load_params, median, row, target, write_sample_videos
from benchmarks.timing import measure_interleaved

TARGET_RATIO = 0.8
NODE = "extract_frames_and_clips"
LONG_GOP = 30


@dataclass
class VideoFile:
    path: Path
    num_frames: int
    fps: float
    width: int
    height: int


# --------------------------------------------------------------------------- raw decoders


def _decord(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(video.path), ctx=decord.cpu(0))
    wanted = list(range(len(reader))) if indices is None else indices
    return reader.get_batch(wanted).asnumpy()


def _decord_sequential(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    """decord's iterator (``next()``), frame after frame: its fastest full decode."""
    import decord

    reader = decord.VideoReader(str(video.path), ctx=decord.cpu(0))
    out = np.empty((video.num_frames, video.height, video.width, 3), np.uint8)
    for i in range(video.num_frames):
        out[i] = reader.next().asnumpy()
    return out


def _decord_skip(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    """decord read on from the first frame: frames that are not wanted are skipped (decoded, not converted)."""
    import decord

    reader = decord.VideoReader(str(video.path), ctx=decord.cpu(0))
    wanted = list(range(video.num_frames)) if indices is None else indices
    out = np.empty((len(wanted), video.height, video.width, 3), np.uint8)
    position = 0
    for k, index in enumerate(wanted):
        if index > position:
            reader.skip_frames(index - position)
        out[k] = reader.next().asnumpy()
        position = index + 1
    return out


def _cv2_grab(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    """cv2.VideoCapture read sequentially; frames that are not wanted are only grabbed (no conversion)."""
    import cv2

    wanted = list(range(video.num_frames)) if indices is None else indices
    out = np.empty((len(wanted), video.height, video.width, 3), np.uint8)
    capture = cv2.VideoCapture(str(video.path))
    position = 0
    try:
        for k, index in enumerate(wanted):
            while position < index:
                if not capture.grab():
                    return out[:k]
                position += 1
            ok, frame = capture.read()
            if not ok:
                return out[:k]
            position += 1
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out[k])
    finally:
        capture.release()
    return out


def _cv2_seek(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    """cv2.VideoCapture with a seek (CAP_PROP_POS_FRAMES) to every wanted frame that is not the next one."""
    import cv2

    wanted = list(range(video.num_frames)) if indices is None else indices
    out = np.empty((len(wanted), video.height, video.width, 3), np.uint8)
    capture = cv2.VideoCapture(str(video.path))
    position = 0
    try:
        for k, index in enumerate(wanted):
            if index != position:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                return out[:k]
            position = index + 1
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB, dst=out[k])
    finally:
        capture.release()
    return out


def _ffmpeg(video: VideoFile, indices: list[int] | None) -> np.ndarray:
    """The ffmpeg CLI decoding to rgb24 on a pipe; sparse sampling through the ``select`` filter."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(video.path),
               "-map", "0:v:0", "-an", "-sn"]
    count = video.num_frames
    if indices is not None:
        expression = "+".join(f"eq(n\\,{i})" for i in indices)
        command += ["-vf", f"select='{expression}'", "-fps_mode", "passthrough"]
        count = len(indices)
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    out = np.empty((count, video.height, video.width, 3), np.uint8)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        view = memoryview(out.reshape(-1))
        filled = 0
        while filled < len(view):
            read = process.stdout.readinto(view[filled:])
            if not read:
                break
            filled += read
        process.stdout.read()  # drain whatever is left, so ffmpeg exits
    finally:
        process.stdout.close()
        stderr = process.stderr.read()
        process.stderr.close()
        process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {video.path}: {stderr.decode(errors='replace')[:300]}")
    frame_bytes = video.height * video.width * 3
    return out[: filled // frame_bytes]


FULL_DECODERS = {"decord get_batch": _decord, "decord next()": _decord_sequential, "cv2 read": _cv2_grab,
                 "ffmpeg pipe": _ffmpeg}
SPARSE_DECODERS = {"decord get_batch": _decord, "decord skip": _decord_skip, "cv2 grab": _cv2_grab,
                   "cv2 seek": _cv2_seek, "ffmpeg select": _ffmpeg}


# --------------------------------------------------------------------------- a prototype decode path


def cv2_read_frames(path: Path, indices: list[int], resolution: int) -> tuple[np.ndarray, float, int, int, int]:
    """What a single-open OpenCV path for ``video_io.read_frames`` could do: one capture gives the
    frame count, fps and size (no separate probe), sequential grab of the wanted frames, resize and
    centre crop. Returns the frames and (fps, frame count, width, height)."""
    import cv2

    from machining_t2v.data.video_io import center_crop, resize_shape_for_crop

    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        size = resize_shape_for_crop(width, height, resolution)
        frames = []
        position = 0
        for index in indices:
            while position < index:
                capture.grab()
                position += 1
            ok, frame = capture.read()
            position += 1
            if not ok:
                break
            frame = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), size, interpolation=cv2.INTER_AREA)
            frames.append(frame)
    finally:
        capture.release()
    return np.ascontiguousarray(center_crop(np.stack(frames), resolution)), fps, count, width, height


# --------------------------------------------------------------------------- inputs


def _probe(path: Path) -> VideoFile:
    from machining_t2v.data.video_io import probe_video

    info = probe_video(path)
    return VideoFile(path, info.num_frames, info.fps, info.width, info.height)


def _write_long_h264(path: Path, num_frames: int) -> Path:
    """A 640x480 30 fps H.264 file of the milling scene, written by imageio-ffmpeg's ffmpeg."""
    import imageio_ffmpeg

    from machining_t2v.data.synthetic_videos.clips import render_clip, sample_clip_specs

    spec = sample_clip_specs(num_clips=1, seed=7, width=640, height=480, fps=30, min_seconds=num_frames / 30,
                             max_seconds=num_frames / 30, webm_fraction=0.0)[0]
    frames = render_clip(spec)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", "640x480", "-r", "30", "-i", "-", "-c:v", "libx264", "-preset", "medium",
               "-g", str(LONG_GOP), "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)
    return path


def pipeline_indices(video: VideoFile, params: dict[str, Any]) -> list[int]:
    """The frames ``extract_frames_and_clips`` decodes from ``video`` (same arithmetic, same order)."""
    from machining_t2v.data.video_io import (
        clip_frame_indices,
        clip_start_indices,
        still_frame_indices,
        stride_for_fps,
    )

    num_frames = int(params["num_frames"])
    stride = stride_for_fps(video.fps, params.get("target_fps"), int(params["frame_stride"]))
    starts = clip_start_indices(video.num_frames, num_frames, stride, int(params["clips_per_video"]))
    clips = {i for start in starts for i in clip_frame_indices(start, num_frames, stride)}
    return sorted(clips | set(still_frame_indices(video.num_frames, int(params["stills_per_video"]))))


def _check_manifest(manifest, videos: list[VideoFile], wanted: dict[Path, list[int]], root: Path) -> None:
    """Fail loudly if the replicated sampling differs from what the node really decoded."""
    used: dict[str, set[int]] = {}
    for sample in manifest.itertuples(index=False):
        used.setdefault(sample.video, set()).update(int(i) for i in str(sample.frame_indices).split())
    for video in videos:
        name = video.path.relative_to(root).as_posix()
        # The node drops static clips from the manifest; what it lists must be a subset of what we decode.
        if not used.get(name, set()) <= set(wanted[video.path]):
            raise AssertionError(f"pipeline_indices() disagrees with extract_frames_and_clips on {name}")


# --------------------------------------------------------------------------- the benchmark


def _node_with_pattern(pattern: str | None):
    """The frames node run to completion (all chunks in memory), its access pattern forced when given."""
    from machining_t2v.data.video_io import OpenVideo
    from machining_t2v.pipelines.frames.nodes import extract_frames_and_clips, merge_chunks

    def node(raw, params):
        if pattern is None:
            return merge_chunks(extract_frames_and_clips(raw, params))
        original = OpenVideo.access_pattern
        OpenVideo.access_pattern = lambda self, indices: pattern
        try:
            return merge_chunks(extract_frames_and_clips(raw, params))
        finally:
            OpenVideo.access_pattern = original

    return node


def run(ctx: Context) -> dict[str, Any]:
    from machining_t2v.data.video_io import SEQUENTIAL, SPARSE, OpenVideo, probe_video, read_frames
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset

    extract_frames_and_clips = _node_with_pattern(None)

    frames_params = load_params("frames")
    resolution = int(frames_params["resolution"])
    sample_dir = ctx.scratch("decode/sample_videos")
    long_dir = ctx.scratch("decode/long_h264")
    num_samples, long_frames = (2, 60) if ctx.quick else (6, 300)
    ctx.log(f"  writing {num_samples} sample videos and a {long_frames}-frame 640x480 H.264 file")
    write_sample_videos(sample_dir, num_samples, min_seconds=3.0, max_seconds=3.0 if ctx.quick else 4.0)
    _write_long_h264(long_dir / "long_640x480.mp4", long_frames)

    file_sets = {
        "sample_videos": sorted((_probe(p) for p in VideoFolderDataset(path=str(sample_dir))._video_paths()),
                                key=lambda v: v.path),
        "long_h264": [_probe(long_dir / "long_640x480.mp4")],
    }
    roots = {"sample_videos": sample_dir, "long_h264": long_dir}
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    findings: list[str] = []
    details: dict[str, Any] = {"file_sets": {}, "agreement": {}}

    for set_name, videos in file_sets.items():
        details["file_sets"][set_name] = [
            {"file": v.path.name, "frames": v.num_frames, "fps": round(v.fps, 3), "size": f"{v.width}x{v.height}"}
            for v in videos]
        patterns: dict[str, dict[Path, list[int] | None]] = {"full": {v.path: None for v in videos}}
        if set_name == "long_h264":
            video = videos[0]
            patterns["sparse30"] = {video.path: sorted({round(i * (video.num_frames - 1) / 29) for i in range(30)})}
        patterns["pipeline"] = {v.path: pipeline_indices(v, frames_params) for v in videos}

        root = roots[set_name]
        for pattern, wanted in patterns.items():
            decoders = FULL_DECODERS if pattern == "full" else SPARSE_DECODERS
            frames_wanted = sum(v.num_frames if wanted[v.path] is None else len(wanted[v.path]) for v in videos)

            def decode_all(decoder=None, wanted=wanted, videos=videos):
                # Keep a 1/8-size copy of each frame only, to check that decoders return the same frames.
                return [decoder(v, wanted[v.path])[:, ::8, ::8].copy() for v in videos]

            fns = {name: (lambda d=decoder: decode_all(d)) for name, decoder in decoders.items()}
            if pattern == "pipeline":
                # The frames node on the same folder, interleaved with the raw decoders, and its parts.
                fns.update({
                    NODE: lambda root=root: extract_frames_and_clips(VideoFolderDataset(path=str(root)).load(),
                                                                     frames_params),
                    "probe_video": lambda videos=videos: [probe_video(v.path) for v in videos],
                    "read_frames": lambda videos=videos, wanted=wanted: [
                        read_frames(v.path, wanted[v.path], resolution) for v in videos],
                    "cv2 prototype": lambda videos=videos, wanted=wanted: [
                        cv2_read_frames(v.path, wanted[v.path], resolution)[0] for v in videos],
                    **{f"node {forced}": lambda root=root, forced=forced: _node_with_pattern(forced)(
                        VideoFolderDataset(path=str(root)).load(), frames_params) for forced in (SEQUENTIAL, SPARSE)},
                })  # fmt: skip
            budget = {"full": 25.0 if set_name == "long_h264" else 10.0}.get(pattern, 20.0)
            timings = measure_interleaved(fns, keep_results=False, **ctx.timing_options(budget))
            reference = timings["decord get_batch"].result
            agreement = {}
            for name in decoders:
                timing = timings[name]
                decoded = sum(len(frames) for frames in timing.result)
                if decoded != frames_wanted:
                    raise AssertionError(f"{name} decoded {decoded} frames of {set_name}/{pattern}, "
                                         f"expected {frames_wanted}")
                agreement[name] = round(max(float(np.abs(a.astype(np.int16) - b).mean())
                                            for a, b in zip(timing.result, reference, strict=True)), 3)
                key = f"{set_name}.{pattern}.{name.replace(' ', '_').replace('()', '')}"
                rows.append(row(key, f"{set_name} {pattern}: {name}", frames_wanted / timing.median, "frames/s",
                                note=f"{frames_wanted} frames", measurement=timing))
            details["agreement"][f"{set_name}.{pattern}"] = agreement
        steps = timings  # the pipeline pattern's

        _check_manifest(steps[NODE].result[2], videos, wanted, root)
        pipeline_fps = frames_wanted / steps[NODE].median
        rows.append(row(f"{set_name}.pipeline.extract_frames_and_clips",
                        f"{set_name} pipeline: frames node (extract_frames_and_clips)", pipeline_fps, "frames/s",
                        note=f"{frames_wanted} frames needed, resized to {resolution} px", measurement=steps[NODE]))
        chosen = sorted({OpenVideo(v.path).access_pattern(wanted[v.path]) for v in videos})
        for forced in (SEQUENTIAL, SPARSE):
            rows.append(row(f"{set_name}.pipeline.node_{forced}",
                            f"{set_name} pipeline: frames node with the {forced} pattern forced on every file",
                            frames_wanted / steps[f"node {forced}"].median, "frames/s",
                            measurement=steps[f"node {forced}"],
                            note=f"{'decord skip/next up to the last frame needed' if forced == SEQUENTIAL else 'decord get_batch'}"
                                 f"; the node picks {'/'.join(chosen)} here"))
        rows.append(row(f"{set_name}.pipeline.probe_video", f"{set_name} pipeline: probe_video (s)",
                        steps["probe_video"].median, "s", better="lower", measurement=steps["probe_video"],
                        note="opens each file with decord and decodes frame 0 (the node no longer decodes it)"))
        rows.append(row(f"{set_name}.pipeline.read_frames", f"{set_name} pipeline: read_frames (s)",
                        steps["read_frames"].median, "s", better="lower", measurement=steps["read_frames"],
                        note="decord get_batch at full size + cv2 resize + crop (the reference path)"))
        rows.append(row(f"{set_name}.pipeline.cv2_prototype",
                        f"{set_name} pipeline: cv2 single-open prototype of probe+read_frames",
                        frames_wanted / steps["cv2 prototype"].median, "frames/s", measurement=steps["cv2 prototype"],
                        note="not project code: what a faster read_frames could do"))

        raw = {name: frames_wanted / steps[name].median for name in SPARSE_DECODERS}
        fastest = max(raw, key=raw.get)
        # Throughput ratio = fastest decoder's time / node's time, round by round (they ran back to back).
        ratio = median([fast / node for fast, node in zip(steps[fastest].runs, steps[NODE].runs, strict=True)])
        targets.append(target(f"{set_name}.frames_vs_fastest_decoder",
                              f"frames pipeline vs fastest raw decoder ({fastest}), {set_name}", ratio, TARGET_RATIO,
                              ">=", note=f"{pipeline_fps:.0f} vs {raw[fastest]:.0f} frames/s for the same "
                                         f"{frames_wanted} frames; median of per-round ratios"))
        node_s, probe_s, read_s = steps[NODE].median, steps["probe_video"].median, steps["read_frames"].median
        forced_s = {forced: steps[f"node {forced}"].median for forced in (SEQUENTIAL, SPARSE)}
        findings.append(
            f"{set_name}: the frames node reaches {ratio:.0%} of {fastest} ({pipeline_fps:.0f} vs "
            f"{raw[fastest]:.0f} frames/s for the {frames_wanted} frames its sampling needs), picking the "
            f"{'/'.join(chosen)} pattern; forced, the sequential pattern takes {forced_s[SEQUENTIAL]:.3f} s and "
            f"the sparse one {forced_s[SPARSE]:.3f} s (the node {node_s:.3f} s). The reference path "
            f"(probe_video + read_frames, decord get_batch) takes {probe_s + read_s:.3f} s.")
        details.setdefault("node_breakdown_s", {})[set_name] = {
            "node": node_s, "probe_video": probe_s, "read_frames": read_s, "chosen_pattern": chosen,
            **{f"node_{forced}": seconds for forced, seconds in forced_s.items()},
            "cv2_prototype": steps["cv2 prototype"].median, "fastest_raw_decoder": fastest,
            "ratio_of_medians": pipeline_fps / raw[fastest]}

    return {"title": "Decoding", "rows": rows, "targets": targets, "findings": findings, "details": details,
            "setup": {"long_h264_gop": LONG_GOP, "frames_params": frames_params,
                      "note": "all decoders return uint8 RGB (N, H, W, 3) at full size; "
                              "frames/s = frames returned / median wall time over all files of the set"}}
