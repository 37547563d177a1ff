"""Frame extraction: turn each raw video into square still frames (image LoRA) and clips (motion LoRA)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from machining_t2v.data.video_io import (
    OpenVideo,
    VideoReadError,
    clip_frame_indices,
    clip_start_indices,
    motion_score,
    still_frame_indices,
    stride_for_fps,
)
from machining_t2v.kedro_glue.datasets import RawVideo, RawVideoFolder

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "sample_id", "kind", "video", "start_s", "frame_indices", "width", "height",
    "source_width", "source_height", "source_fps", "motion_score",
]  # fmt: skip
SKIPPED_COLUMNS = ["video", "reason"]


def sample_id_prefix(video_name: str) -> str:
    """A file-name-safe id for a video: its relative path without extension, '/' as '__'."""
    stem = video_name.rsplit(".", 1)[0].replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".") or "video"


def unique_sample_id_prefixes(video_names: list[str]) -> dict[str, str]:
    """``sample_id_prefix`` for every video, made unique across the folder.

    Two videos can reduce to the same id (``pocket.mp4``/``pocket.webm``, non-Latin names);
    those, and any name that had to be changed to become safe, get a short hash of the full
    relative name appended, so no video's stills or clips overwrite another's.
    """
    prefixes = {name: sample_id_prefix(name) for name in video_names}
    counts = Counter(prefixes.values())
    unique = {}
    for name, prefix in prefixes.items():
        readable = prefix == name.rsplit(".", 1)[0].replace("/", "__")
        if counts[prefix] > 1 or not readable:
            prefix = f"{prefix}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
        unique[name] = prefix
    return unique


def frame_resolutions(params: dict[str, Any]) -> tuple[int, int]:
    """(still side, clip side) in px from ``frames`` parameters.

    ``still_resolution`` and ``clip_resolution`` default to ``resolution`` when null or absent.

    Raises:
        ValueError: a side under 8 px, naming the parameter.
    """
    sizes = {}
    for kind in ("still", "clip"):
        key = f"{kind}_resolution"
        value = params.get(key)
        if value is None:
            key, value = "resolution", params["resolution"]
        if int(value) < 8:
            raise ValueError(f"frames.{key} must be >= 8 px, got {value}")
        sizes[kind] = int(value)
    return sizes["still"], sizes["clip"]


FLUSH_MB = 64
"""The frames node hands its samples to the catalog once they hold this many MB (and at the end)."""
VIDEOS_AT_ONCE = max(1, min(4, os.cpu_count() or 1))
"""Videos extracted side by side (decoding and resizing run outside the GIL): short files spend much of
their time opening and probing, which then overlaps with another file's decoding."""

FramesChunk = tuple[dict[str, Image.Image], dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]


@dataclass
class _VideoSamples:
    """What one video gives: its samples and their manifest rows."""

    stills: dict[str, Image.Image] = field(default_factory=dict)
    clips: dict[str, np.ndarray] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return (sum(image.width * image.height * len(image.getbands()) for image in self.stills.values())
                + sum(clip.nbytes for clip in self.clips.values()))


