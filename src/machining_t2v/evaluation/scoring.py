"""Scoring the generated clips and the reference clips: every metric per clip, and the mean per
variant and split.

Generated clips are scored against their prompt and the reference clips of their process; each
reference clip against its caption and the *other* references of its process, so the ceiling is
not trivially 1. No Kedro import; torch only inside :func:`score_every_clip` (through the CLIP scorer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from machining_t2v.evaluation.direction import agreement, most_common_direction, travel_direction
from machining_t2v.evaluation.metrics import (
    FlowStatistics,
    flow_statistics,
    motion_fidelity,
    video_metrics,
)
from machining_t2v.evaluation.variants import (
    REFERENCE,
    concept_of,
    parse_clip_key,
    variant_split_groups,
)

if TYPE_CHECKING:
    from machining_t2v.evaluation.clip_metrics import ClipScorer

__all__ = ["CLIP_METRICS", "METRICS", "SCORE_COLUMNS", "metric_means", "score_every_clip"]

METRICS = ("clip_t", "clip_f", "flicker", "dynamic_degree", "dynamic", "mean_flow_magnitude", "rotation_ratio",
           "motion_fidelity", "direction_agreement")
CLIP_METRICS = ("clip_t", "clip_f")
"""The metrics that come from the CLIP model (they measure nothing with the stand-in CLIP)."""
SCORE_COLUMNS = ["variant", "prompt_id", "prompt", "process", "split", "seed", "metric", "value"]


def _fidelity(stats: FlowStatistics, references: list[FlowStatistics]) -> float:
    """Motion fidelity of one clip's flow statistics to ``references``; NaN without references."""
    if not references:
        return float("nan")
    return float(motion_fidelity([stats], references)["motion_fidelity"])


def score_every_clip(
    scorer: ClipScorer,
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    reference_clips: dict[str, np.ndarray],
    reference_table: pd.DataFrame,
) -> pd.DataFrame:
    """Every metric of :data:`METRICS` for every generated clip and every reference clip.

    Per clip: CLIP-T (against its prompt; a reference clip against its caption), CLIP-F,
    flicker, dynamic degree, dynamic, mean flow magnitude, rotation ratio, motion fidelity
    to the reference clips of the same process (a reference clip against the *other* references
    of its process) and direction agreement (:mod:`~machining_t2v.evaluation.direction`): 1 when
    the clip's tool travels the way the reference clips of its process mostly do (a reference
    clip: the way its ``direction`` says), 0 when not, NaN when no direction is known. A motion
    concept's variant (``both:<concept>``) is compared with the reference clips of its concept
    (``reference_table``'s ``concepts`` column) instead of its process.

    Args:
        scorer: the CLIP model of CLIP-T and CLIP-F.
        generated: the clips named by :func:`~machining_t2v.evaluation.variants.clip_key`.
        prompts: the prompt table (:func:`~machining_t2v.evaluation.prompt_table.prompt_table`).
        reference_clips, reference_table: from
            :func:`~machining_t2v.evaluation.reference_clips.choose_reference_clips`.

    Returns:
        long table with :data:`SCORE_COLUMNS` (reference clips: variant and split ``reference``, seed -1).
    """
    # CLIP-T and CLIP-F run the CLIP model: torch is imported only when clips are scored.
    from machining_t2v.evaluation.clip_metrics import clip_f, clip_t

    reference_stats = {sample_id: flow_statistics(frames) for sample_id, frames in reference_clips.items()}
    process_refs: dict[str, list[str]] = {}
    for row in reference_table.itertuples(index=False):
        process_refs.setdefault(row.process, []).append(row.sample_id)
    prompt_of = prompts.set_index("prompt_id")
    rows: list[dict[str, Any]] = []

    # A motion concept's variants (both:<concept>) are compared with that concept's own reference clips.
    concept_refs: dict[str, list[str]] = {}
    for sample_id, concepts in zip(reference_table["sample_id"], reference_table.get("concepts", ()), strict=False):
        for concept in concepts:
            concept_refs.setdefault(concept, []).append(sample_id)
    direction_of = dict(zip(reference_table["sample_id"], reference_table["direction"], strict=True))
    group_refs = {**{("process", p): refs for p, refs in process_refs.items()},
                  **{("concept", c): refs for c, refs in concept_refs.items()}}
    group_direction = {group: most_common_direction(direction_of[r] for r in refs) for group, refs in group_refs.items()}

    def add(base: dict[str, Any], frames: np.ndarray, text: str, stats: FlowStatistics, refs: list[str],
            expected: str | None) -> None:
        values = {"clip_t": clip_t(scorer, frames, text), "clip_f": clip_f(scorer, frames), **video_metrics(frames),
                  "motion_fidelity": _fidelity(stats, [reference_stats[r] for r in refs]),
                  "direction_agreement": agreement(travel_direction(frames), expected)}
        rows.extend({**base, "metric": metric, "value": float(values[metric])} for metric in METRICS)

    for key in sorted(generated):
        variant, prompt_id, seed = parse_clip_key(key)
        prompt = prompt_of.loc[prompt_id]
        frames = generated[key]
        concept = concept_of(variant)
        group = ("process", prompt["process"]) if concept is None else ("concept", concept)
        add({"variant": variant, "prompt_id": prompt_id, "prompt": prompt["prompt"], "process": prompt["process"],
             "split": prompt["split"], "seed": seed}, frames, prompt["prompt"], flow_statistics(frames),
            group_refs.get(group, []), group_direction.get(group))
    for row in reference_table.itertuples(index=False):
        others = [r for r in process_refs.get(row.process, []) if r != row.sample_id]
        add({"variant": REFERENCE, "prompt_id": row.sample_id, "prompt": row.caption, "process": row.process,
             "split": REFERENCE, "seed": -1}, reference_clips[row.sample_id], row.caption or row.process,
            reference_stats[row.sample_id], others, row.direction)
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def metric_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per variant, overall (``split`` = ``all``) and per split, plus the
    reference ceiling (see :func:`~machining_t2v.evaluation.variants.variant_split_groups`).

    Args:
        metrics: the long table of :func:`score_every_clip`.

    Returns:
        one row per (variant, split) with ``n_clips`` and one column per metric.
    """
    rows = []
    for variant, split, group in variant_split_groups(metrics):
        means = group.groupby("metric")["value"].mean()
        n_clips = len(group.drop_duplicates(["prompt_id", "seed"]))
        rows.append({"variant": variant, "split": split, "n_clips": n_clips,
                     **{metric: float(means.get(metric, np.nan)) for metric in METRICS}})
    return pd.DataFrame(rows, columns=["variant", "split", "n_clips", *METRICS])
