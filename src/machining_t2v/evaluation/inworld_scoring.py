"""In-world scoring: the in-world evaluator's labels for every clip, and how often they are what
the prompt asks for.

A generated clip is expected to show what its prompt asks for and a reference clip what its
caption says (:func:`machining_t2v.evaluation.inworld_prompts.expected_labels`); a clip read as
plain shapes is never shop style (:func:`machining_t2v.evaluation.inworld_prompts.apply_world_rules`).
No Kedro import; torch only inside :func:`in_world_accuracies` and through the evaluator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from machining_t2v.evaluation.inworld_prompts import apply_world_rules, expected_labels
from machining_t2v.evaluation.variants import REFERENCE, parse_clip_key, variant_split_groups

if TYPE_CHECKING:
    from machining_t2v.evaluation.inworld import InWorldEvaluator

__all__ = [
    "INWORLD_COLUMNS",
    "INWORLD_FOLDER",
    "INWORLD_KEYS",
    "INWORLD_PREDICTION_COLUMNS",
    "in_world_accuracies",
    "label_every_clip",
]

INWORLD_FOLDER = "inworld_evaluator"
"""Subfolder of a base model (the starter model) that holds its in-world evaluator."""
INWORLD_KEYS = ("style", "scene", "motion")
INWORLD_COLUMNS = ["variant", "split", "n_clips", *(f"{key}_accuracy" for key in INWORLD_KEYS)]
INWORLD_PREDICTION_COLUMNS = ["variant", "prompt_id", "split", "seed", *(f"predicted_{key}" for key in INWORLD_KEYS),
                              *(f"expected_{key}" for key in INWORLD_KEYS)]


def label_every_clip(
    evaluator: InWorldEvaluator,
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    reference_clips: dict[str, np.ndarray],
    reference_table: pd.DataFrame,
) -> pd.DataFrame:
    """The evaluator's labels and the expected ones for every generated and reference clip.

    Returns:
        one row per clip with :data:`INWORLD_PREDICTION_COLUMNS` (reference clips: variant and
        split ``reference``, seed -1; an expected label the prompt does not state is None).
    """
    prompt_of = prompts.set_index("prompt_id")
    rows: list[dict[str, Any]] = []

    def add(base: dict[str, Any], frames: np.ndarray, text: str) -> None:
        # One clip at a time: reference clips may differ in length and size, a batch may not.
        predicted = apply_world_rules(evaluator.predict(np.asarray(frames)[None])[0])
        expected = expected_labels(text)
        rows.append({**base, **{f"predicted_{key}": predicted[key] for key in INWORLD_KEYS},
                     **{f"expected_{key}": expected[key] for key in INWORLD_KEYS}})

    for key in sorted(generated):
        variant, prompt_id, seed = parse_clip_key(key)
        prompt = prompt_of.loc[prompt_id]
        add({"variant": variant, "prompt_id": prompt_id, "split": prompt["split"], "seed": seed}, generated[key],
            prompt["prompt"])
    for row in reference_table.itertuples(index=False):
        add({"variant": REFERENCE, "prompt_id": row.sample_id, "split": REFERENCE, "seed": -1},
            reference_clips[row.sample_id], str(row.caption or ""))
    return pd.DataFrame(rows, columns=INWORLD_PREDICTION_COLUMNS)


def _labels(frame: pd.DataFrame, prefix: str) -> list[dict[str, str | None]]:
    """``predicted_*`` or ``expected_*`` columns as label dicts; a missing label (None/NaN) as None."""
    return [{key: None if pd.isna(value) else str(value) for key, value in zip(INWORLD_KEYS, values, strict=True)}
            for values in frame[[f"{prefix}{key}" for key in INWORLD_KEYS]].itertuples(index=False)]


def in_world_accuracies(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (variant, split) of the labels of :func:`label_every_clip`, grouped like
    :func:`~machining_t2v.evaluation.scoring.metric_means`: the share of clips whose predicted label
    is the expected one, over the clips whose prompt states that label (NaN if none does).

    Returns:
        one row per (variant, split) with :data:`INWORLD_COLUMNS`.
    """
    # inworld imports torch, which accuracy does not need but registering the pipelines must not pay for.
    from machining_t2v.evaluation.inworld import accuracy

    rows = []
    for variant, split, group in variant_split_groups(predictions):
        predicted, expected = _labels(group, "predicted_"), _labels(group, "expected_")
        rows.append({"variant": variant, "split": split, "n_clips": len(group),
                     **{f"{key}_accuracy": accuracy(predicted, expected, key) for key in INWORLD_KEYS}})
    return pd.DataFrame(rows, columns=INWORLD_COLUMNS)
