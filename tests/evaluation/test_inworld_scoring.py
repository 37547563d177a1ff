"""In-world scoring: the committed evaluator's labels for every clip, against what the prompt asks for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from machining_t2v.evaluation.inworld import InWorldEvaluator
from machining_t2v.evaluation.inworld_prompts import apply_world_rules, expected_labels
from machining_t2v.evaluation.inworld_scoring import (
    INWORLD_COLUMNS,
    INWORLD_FOLDER,
    INWORLD_PREDICTION_COLUMNS,
    in_world_accuracies,
    label_every_clip,
)
from machining_t2v.evaluation.variants import REFERENCE, clip_key
from tests.conftest import moving_square_frames

STARTER = Path(__file__).resolve().parents[2] / "models" / "starter"


def test_every_clip_is_labelled_with_what_its_prompt_asks_for():
    evaluator = InWorldEvaluator.load(STARTER / INWORLD_FOLDER)
    prompts = pd.DataFrame([{"prompt_id": "mill", "prompt": "mtv milling aluminium, end mill moving towards the right",
                             "process": "milling", "split": "seen"}])
    clip = moving_square_frames(8, 64, 64, seed=1)
    reference = moving_square_frames(8, 96, 64, seed=2)
    reference_table = pd.DataFrame({"sample_id": ["ref"], "video": [""], "caption": ["mtv turning on a lathe"],
                                    "process": ["turning"]})
    predictions = label_every_clip(evaluator, {clip_key("base", "mill", 0): clip}, prompts, {"ref": reference},
                                   reference_table)
    assert list(predictions.columns) == INWORLD_PREDICTION_COLUMNS
    rows = predictions.set_index("variant")
    for variant, frames, text in (("base", clip, prompts["prompt"][0]), (REFERENCE, reference, "mtv turning on a lathe")):
        predicted = apply_world_rules(evaluator.predict(frames[None])[0])
        expected = expected_labels(text)
        for key in ("style", "scene", "motion"):
            assert rows.loc[variant, f"predicted_{key}"] == predicted[key]
            stated = rows.loc[variant, f"expected_{key}"]
            assert pd.isna(stated) if expected[key] is None else stated == expected[key]
    assert (rows.loc[REFERENCE, "split"], rows.loc[REFERENCE, "seed"]) == (REFERENCE, -1)


def test_accuracies_skip_labels_the_prompt_does_not_state():
    predictions = pd.DataFrame([
        {"variant": "base", "prompt_id": "a", "split": "seen", "seed": 0, "predicted_style": "shop",
         "predicted_scene": "milling", "predicted_motion": "left", "expected_style": "shop",
         "expected_scene": "turning", "expected_motion": np.nan},
        {"variant": "base", "prompt_id": "b", "split": "held_out", "seed": 0, "predicted_style": "neutral",
         "predicted_scene": "milling", "predicted_motion": "right", "expected_style": "shop",
         "expected_scene": "milling", "expected_motion": np.nan},
    ], columns=INWORLD_PREDICTION_COLUMNS)
    table = in_world_accuracies(predictions)
    assert list(table.columns) == INWORLD_COLUMNS
    overall = table.set_index(["variant", "split"]).loc[("base", "all")]
    assert overall["n_clips"] == 2 and overall["style_accuracy"] == 0.5 and overall["scene_accuracy"] == 0.5
    assert np.isnan(overall["motion_accuracy"])
