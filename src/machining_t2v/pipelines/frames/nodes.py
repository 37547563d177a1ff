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


def extract_frames_and_clips(
    raw_videos: RawVideoFolder, params: dict[str, Any]
) -> tuple[dict[str, Image.Image], dict[str, np.ndarray], pd.DataFrame, pd.DataFrame]:
    """Decode every raw video once and cut it into still frames and training clips.

    Each video is read with decord at the sampled indices only, resized so its shorter side is
    the target size and centre-cropped: stills to ``still_resolution``, clips to
    ``clip_resolution`` (either one null or missing = ``resolution``, so both share one size by
    default). Clips whose motion score (mean absolute frame difference)
    is under ``min_motion`` are dropped as static. A video that cannot be used is skipped with
    one log line and listed in the skipped table; the run goes on for the others.

    Returns:
        stills (id -> PIL image), clips (id -> uint8 (F, S, S, 3)), the manifest of every
        sample (``width``/``height`` are the sample's own size), and the skipped videos with
        their reasons.
    """
    still_resolution, clip_resolution = frame_resolutions(params)
    num_frames = int(params["num_frames"])
    if num_frames < 1:
        raise ValueError(f"frames.num_frames must be >= 1, got {num_frames}")
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
            clip_needed = sorted({i for indices in clip_indices for i in indices})
            if still_resolution == clip_resolution:
                # One sparse decode per video for every frame any sample needs.
                needed = sorted(set(clip_needed) | set(still_indices))
                clip_decoded = dict(zip(needed, opened.frames(needed, clip_resolution), strict=True))
                still_decoded = clip_decoded
            else:
                # Each kind at its own size; never the whole source-size frames in memory at once.
                clip_decoded = dict(zip(clip_needed, opened.frames(clip_needed, clip_resolution), strict=True))
                still_decoded = dict(zip(still_indices, opened.frames(still_indices, still_resolution),
                                         strict=True))
        except VideoReadError as error:
            logger.warning("Skipping %s: %s", video.name, error.reason)
            skipped.append({"video": video.name, "reason": error.reason})
            continue

        prefix = prefixes[video.name]
        source = {"video": video.name, "source_width": info.width, "source_height": info.height,
                  "source_fps": round(info.fps, 3)}
        clip_size = {"width": clip_resolution, "height": clip_resolution}
        still_size = {"width": still_resolution, "height": still_resolution}
        for number, indices in enumerate(clip_indices):
            clip = np.stack([clip_decoded[i] for i in indices])
            score = motion_score(clip)
            if score < float(params["min_motion"]):
                logger.info("Dropping static clip %d of %s (motion %.2f < %s)", number, video.name, score,
                            params["min_motion"])
                continue
            sample_id = f"{prefix}_clip{number:03d}"
            clips[sample_id] = clip
            manifest.append({"sample_id": sample_id, "kind": "clip", "start_s": indices[0] / info.fps,
                             "frame_indices": " ".join(map(str, indices)), "motion_score": round(score, 3),
                             **source, **clip_size})
        for number, index in enumerate(still_indices):
            sample_id = f"{prefix}_still{number:03d}"
            stills[sample_id] = Image.fromarray(still_decoded[index])
            manifest.append({"sample_id": sample_id, "kind": "still", "start_s": index / info.fps,
                             "frame_indices": str(index), "motion_score": float("nan"), **source, **still_size})

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
