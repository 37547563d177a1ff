"""Variants and clip names: what the evaluation tables are keyed and grouped by."""

from __future__ import annotations

import pandas as pd

from machining_t2v.evaluation.variants import (
    REFERENCE,
    clip_key,
    concept_of,
    concept_variant,
    parse_clip_key,
    strip_name,
    variant_split_groups,
)


def test_a_concept_variant_names_its_concept_and_none_is_the_plain_variant():
    assert concept_variant("both", "mill_feed_right") == "both:mill_feed_right"
    assert concept_of("both:mill_feed_right") == "mill_feed_right"
    assert concept_variant("motion", None) == "motion" and concept_of("motion") is None


def test_clip_key_round_trips_and_strips_are_named_prompt_first():
    assert clip_key("both", "mill_x", 3) == "both__mill_x__seed3"
    assert parse_clip_key(clip_key("both", "mill_x", 3)) == ("both", "mill_x", 3)
    assert strip_name("mill_x", "both", 3) == "mill_x__both__seed3"


def test_groups_come_in_report_order_and_references_only_as_all():
    table = pd.DataFrame({"variant": [REFERENCE, "both", "base", "base", "both"],
                          "split": [REFERENCE, "held_out", "held_out", "seen", "held_out"]})
    groups = [(variant, split, len(rows)) for variant, split, rows in variant_split_groups(table)]
    assert groups == [("base", "all", 2), ("base", "seen", 1), ("base", "held_out", 1),
                      ("both", "all", 2), ("both", "held_out", 2), (REFERENCE, "all", 1)]
