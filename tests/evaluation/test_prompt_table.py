"""The evaluation prompt table: every prompt names a valid id, text, process and split."""

from __future__ import annotations

import pytest

from machining_t2v.evaluation.prompt_table import prompt_table


def test_prompt_table_refuses_bad_prompts():
    processes = {"milling": ["mill", "milling", "end mill"], "turning": ["lathe", "turning", "chuck"]}
    good = {"id": "a", "text": "mtv milling", "process": "milling", "split": "seen"}
    for bad, message in (({"split": "train"}, "split must be one of"), ({"process": "drilling"}, "process must be"),
                         ({"text": " "}, "text is empty"), ({"id": "a/b"}, "id must be")):
        with pytest.raises(ValueError, match=message):
            prompt_table([{**good, **bad}], processes)
    with pytest.raises(ValueError, match="duplicate ids"):
        prompt_table([good, good], processes)
