"""What a prompt asks the in-world evaluator to see, in the evaluator's label words.

The committed starter's in-world evaluator (:mod:`machining_t2v.evaluation.inworld`) labels clips with a
scene, a style and a motion. To score a generated clip, the evaluation reads what its prompt
asks for (:func:`expected_labels`) from the words the starter world's captions use: process
words for the scene, a workpiece material for the shop's style, and the direction phrases of
:data:`DIRECTION_WORDINGS` (the very phrases the starter's captions were written with) for the
motion. :func:`apply_world_rules` applies the world's one rule to the evaluator's labels. No
Kedro import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from machining_t2v.data.synthetic_videos.vocabulary import (
    DIRECTION_WORDS,
    MATERIAL_COLOURS,
    PROCESSES,
)

__all__ = ["DIRECTION_WORDINGS", "apply_world_rules", "expected_labels", "longest_first"]

#: Where each translation starts and ends in the frame; both wordings of it are made from these.
_TRANSLATION_ENDS = {
    "right": ("left", "right"), "left": ("right", "left"),
    "down": ("top", "bottom"), "up": ("bottom", "top"),
    "down-right": ("top left", "bottom right"), "up-left": ("bottom right", "top left"),
    "up-right": ("bottom left", "top right"), "down-left": ("top right", "bottom left"),
}


def _translation_words(motion: str, wording: str) -> str:
    start, end = _TRANSLATION_ENDS[motion]
    words = f"from {start} to {end}" if wording == "order" else f"towards the {end}"
    return f"diagonally {words}" if "-" in motion else words


#: How shape captions name a translation: ``order`` ("from left to right", what starter v1
#: was trained on) or ``distinct`` ("towards the right": each direction named by its own set of
#: words, what the committed starter was continued on). The starter's frozen random text
#: encoder tells which words a caption has, hardly in which order, so with ``order`` it finds
#: the axis of a motion but not its sign (docs/starter_model.md).
DIRECTION_WORDINGS = {wording: {motion: _translation_words(motion, wording) for motion in _TRANSLATION_ENDS}
                      for wording in ("order", "distinct")}


def longest_first(phrases: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``(phrase, label)`` pairs, longest phrase first: a phrase inside a longer one ("towards
    the top" in "diagonally towards the top left") must lose to it."""
    return tuple(sorted(phrases, key=lambda phrase_and_motion: -len(phrase_and_motion[0])))


_DIRECTION_PHRASES = longest_first(
    (phrase, motion) for words in DIRECTION_WORDINGS.values() for motion, phrase in words.items()
) + (
    (DIRECTION_WORDS["left"], "left"), (DIRECTION_WORDS["right"], "right"),  # the sample videos' turning feeds
    ("inwards", "inward"), ("rotating", "rotate"), ("growing", "scale"), ("bouncing", "bounce"),
)


def apply_world_rules(predicted: dict[str, str]) -> dict[str, str]:
    """An evaluator's labels for a clip, with the world's rule that plain shapes are never shop style.

    The shop's look is its machines in their colours; every shape render is labelled
    ``neutral``. The evaluator's style head reads colours, so without this rule a generated
    shape on the shop's blue-grey backdrop would count as shop style.
    """
    if predicted.get("scene") == "shapes":
        return {**predicted, "style": "neutral"}
    return dict(predicted)


def expected_labels(prompt: str) -> dict[str, str | None]:
    """What a prompt asks for, in the evaluator's vocabulary (None where it does not say).

    The scene comes from the process words, the motion from the direction phrase, and the
    style is ``shop`` when the prompt names a workpiece material (the shop's look).
    """
    text = prompt.lower()
    if re.search(r"\b(lathe|turn|turning|chuck)\b", text):
        scene = "turning"
    elif re.search(r"\b(mill|milling|end mill)\b", text):
        scene = "milling"
    elif re.search(r"\b(circle|square|triangle)\b", text):
        scene = "shapes"
    else:
        scene = None
    motion = next((label for phrase, label in _DIRECTION_PHRASES if phrase in text), None)
    materials = list(MATERIAL_COLOURS) + ["titanium", "cast iron"]
    style = "shop" if scene in PROCESSES and any(m in text for m in materials) else None
    return {"scene": scene, "style": style, "motion": motion}
