"""Words of a prompt that the base model's tokenizer does not know, and the warning about them.

CLIP's byte-level BPE turns any text into tokens, so nothing fails: a word outside its alphabet
(Hangul above all) becomes byte fragments that mean nothing to the text encoder, and the video
silently ignores it. Such a word is what this module calls unknown.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def _is_fragment(tokenizer: Any, token_id: int) -> bool:
    """Whether ``token_id`` is the unknown token or part of a character's bytes (decodes to U+FFFD)."""
    return token_id == tokenizer.unk_token_id or "\ufffd" in tokenizer.decode([token_id])


def words_unknown_to_tokenizer(tokenizer: Any, prompt: str) -> list[str]:
    """The words of ``prompt`` (split at spaces, each once) that ``tokenizer`` only has byte fragments for."""
    unknown = []
    for word in dict.fromkeys(prompt.split()):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if any(_is_fragment(tokenizer, token_id) for token_id in ids):
            unknown.append(word)
    return unknown


def warn_unknown_words(tokenizer: Any, prompt: str, what: str = "prompt") -> list[str]:
    """Log a warning naming the words of ``prompt`` the tokenizer does not know; returns them."""
    unknown = words_unknown_to_tokenizer(tokenizer, prompt)
    if unknown:
        logger.warning("The base model's tokenizer does not know these words of the %s, so the model ignores "
                       "them: %s. Write them in the captions' English words (`machining-t2v prompt` turns a "
                       "Korean instruction into them).", what, ", ".join(unknown))
    return unknown
