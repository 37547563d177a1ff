"""Words of an instruction in dictionary form: Korean through kiwipiepy, English by suffix rules.

Korean is analysed into morphemes so that particles and endings fall away ("엔드밀로" is 엔드밀,
"뚫는다" is 뚫다); the glossary's Korean words are taught to the analyser first so that shop
compounds ("외경선삭") stay whole. Latin-script words are lower-cased and reduced to a form the
glossary lists ("milled" to "mill", "pockets" to "pocket").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

HANGUL = re.compile(r"[\uac00-\ud7a3]")
_ALL_HANGUL = re.compile(r"[\uac00-\ud7a3]+")
# Korean morpheme tags that carry no meaning of their own here: particles (J), endings (E),
# suffixes and prefixes (XS, XP), the copula (VCP, VCN), punctuation or symbols (SF, SP, SS, SE,
# SO, SW) and numbers (SN).
_DROPPED_TAGS = ("J", "E", "XS", "XP", "VCP", "VCN", "SF", "SP", "SS", "SE", "SO", "SW", "SN")
_LATIN = re.compile(r"[+-]?[a-z][a-z0-9]*(?:[./][a-z0-9]+)*|[+-]?[a-z]", re.I)
_SIGN_AXIS = re.compile(r"[+-][xyz]$")


@dataclass(frozen=True)
class Word:
    """One word of an instruction: ``form`` in dictionary form (matched), ``surface`` the word as
    written around it (what a message about an unknown word shows)."""

    form: str
    surface: str


def english_form(word: str, known: Iterable[str] = ()) -> str:
    """``word`` lower-cased and, when a plural or -ed/-ing form of a ``known`` word, that word."""
    word = word.lower()
    known = frozenset(known)
    if word in known:
        return word
    candidates = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    for suffix in ("ing", "ed"):
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            candidates += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:  # "milled" -> "mill" is caught above; "cutting" -> "cut"
                candidates.append(stem[:-1])
    return next((candidate for candidate in candidates if candidate in known), word)


@lru_cache(maxsize=4)
def _kiwi(user_words: tuple[str, ...]) -> Any:
    """A kiwipiepy analyser that knows ``user_words`` (loading takes about a second, so it is kept)."""
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    for word in user_words:
        kiwi.add_user_word(word, "NNP", 0.0)
    return kiwi


def _latin_words(text: str, known: frozenset[str]) -> list[Word]:
    words = []
    for match in _LATIN.finditer(text):
        surface = match.group(0)
        form = surface.lower()
        if form[0] in "+-" and not _SIGN_AXIS.match(form):
            form = form[1:]  # a dash between words ("finish-turn"), not an axis sign ("-x")
        words.append(Word(english_form(form, known), surface))
    return words


def _korean_words(text: str, known: frozenset[str], user_words: tuple[str, ...]) -> list[Word]:
    words: list[Word] = []
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    tokens = _kiwi(user_words).tokenize(text)
    for index, token in enumerate(tokens):
        tag = token.tag.split("-")[0]  # kiwipiepy marks irregular verbs as "VV-R"/"VV-I"
        if tag == "SL":
            # Latin inside Korean text: kiwipiepy splits a sign from its axis ("-X"), put it back.
            before = tokens[index - 1] if index else None
            sign = before.form if before is not None and before.form in "+-" and before.end == token.start else ""
            words.extend(_latin_words(sign + token.form, known))
        elif not tag.startswith(_DROPPED_TAGS):
            lemma = token.lemma if tag in ("VV", "VA", "VX") else token.form
            surface = next((text[a:b] for a, b in spans if a <= token.start < b), token.form)
            words.append(Word(lemma, surface))
    return words


def words_of(text: str, known: frozenset[str] = frozenset(), user_words: tuple[str, ...] = ()) -> list[Word]:
    """The meaningful words of ``text`` in dictionary form; ``known`` are the glossary's single words
    (English forms reduce to them) and ``user_words`` the Korean words taught to the analyser."""
    if HANGUL.search(text):
        return _korean_words(text, known, user_words)
    return _latin_words(text, known)


def korean_user_words(terms: Iterable[str]) -> tuple[str, ...]:
    """Every all-Hangul word of the glossary's terms, sorted (the analyser's extra dictionary)."""
    found = {word for term in terms for word in term.split() if _ALL_HANGUL.fullmatch(word)}
    return tuple(sorted(found))
