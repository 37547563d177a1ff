"""Frame extraction: turn each raw video into square still frames (image LoRA) and clips (motion LoRA)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from machining_t2v.datasets import RawVideoFolder
from machining_t2v.video_io import (
    OpenVideo,
    VideoReadError,
    clip_frame_indices,
    clip_start_indices,
    motion_score,
    still_frame_indices,
    stride_for_fps,
)

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


def extract_frames_and_clips(
    raw_videos: RawVideoFolder, params: dict[str, Any]
) -> tuple[dict[str, Image.Image], dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """Decode every raw video once and cut it into still frames and training clips.

    Each video is read with decord at the sampled indices only, resized so its shorter side is
    ``resolution`` and centre-cropped. Clips whose motion score (mean absolute frame difference)
    is under ``min_motion`` are dropped as static. A video that cannot be used is skipped with
    one log line and listed in the skipped table; the run goes on for the others.

    Returns:
        stills (id -> PIL image), clips (id -> uint8 (F, S, S, 3)), the manifest of every
        sample, and the skipped videos with their reasons.
    """
    resolution = int(params["resolution"])
    num_frames = int(params["num_frames"])
    if resolution < 8 or num_frames < 1:
        raise ValueError(f"frames.resolution must be >= 8 and frames.num_frames >= 1, got {resolution}, {num_frames}")
    if not raw_videos.videos:
        raise ValueError(f"No video files ({', '.join(params.get('video_extensions', []))}) found in "
                         f"{raw_videos.root}; put process videos there or run `kedro run --pipelines=sample_data`.")

    stills: dict[str, Image.Image] = {}
    clips: dict[str, np.ndarray] = {}
    manifest: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    prefixes = unique_sample_id_prefixes([video.name for video in raw_videos.videos])
    for video in tqdm(raw_videos.videos, desc="extracting frames", unit="video"):
        try:
            opened = OpenVideo(video.path)
            info = opened.info
            stride = stride_for_fps(info.fps, params.get("target_fps"), int(params["frame_stride"]))
            starts = clip_start_indices(info.num_frames, num_frames, stride, int(params["clips_per_video"]))
            if not starts:
                span = (num_frames - 1) * stride + 1
                raise VideoReadError(video.path, f"has {info.num_frames} frames, fewer than the {span} one clip "
                                                 f"spans (num_frames={num_frames}, stride={stride})")
            clip_indices = [clip_frame_indices(start, num_frames, stride) for start in starts]
            still_indices = still_frame_indices(info.num_frames, int(params["stills_per_video"]))
            # One sparse decode per video for every frame any sample needs.
            needed = sorted({i for indices in clip_indices for i in indices} | set(still_indices))
            decoded = dict(zip(needed, opened.frames(needed, resolution), strict=True))
        except VideoReadError as error:
            logger.warning("Skipping %s: %s", video.name, error.reason)
            skipped.append({"video": video.name, "reason": error.reason})
            continue

        prefix = prefixes[video.name]
        source = {"video": video.name, "width": resolution, "height": resolution, "source_width": info.width,
                  "source_height": info.height, "source_fps": round(info.fps, 3)}
        for number, indices in enumerate(clip_indices):
            clip = np.stack([decoded[i] for i in indices])
            score = motion_score(clip)
            if score < float(params["min_motion"]):
                logger.info("Dropping static clip %d of %s (motion %.2f < %s)", number, video.name, score,
                            params["min_motion"])
                continue
            sample_id = f"{prefix}_clip{number:03d}"
            clips[sample_id] = clip
            manifest.append({"sample_id": sample_id, "kind": "clip", "start_s": indices[0] / info.fps,
                             "frame_indices": " ".join(map(str, indices)), "motion_score": round(score, 3),
                             **source})
        for number, index in enumerate(still_indices):
            sample_id = f"{prefix}_still{number:03d}"
            stills[sample_id] = Image.fromarray(decoded[index])
            manifest.append({"sample_id": sample_id, "kind": "still", "start_s": index / info.fps,
                             "frame_indices": str(index), "motion_score": float("nan"), **source})

    if not stills and not clips:
        reasons = "; ".join(f"{entry['video']}: {entry['reason']}" for entry in skipped[:5])
        raise ValueError(f"No usable video in {raw_videos.root}: all {len(skipped)} skipped ({reasons}).")
    logger.info("Extracted %d stills and %d clips from %d videos (%d skipped)", len(stills), len(clips),
                len(raw_videos.videos) - len(skipped), len(skipped))
    return (
        stills,
        clips,
        pd.DataFrame(manifest, columns=MANIFEST_COLUMNS),
        pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
    )
