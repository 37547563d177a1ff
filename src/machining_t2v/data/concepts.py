"""Motion concepts: named groups of training clips, one motion LoRA each (MotionDirector's protocol).

A temporal LoRA never reads the caption, so one trained on clips whose tool travels six ways
learns their blend. A concept gathers the clips of *one* motion, chosen by exactly one rule of
``motion_ft.concepts.<name>``:

* ``column`` + ``equals``: the video's ``metadata.csv`` row has this value in this column
  (``{column: direction, equals: x}``);
* ``caption``: a regular expression found in the clip's caption (``{caption: "towards the chuck"}``);
* ``folder``: the video lies in this sub-folder of the raw video folder (``{folder: roughing}``).

No Kedro import, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported by the nodes that select clips, not when pipelines are registered
    import pandas as pd

__all__ = ["CONCEPT_NAME", "RULES", "check_concept_name", "concept_mask", "describe_rule"]

CONCEPT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""A concept's name: it names a Kedro namespace, folders and MLflow keys."""
RULES = ("column", "caption", "folder")
"""The ways a concept chooses its clips; a concept uses exactly one."""


def check_concept_name(name: str) -> str:
    """``name`` if it is a valid concept name, else a ValueError saying what one looks like."""
    if not CONCEPT_NAME.match(name):
        raise ValueError(f"motion_ft.concepts: {name!r} is not a concept name; use lower-case letters, digits "
                         "and underscores, starting with a letter (e.g. mill_feed_right)")
    return name


def _checked_rule(name: str, rule: Mapping[str, Any]) -> str:
    """The one rule ``rule`` uses; a clear error when it uses none, several, or a half one."""
    used = [key for key in RULES if rule.get(key) not in (None, "")]
    if len(used) != 1:
        raise ValueError(f"motion_ft.concepts.{name}: give exactly one of {', '.join(RULES)}, got "
                         f"{', '.join(used) or 'none'}")
    if used == ["column"] and rule.get("equals") in (None, ""):
        raise ValueError(f"motion_ft.concepts.{name}: 'column' needs 'equals', the value its clips have there")
    if rule.get("equals") not in (None, "") and used != ["column"]:
        raise ValueError(f"motion_ft.concepts.{name}: 'equals' goes with 'column'")
    return used[0]


def describe_rule(rule: Mapping[str, Any]) -> str:
    """The rule in words, for logs and errors: ``direction = x``, ``caption ~ /towards/``, ``folder roughing/``."""
    if rule.get("column"):
        return f"metadata.csv {rule['column']} = {rule.get('equals')}"
    if rule.get("caption"):
        return f"caption ~ /{rule['caption']}/"
    return f"folder {str(rule.get('folder', '')).strip('/')}/"


def concept_mask(name: str, rule: Mapping[str, Any], clips: pd.DataFrame, allow_empty: bool = False) -> pd.Series:
    """Which clips belong to concept ``name``: a boolean Series aligned with ``clips``.

    Args:
        name: the concept's name (for errors).
        rule: ``motion_ft.concepts.<name>`` (see the module docstring).
        clips: one row per clip with ``video`` (path relative to the raw folder, posix), ``caption``
            and ``metadata`` (the video's ``metadata.csv`` row as a dict; empty when it has none).
        allow_empty: whether a concept may select no clip (the evaluation's reference clips are a
            sample of the training clips); training clips may not.

    Raises:
        ValueError: a malformed rule, a column no ``metadata.csv`` row has, a bad regular
            expression, or (unless ``allow_empty``) a concept that selects no clip; each names the concept.
    """
    check_concept_name(name)
    kind = _checked_rule(name, rule)
    if kind == "column":
        column, value = str(rule["column"]), str(rule["equals"]).strip()
        if len(clips) and not any(column in row for row in clips["metadata"]):
            raise ValueError(f"motion_ft.concepts.{name}: no metadata.csv row has a {column!r} column")
        mask = clips["metadata"].map(lambda row: str(row.get(column, "")).strip() == value)
    elif kind == "caption":
        try:
            pattern = re.compile(str(rule["caption"]), re.IGNORECASE)
        except re.error as error:
            raise ValueError(f"motion_ft.concepts.{name}: caption {rule['caption']!r} is not a regular "
                             f"expression ({error})") from error
        mask = clips["caption"].map(lambda caption: bool(pattern.search(str(caption or ""))))
    else:
        folder = PurePosixPath(str(rule["folder"]).strip("/"))
        mask = clips["video"].map(lambda video: PurePosixPath(str(video)).parent.is_relative_to(folder))
    if not allow_empty and not mask.any():
        raise ValueError(f"motion_ft.concepts.{name}: no training clip matches {describe_rule(rule)} "
                         f"(of {len(clips)} clips); check the rule against the captions and metadata.csv")
    return mask.astype(bool)
