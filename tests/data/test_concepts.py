"""Motion concepts: each rule chooses its clips, and a bad or empty concept is an error naming it."""

from __future__ import annotations

import pandas as pd
import pytest

from machining_t2v.data.concepts import check_concept_name, concept_mask, describe_rule


@pytest.fixture
def clips() -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": ["a_clip000", "a_clip001", "b_clip000", "c_clip000"],
        "video": ["milling_000.webm", "milling_000.webm", "roughing/turning_001.mp4", "roughing/deep/c.mp4"],
        "caption": ["slot milling, end mill travelling from left to right",
                    "slot milling, end mill travelling from left to right",
                    "turn the bar, fixed turning tool feeding towards the chuck", "no words"],
        "metadata": [{"file": "milling_000.webm", "direction": "x"}, {"file": "milling_000.webm", "direction": "x"},
                     {"file": "turning_001.mp4", "direction": "left"}, {}],
    })


def chosen(name, rule, clips, **kwargs) -> list[str]:
    return clips.loc[concept_mask(name, rule, clips, **kwargs).to_numpy(), "sample_id"].tolist()


def test_a_metadata_column_value_chooses_clips(clips):
    assert chosen("mill_right", {"column": "direction", "equals": "x"}, clips) == ["a_clip000", "a_clip001"]
    assert chosen("turn_left", {"column": "direction", "equals": " left "}, clips) == ["b_clip000"]


def test_a_caption_pattern_chooses_clips(clips):
    assert chosen("chuck", {"caption": "towards the CHUCK"}, clips) == ["b_clip000"]
    assert chosen("rightwards", {"caption": r"from left to right$"}, clips) == ["a_clip000", "a_clip001"]


def test_a_sub_folder_chooses_the_videos_below_it(clips):
    assert chosen("roughing", {"folder": "roughing/"}, clips) == ["b_clip000", "c_clip000"]
    assert chosen("deep", {"folder": "roughing/deep"}, clips) == ["c_clip000"]


def test_an_empty_concept_is_an_error_naming_it(clips):
    with pytest.raises(ValueError, match=r"motion_ft.concepts.mill_up: no training clip matches "
                                         r"metadata.csv direction = -y \(of 4 clips\)"):
        concept_mask("mill_up", {"column": "direction", "equals": "-y"}, clips)
    with pytest.raises(ValueError, match=r"motion_ft.concepts.finishing: no training clip matches folder finishing/"):
        concept_mask("finishing", {"folder": "finishing"}, clips)
    assert chosen("mill_up", {"column": "direction", "equals": "-y"}, clips, allow_empty=True) == []


@pytest.mark.parametrize(("rule", "message"), [
    ({}, "give exactly one of column, caption, folder, got none"),
    ({"caption": "x", "folder": "y"}, "give exactly one of column, caption, folder, got caption, folder"),
    ({"column": "direction"}, "'column' needs 'equals'"),
    ({"caption": "x", "equals": "y"}, "'equals' goes with 'column'"),
    ({"caption": "(unclosed"}, "caption '\\(unclosed' is not a regular expression"),
    ({"column": "speed", "equals": "fast"}, "no metadata.csv row has a 'speed' column"),
])
def test_a_malformed_rule_is_an_error_naming_the_concept(clips, rule, message):
    with pytest.raises(ValueError, match=f"motion_ft.concepts.bad: .*{message}"):
        concept_mask("bad", rule, clips)


def test_concept_names_are_checked():
    assert check_concept_name("mill_feed_right") == "mill_feed_right"
    for name in ("Mill", "mill-right", "2mill", "mill.right", ""):
        with pytest.raises(ValueError, match="is not a concept name"):
            check_concept_name(name)


def test_rules_in_words():
    assert describe_rule({"column": "direction", "equals": "x"}) == "metadata.csv direction = x"
    assert describe_rule({"caption": "chuck"}) == "caption ~ /chuck/"
    assert describe_rule({"folder": "/roughing/"}) == "folder roughing/"
