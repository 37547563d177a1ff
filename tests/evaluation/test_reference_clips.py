"""Reference clips: a clip's process is recognised from the words of its caption and video path."""

from __future__ import annotations

from machining_t2v.evaluation.reference_clips import process_of


def test_process_recognition():
    processes = {"milling": ["mill", "milling", "end mill"], "turning": ["lathe", "turning", "chuck"]}
    assert process_of("mtv slot milling on a milling machine, spinning end mill", processes) == "milling"
    assert process_of("turn the bar on a lathe, bar spinning in the chuck", processes) == "turning"
    assert process_of("a video of a workshop", processes) is None
