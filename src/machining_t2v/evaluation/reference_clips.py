"""Which training clips serve as reference clips (the ceiling) for each process.

No Kedro import, no torch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["REFERENCE_COLUMNS", "choose_reference_clips", "concept_processes", "process_of"]

REFERENCE_COLUMNS = ["sample_id", "video", "caption", "process", "direction"]

logger = logging.getLogger(__name__)


def process_of(text: str, keywords: Mapping[str, Sequence[str]]) -> str | None:
    """The process whose keywords occur most often (whole words) in ``text``; None if none or a tie."""
    lowered = text.lower()
    counts = {process: sum(len(re.findall(rf"\b{re.escape(word.lower())}\b", lowered)) for word in words)
              for process, words in keywords.items()}
    best = max(counts.values(), default=0)
    winners = [process for process, count in counts.items() if count == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def _spread_pick(ids: list[str], limit: int) -> list[str]:
    """At most ``limit`` of ``ids``, evenly spread over the list (all of them when ``limit`` <= 0)."""
    if limit <= 0 or len(ids) <= limit:
        return ids
    return [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, limit).round().astype(int))]


def choose_reference_clips(
    clips: Mapping[str, Callable[[], np.ndarray]],
    frame_manifest: pd.DataFrame,
    captions: pd.DataFrame,
    keywords: Mapping[str, Sequence[str]],
    max_clips_per_process: int,
    directions: Mapping[str, str | None] | None = None,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Pick the reference clips per process and load them.

    A clip's process is recognised from its caption and video path with ``keywords`` (process ->
    words, e.g. "lathe", "chuck" -> turning). At most ``max_clips_per_process`` clips per process
    are kept (all when it is 0), spread evenly over the sorted clip ids.

    Args:
        directions: video name -> the on-screen direction its tool travels (one of
            :data:`~machining_t2v.evaluation.flow.DIRECTIONS`, or None), e.g. from the
            ``direction`` column of ``metadata.csv``; videos not in it have None.

    Returns:
        the clips (sample id -> uint8 frames) and a table (sample_id, video, caption, process, direction).
    """
    directions = directions or {}
    manifest = frame_manifest[frame_manifest["kind"] == "clip"] if not frame_manifest.empty else frame_manifest
    video_of = dict(zip(manifest.get("sample_id", []), manifest.get("video", []), strict=True))
    caption_of = dict(zip(captions.get("sample_id", []), captions.get("caption", []), strict=True))
    rows = []
    for sample_id in sorted(clips):
        video, caption = str(video_of.get(sample_id, "")), str(caption_of.get(sample_id, "") or "")
        process = process_of(f"{caption} {video.replace('_', ' ').replace('/', ' ')}", keywords)
        rows.append({"sample_id": sample_id, "video": video, "caption": caption, "process": process,
                     "direction": directions.get(video)})
    table = pd.DataFrame(rows, columns=REFERENCE_COLUMNS)
    unknown = table[table["process"].isna()]
    if len(unknown):
        logger.warning("%d reference clips match no process of evaluation.processes (e.g. %s); they are left out",
                       len(unknown), unknown["sample_id"].head(3).tolist())
    kept = []
    for process in keywords:
        ids = table.loc[table["process"] == process, "sample_id"].tolist()
        if not ids:
            logger.warning("No reference clip of process %r: its motion fidelity cannot be measured", process)
        kept += _spread_pick(ids, max_clips_per_process)
    table = table[table["sample_id"].isin(kept)].reset_index(drop=True)
    loaded = {sample_id: np.asarray(clips[sample_id]()) for sample_id in table["sample_id"]}
    logger.info("Reference clips: %s", table["process"].value_counts().to_dict())
    return loaded, table


def concept_processes(reference_table: pd.DataFrame | None, concepts: list[str]) -> dict[str, str | None]:
    """The process most of each concept's reference clips show; None for a concept without any."""
    processes: dict[str, str | None] = {}
    for concept in concepts:
        rows = pd.DataFrame() if reference_table is None else reference_table[
            reference_table["concepts"].map(lambda names, c=concept: c in names)]
        counts = rows["process"].value_counts() if len(rows) else pd.Series(dtype=int)
        processes[concept] = str(counts.index[0]) if len(counts) else None
    return processes
