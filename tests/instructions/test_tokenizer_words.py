"""The warning about prompt words the base model's tokenizer does not know, on the real tiny tokenizer."""

from __future__ import annotations

import logging

from machining_t2v.instructions.tokenizer_words import (
    warn_unknown_words,
    words_unknown_to_tokenizer,
)


def test_hangul_is_unknown_to_the_clip_tokenizer_and_warned_about(caplog):
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    prompt = "mtv 엔드밀로 slot milling along X, 알루미늄 workpiece"
    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        assert warn_unknown_words(tokenizer, prompt) == ["엔드밀로", "알루미늄"]
    assert "does not know these words of the prompt" in caplog.text and "엔드밀로, 알루미늄" in caplog.text


def test_english_words_split_into_pieces_are_still_known():
    """CLIP's BPE spells a rare English word ("mtv", "titanium") from sub-word pieces: not unknown."""
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    prompt = "mtv pocket milling in a circle on a milling machine, titanium workpiece, spinning end mill"
    assert words_unknown_to_tokenizer(tokenizer, prompt) == []
    assert words_unknown_to_tokenizer(tokenizer, "café crème") == ["café", "crème"]


def test_a_clean_prompt_logs_nothing(caplog):
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        assert warn_unknown_words(build_tiny_tokenizer(), "mtv face the bar on a lathe") == []
    assert caplog.text == ""
