"""What a prompt asks the in-world evaluator for is said in the evaluator's own label words."""

from __future__ import annotations

import json
from pathlib import Path

from machining_t2v.evaluation.flow import DIRECTIONS
from machining_t2v.evaluation.inworld import CONFIG_FILE
from machining_t2v.evaluation.inworld_prompts import (
    _DIRECTION_PHRASES,
    DIRECTION_WORDINGS,
    expected_labels,
)
from machining_t2v.evaluation.inworld_scoring import INWORLD_FOLDER

CONFIG = Path(__file__).resolve().parents[2] / "models" / "starter" / INWORLD_FOLDER / CONFIG_FILE


def test_expected_labels_are_in_the_committed_evaluators_vocabulary():
    config = json.loads(CONFIG.read_text(encoding="utf-8"))
    assert set(DIRECTIONS) <= set(config["motions"])
    for wording in DIRECTION_WORDINGS.values():
        assert set(wording) == set(DIRECTIONS)
    assert {motion for _, motion in _DIRECTION_PHRASES} <= set(config["motions"])
    for prompt in ("mtv turning a brass bar on a lathe", "mtv milling aluminium, end mill moving towards the right",
                   "a red circle rotating", "a workshop"):
        labels = expected_labels(prompt)
        assert labels["scene"] in (None, *config["scenes"]) and labels["style"] in (None, *config["styles"])