def _extract_video(video: RawVideo, prefix: str, params: dict[str, Any], still_resolution: int,
                   clip_resolution: int, num_frames: int) -> _VideoSamples:
    """Stills, clips and manifest rows of one video; raises ``VideoReadError`` for a video that cannot be used.

    The frames any sample needs are decoded once, in increasing order, with the cheaper access
    pattern for the file, and each is reduced to the size(s) it is needed at right away, so only a
    few full-size frames are held at a time.
    """
    opened = OpenVideo(video.path)
    fps = opened.fps
    stride = stride_for_fps(fps, params.get("target_fps"), int(params["frame_stride"]))
    starts = clip_start_indices(opened.num_frames, num_frames, stride, int(params["clips_per_video"]))
    if not starts:
        span = (num_frames - 1) * stride + 1
        raise VideoReadError(video.path, f"has {opened.num_frames} frames, fewer than the {span} one clip "
                                         f"spans (num_frames={num_frames}, stride={stride})")
    clip_indices = [clip_frame_indices(start, num_frames, stride) for start in starts]
    still_indices = still_frame_indices(opened.num_frames, int(params["stills_per_video"]))
    sizes: dict[int, list[int]] = {}
    for index in sorted({i for indices in clip_indices for i in indices}):
        sizes.setdefault(index, []).append(clip_resolution)
    for index in still_indices:
        sizes.setdefault(index, []).append(still_resolution)
    squares: dict[tuple[int, int], np.ndarray] = {}
    for index, size, square in opened.iter_squares(sizes):
        squares[index, size] = square
    width, height = opened.frame_size

    samples = _VideoSamples()
    source = {"video": video.name, "source_width": width, "source_height": height, "source_fps": round(fps, 3)}
    clip_size = {"width": clip_resolution, "height": clip_resolution}
    still_size = {"width": still_resolution, "height": still_resolution}
    for number, indices in enumerate(clip_indices):
        clip = np.stack([squares[i, clip_resolution] for i in indices])
        score = motion_score(clip)
        if score < float(params["min_motion"]):
            logger.info("Dropping static clip %d of %s (motion %.2f < %s)", number, video.name, score,
                        params["min_motion"])
            continue
        sample_id = f"{prefix}_clip{number:03d}"
        samples.clips[sample_id] = clip
        samples.rows.append({"sample_id": sample_id, "kind": "clip", "start_s": indices[0] / fps,
                             "frame_indices": " ".join(map(str, indices)), "motion_score": round(score, 3),
                             **source, **clip_size})
    for number, index in enumerate(still_indices):
        sample_id = f"{prefix}_still{number:03d}"
        samples.stills[sample_id] = Image.fromarray(squares[index, still_resolution])
        samples.rows.append({"sample_id": sample_id, "kind": "still", "start_s": index / fps,
                             "frame_indices": str(index), "motion_score": float("nan"), **source, **still_size})
    return samples


