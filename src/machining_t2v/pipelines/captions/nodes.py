"""Captioning: one caption per still and per clip, from the best source each video has."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from machining_t2v.kedro_glue.datasets import RawVideo, RawVideoFolder

logger = logging.getLogger(__name__)

CAPTION_COLUMNS = ["sample_id", "kind", "video", "caption", "caption_source"]
TEMPLATE_FIELDS = ("process", "operation", "machine", "material")


def _with_trigger(caption: str, trigger: str) -> str:
    """Prefix the trigger token unless the caption already contains it."""
    if not trigger or re.search(rf"(^|\W){re.escape(trigger)}(\W|$)", caption):
        return caption
    return f"{trigger} {caption}"


def _fill_template(template: str, fields: dict[str, str], trigger: str) -> str:
    text = template.format(trigger=trigger, **fields)
    text = re.sub(r"\s+", " ", text).strip(" ,")
    return _with_trigger(text, trigger) if "{trigger}" not in template else text


def video_caption(video: RawVideo, folder: RawVideoFolder, params: dict[str, Any]) -> tuple[str, str]:
    """The caption of one video and where it came from, in order of precedence.

    1. ``<video>.txt`` beside the video; 2. ``metadata.csv`` ``caption`` column;
    3. the template filled from ``metadata.csv`` columns; 4. the template filled from the
    folder name (``videos/turning/bar.mp4`` -> process "turning") and ``captions.defaults``.
    """
    trigger = params.get("trigger") or ""
    if video.sidecar_caption:
        return _with_trigger(video.sidecar_caption, trigger), "sidecar"
    row = folder.metadata_for(video) or {}
    if row.get("caption"):
        return _with_trigger(row["caption"], trigger), "metadata_caption"
    fields = {name: str(value) for name, value in (params.get("defaults") or {}).items()}
    for name in TEMPLATE_FIELDS:
        fields.setdefault(name, "")
    if any(row.get(name) for name in TEMPLATE_FIELDS):
        fields.update({name: row[name] for name in TEMPLATE_FIELDS if row.get(name)})
        source = "metadata_template"
    else:
        parent = PurePosixPath(video.name).parent.name
        if parent:
            fields["process"] = parent.replace("_", " ")
        source = "folder_template"
    try:
        return _fill_template(params["template"], fields, trigger), source
    except KeyError as error:
        raise ValueError(f"captions.template {params['template']!r} uses {error}, which is not one of "
                         f"trigger, {', '.join(sorted(fields))}") from error


def build_captions(
    raw_videos: RawVideoFolder,
    frame_manifest: pd.DataFrame,
    stills: dict[str, Callable[[], Image.Image]],
    clips: dict[str, Callable[[], np.ndarray]],
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Caption every still and clip of the manifest.

    Without ``captions.model`` each sample gets its video's caption (see ``video_caption``).
    With a model, each still (and each clip's middle frame) is captioned by it, and the
    video's caption is kept in front as a prefix so the trigger and process stay in.

    Returns:
        the captions table and, when ``captions.write_sidecars`` is on, kohya-style
        ``<still id>.txt`` sidecars for the stills (an empty mapping otherwise).
    """
    if frame_manifest.empty:
        raise ValueError("frame_manifest is empty: the frames pipeline produced no stills or clips to caption.")
    videos = {video.name: video for video in raw_videos.videos}
    per_video: dict[str, tuple[str, str]] = {}
    rows = []
    for sample in frame_manifest.itertuples(index=False):
        if sample.video not in videos:
            raise ValueError(f"frame_manifest lists {sample.video}, which is not in {raw_videos.root}; "
                             "rerun the frames pipeline.")
        if sample.video not in per_video:
            per_video[sample.video] = video_caption(videos[sample.video], raw_videos, params)
        caption, source = per_video[sample.video]
        rows.append({"sample_id": sample.sample_id, "kind": sample.kind, "video": sample.video,
                     "caption": caption, "caption_source": source})
    captions = pd.DataFrame(rows, columns=CAPTION_COLUMNS)

    if params.get("model"):
        from machining_t2v.data.captioning import caption_images

        images = []
        for sample in captions.itertuples(index=False):
            if sample.kind == "still":
                images.append(stills[sample.sample_id]())
            else:
                clip = clips[sample.sample_id]()
                images.append(Image.fromarray(clip[len(clip) // 2]))
        generated = caption_images(images, params["model"], max_new_tokens=int(params.get("max_new_tokens", 30)))
        captions["caption"] = [f"{prefix}, {text}" if text else prefix
                               for prefix, text in zip(captions["caption"], generated, strict=True)]
        captions["caption_source"] = captions["caption_source"] + "+model"

    counts = captions.drop_duplicates("video")["caption_source"].value_counts().to_dict()
    logger.info("Captioned %d samples of %d videos (caption sources: %s)", len(captions), len(per_video), counts)
    sidecars = {}
    if params.get("write_sidecars"):
        sidecars = {row.sample_id: row.caption for row in captions.itertuples(index=False) if row.kind == "still"}
    return captions, sidecars
