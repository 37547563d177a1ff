"""Scoring: every metric for every generated and reference clip, and the means per variant and split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from machining_t2v.evaluation.clip_metrics import STANDIN_CLIP, load_clip_scorer
from machining_t2v.evaluation.scoring import METRICS, SCORE_COLUMNS, metric_means, score_every_clip
from machining_t2v.evaluation.variants import REFERENCE, clip_key
from tests.conftest import moving_square_frames


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> pd.DataFrame:
    scorer = load_clip_scorer(STANDIN_CLIP, tmp_path_factory.mktemp("clip") / "standin")
    prompts = pd.DataFrame([{"prompt_id": "mill", "prompt": "mtv milling", "process": "milling", "split": "seen"},
                            {"prompt_id": "turn", "prompt": "mtv turning", "process": "turning", "split": "held_out"}])
    generated = {clip_key(variant, prompt_id, 0): moving_square_frames(4, 64, 64, seed=seed)
                 for seed, (variant, prompt_id) in enumerate([("base", "mill"), ("base", "turn"), ("image", "mill")])}
    references = {f"ref{i}": moving_square_frames(4, 64, 64, seed=10 + i) for i in range(3)}
    reference_table = pd.DataFrame({"sample_id": list(references), "video": "", "caption": ["mill", "milling", ""],
                                    "process": ["milling", "milling", "turning"],
                                    "direction": ["right", "right", None]})
    return score_every_clip(scorer, generated, prompts, references, reference_table)


def test_every_clip_gets_every_metric(scored):
    assert list(scored.columns) == SCORE_COLUMNS
    clips = scored.groupby(["variant", "prompt_id"])["metric"].apply(list)
    assert len(clips) == 6 and all(metrics == list(METRICS) for metrics in clips)
    references = scored[scored["variant"] == REFERENCE]
    assert set(references["split"]) == {REFERENCE} and set(references["seed"]) == {-1}


def test_motion_fidelity_needs_other_references_of_the_process(scored):
    fidelity = scored[scored["metric"] == "motion_fidelity"].set_index(["variant", "prompt_id"])["value"]
    # ref2 is the only turning reference: a turning clip is compared with it, ref2 itself with nothing.
    assert np.isfinite(fidelity[("base", "turn")]) and np.isnan(fidelity[(REFERENCE, "ref2")])
    assert np.isfinite(fidelity[(REFERENCE, "ref0")]) and np.isfinite(fidelity[("image", "mill")])


def test_direction_agreement_against_the_references_of_the_process(scored):
    agreement = scored[scored["metric"] == "direction_agreement"].set_index(["variant", "prompt_id"])["value"]
    # Every square slides right: the milling references say "right", the turning one says nothing.
    assert agreement[(REFERENCE, "ref0")] == 1.0 and agreement[("base", "mill")] == 1.0
    assert np.isnan(agreement[(REFERENCE, "ref2")]) and np.isnan(agreement[("base", "turn")])
    assert metric_means(scored).set_index(["variant", "split"]).loc[(REFERENCE, "all"), "direction_agreement"] == 1.0


def test_means_per_variant_and_split(scored):
    summary = metric_means(scored).set_index(["variant", "split"])
    assert list(summary.index) == [("base", "all"), ("base", "seen"), ("base", "held_out"), ("image", "all"),
                                   ("image", "seen"), (REFERENCE, "all")]
    assert list(summary["n_clips"]) == [2, 1, 1, 1, 1, 3]
    flicker = scored[(scored["variant"] == "base") & (scored["metric"] == "flicker")]["value"]
    assert summary.loc[("base", "all"), "flicker"] == pytest.approx(flicker.mean())