def _in_order(videos: list[RawVideo], extract: Callable[[RawVideo], _VideoSamples],
              workers: int) -> Iterator[tuple[RawVideo, _VideoSamples | VideoReadError]]:
    """``(video, its samples or why it cannot be used)`` in the order of ``videos``, with up to
    ``workers`` videos extracted at once (so at most that many are held besides the consumer's)."""

    def attempt(video: RawVideo) -> _VideoSamples | VideoReadError:
        try:
            return extract(video)
        except VideoReadError as error:
            return error

    if workers <= 1:
        for video in videos:
            yield video, attempt(video)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frames")
    try:
        upcoming = iter(videos)
        running: deque[tuple[RawVideo, Future]] = deque()
        for video in upcoming:
            running.append((video, pool.submit(attempt, video)))
            if len(running) == workers:
                break
        while running:
            video, future = running.popleft()
            following = next(upcoming, None)
            if following is not None:
                running.append((following, pool.submit(attempt, following)))
            yield video, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def extract_frames_and_clips(raw_videos: RawVideoFolder, params: dict[str, Any]) -> Iterator[FramesChunk]:
    """Decode every raw video once and cut it into still frames and training clips.

    Each video is read at the sampled indices only, with the faster access pattern for the file
    (see :meth:`machining_t2v.data.video_io.OpenVideo.access_pattern`; ``VIDEOS_AT_ONCE`` videos side by
    side, the outputs in the folder's order), resized so its shorter side is
    the target size and centre-cropped: stills to ``still_resolution``, clips to
    ``clip_resolution`` (either one null or missing = ``resolution``, so both share one size by
    default). Clips whose motion score (mean absolute frame difference)
    is under ``min_motion`` are dropped as static. A video that cannot be used is skipped with
    one log line and listed in the skipped table; the run goes on for the others.

    A generator: the samples are handed over in chunks of about ``FLUSH_MB`` (one chunk for a small
    folder), which Kedro saves as they come, so memory does not grow with the amount of video. The
    ``stills`` and ``clips`` datasets add each chunk's partitions. The manifest and the skipped
    table come whole with the last chunk (the chunks before carry empty ones), so a run that stops
    half-way leaves an empty manifest, not one that lists half the samples. A chunk's stills and
    clips are emptied when the next chunk is asked for: save or copy them first, as Kedro does, or
    use :func:`merge_chunks` to get everything in memory at once.

    Yields:
        stills (id -> PIL image), clips (id -> uint8 (F, S, S, 3)), the manifest of every
        sample (``width``/``height`` are the sample's own size) and the skipped videos with their
        reasons (both empty but in the last chunk).
    """
    still_resolution, clip_resolution = frame_resolutions(params)
    num_frames = int(params["num_frames"])
    if num_frames < 1:
        raise ValueError(f"frames.num_frames must be >= 1, got {num_frames}")
    if not raw_videos.videos:
        raise ValueError(f"No video files ({', '.join(params.get('video_extensions', []))}) found in "
                         f"{raw_videos.root}; put process videos there or run `kedro run --pipelines=sample_data`.")

    manifest: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    pending: list[_VideoSamples] = []
    counts = {"stills": 0, "clips": 0, "pending_bytes": 0}

    def chunk(complete: bool) -> FramesChunk:
        stills = {k: v for samples in pending for k, v in samples.stills.items()}
        clips = {k: v for samples in pending for k, v in samples.clips.items()}
        counts["stills"] += len(stills)
        counts["clips"] += len(clips)
        counts["pending_bytes"] = 0
        pending.clear()
        return (stills, clips, pd.DataFrame(manifest if complete else [], columns=MANIFEST_COLUMNS),
                pd.DataFrame(skipped if complete else [], columns=SKIPPED_COLUMNS))

    def handed_over(sent: FramesChunk) -> None:
        # Kedro's runner keeps every chunk a generator node yielded referenced until the node ends
        # (its tee buffers); emptying a chunk once the next one is asked for, i.e. once it is saved,
        # lets its images go.
        sent[0].clear()
        sent[1].clear()

    prefixes = unique_sample_id_prefixes([video.name for video in raw_videos.videos])

    def extract(video: RawVideo) -> _VideoSamples:
        return _extract_video(video, prefixes[video.name], params, still_resolution, clip_resolution, num_frames)

    extracted = _in_order(raw_videos.videos, extract, VIDEOS_AT_ONCE)
    for video, samples in tqdm(extracted, total=len(raw_videos.videos), desc="extracting frames", unit="video"):
        if isinstance(samples, VideoReadError):
            logger.warning("Skipping %s: %s", video.name, samples.reason)
            skipped.append({"video": video.name, "reason": samples.reason})
            continue
        pending.append(samples)
        manifest.extend(samples.rows)
        counts["pending_bytes"] += samples.nbytes
        if counts["pending_bytes"] >= FLUSH_MB * 2**20:
            sent = chunk(complete=False)
            yield sent
            handed_over(sent)

    if not manifest:
        reasons = "; ".join(f"{entry['video']}: {entry['reason']}" for entry in skipped[:5])
        raise ValueError(f"No usable video in {raw_videos.root}: all {len(skipped)} skipped ({reasons}).")
    last = chunk(complete=True)
    logger.info("Extracted %d stills and %d clips from %d videos (%d skipped)", counts["stills"], counts["clips"],
                len(raw_videos.videos) - len(skipped), len(skipped))
    yield last
    handed_over(last)


def merge_chunks(chunks: Iterable[FramesChunk]) -> FramesChunk:
    """Every chunk of :func:`extract_frames_and_clips` in memory at once: all stills, all clips, the
    complete manifest and skipped table (for notebooks, tests and benchmarks)."""
    stills: dict[str, Image.Image] = {}
    clips: dict[str, np.ndarray] = {}
    manifest, skipped = pd.DataFrame(columns=MANIFEST_COLUMNS), pd.DataFrame(columns=SKIPPED_COLUMNS)
    for chunk_stills, chunk_clips, chunk_manifest, chunk_skipped in chunks:
        stills.update(chunk_stills)
        clips.update(chunk_clips)
        manifest, skipped = chunk_manifest, chunk_skipped  # complete in the last chunk
    return stills, clips, manifest, skipped
