"""The machining glossary (``conf/base/glossary.yml``): Korean and English terms and what they mean.

Loading checks every entry, so a shop's edit that breaks the file fails with the file and the
entry named rather than with a wrong prompt later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from machining_t2v.instructions.morphology import HANGUL, korean_user_words, words_of

#: Where the glossary lives in a project (the ``prompt`` command reads it from the current folder).
DEFAULT_GLOSSARY = Path("conf/base/glossary.yml")

#: Sections of named entries after ``processes``, and the kind of entry each holds.
ENTRY_SECTIONS = {"operations": "operation", "tools": "tool", "materials": "material",
                  "machine_parts": "machine_part", "workpieces": "workpiece"}
LANGUAGES = ("en", "ko")
# Kinds of entry that may share a term when they belong to different processes ("face" is face
# milling on a mill and facing on a lathe).
PER_PROCESS_KINDS = ("operation", "direction")


class GlossaryError(ValueError):
    """The glossary file is missing or one of its entries is malformed."""


@dataclass(frozen=True)
class Entry:
    """One meaning and the words that say it.

    ``kind`` is the section (process, operation, tool, material, direction, machine_part, workpiece,
    other),
    ``key`` the captions' word for it, ``process`` the process it belongs to or implies (if any),
    ``prompt`` and ``axis`` its caption words, ``direction`` an operation's own default direction.
    """

    kind: str
    key: str
    terms: tuple[str, ...]
    process: str | None = None
    prompt: str | None = None
    axis: str | None = None
    direction: str | None = None


@dataclass(frozen=True)
class Process:
    """A process: whether a LoRA learned it, its caption form and the defaults that fill it."""

    name: str
    trained: bool
    prompt: str | None = None
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Glossary:
    """Every entry of a glossary file, the processes by name, and the terms as instructions are read:
    ``phrases`` maps each term in dictionary form to its entries, ``known_words`` are the English
    words (inflected forms reduce to them), ``user_words`` the Korean words taught to the analyser."""

    path: Path
    processes: dict[str, Process]
    entries: tuple[Entry, ...]
    phrases: dict[tuple[str, ...], tuple[Entry, ...]]
    known_words: frozenset[str]
    user_words: tuple[str, ...]

    @property
    def trained_processes(self) -> list[str]:
        """The processes a LoRA has learned, in file order."""
        return [name for name, process in self.processes.items() if process.trained]

    def entry(self, kind: str, key: str, process: str | None = None) -> Entry:
        """The entry ``key`` of ``kind`` (for directions and operations: of ``process``)."""
        for entry in self.entries:
            if entry.kind == kind and entry.key == key and (process is None or entry.process == process):
                return entry
        raise KeyError(f"{kind} {key!r}" + (f" of {process}" if process else ""))


def _fail(path: Path, where: str, problem: str) -> GlossaryError:
    return GlossaryError(f"{path}: {where}: {problem}")


def _terms(path: Path, where: str, spec: Any) -> tuple[str, ...]:
    """The ``en`` and ``ko`` term lists of an entry, checked."""
    if not isinstance(spec, dict):
        raise _fail(path, where, f"expected a mapping with 'en' and/or 'ko' lists, got {spec!r}")
    terms: list[str] = []
    for language in LANGUAGES:
        words = spec.get(language, [])
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise _fail(path, f"{where}.{language}", f"expected a list of non-empty texts, got {words!r} "
                        "(quote numbers and words YAML reads as true/false, such as \"on\")")
        terms.extend(str(word).strip() for word in words)
    if not terms:
        raise _fail(path, where, "no terms: give at least one in 'en' or 'ko'")
    return tuple(terms)


def _text(path: Path, where: str, spec: dict, key: str, required: bool) -> str | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"{where}.{key}", f"expected a non-empty text, got {value!r}")
    return value


def _processes(path: Path, section: Any) -> dict[str, Process]:
    if not isinstance(section, dict) or not section:
        raise _fail(path, "processes", "expected a mapping of process names")
    processes = {}
    for name, spec in section.items():
        where = f"processes.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("trained"), bool):
            raise _fail(path, where, "needs 'trained: true' or 'trained: false'")
        prompt = _text(path, where, spec, "prompt", required=spec["trained"])
        defaults = spec.get("defaults") or {}
        if spec["trained"]:
            missing = [k for k in ("operation", "material", "direction") if not defaults.get(k)]
            if missing or not all(f"{{{k}}}" in prompt for k in ("operation", "material", "direction")):
                raise _fail(path, where, "a trained process needs defaults for operation, material and "
                            "direction, and a prompt with {operation}, {material} and {direction}")
        processes[str(name)] = Process(str(name), spec["trained"], prompt, {k: str(v) for k, v in defaults.items()})
    return processes


def _entries(path: Path, data: dict, processes: dict[str, Process]) -> list[Entry]:
    entries = [Entry("process", name, _terms(path, f"processes.{name}", data["processes"][name]), name)
               for name in processes]
    for section, kind in ENTRY_SECTIONS.items():
        spec_section = data.get(section) or {}
        if not isinstance(spec_section, dict):
            raise _fail(path, section, "expected a mapping of entries")
        for key, spec in spec_section.items():
            where = f"{section}.{key}"
            terms = _terms(path, where, spec)
            process = spec.get("process")
            if process is not None and process not in processes:
                raise _fail(path, f"{where}.process", f"unknown process {process!r} (known: {', '.join(processes)})")
            prompt = _text(path, where, spec, "prompt", required=section == "operations")
            if section == "operations" and process is None:
                raise _fail(path, where, "an operation needs the process it belongs to")
            direction = _text(path, where, spec, "direction", required=False)
            entries.append(Entry(kind, str(key), terms, process, prompt, direction=direction))
    directions = data.get("directions") or {}
    for process, section in directions.items():
        if process not in processes or not isinstance(section, dict):
            raise _fail(path, f"directions.{process}", "expected a mapping under a process of 'processes'")
        for key, spec in section.items():
            where = f"directions.{process}.{key}"
            entries.append(Entry("direction", str(key), _terms(path, where, spec), process,
                                 _text(path, where, spec, "prompt", required=True),
                                 _text(path, where, spec, "axis", required=False)))
    entries.append(Entry("other", "other", _terms(path, "other", data.get("other") or {})))
    return entries


def _check_defaults(path: Path, processes: dict[str, Process], entries: list[Entry]) -> None:
    """Every default a trained process or an operation names is an entry of the glossary."""
    def check(where: str, kind: str, key: str, process: str) -> None:
        known = {e.key for e in entries if e.kind == kind and e.process in (None, process)}
        if key not in known:
            raise _fail(path, where, f"{key!r} is not a {kind} of {process} in the glossary "
                        f"(known: {', '.join(sorted(known))})")

    for process in processes.values():
        for kind, key in process.defaults.items():
            check(f"processes.{process.name}.defaults.{kind}", kind, key, process.name)
    for entry in entries:
        if entry.kind == "operation" and entry.direction is not None:
            check(f"operations.{entry.key}.direction", "direction", entry.direction, str(entry.process))


def _phrases(path: Path, entries: list[Entry], known: frozenset[str], user_words: tuple[str, ...]
             ) -> dict[tuple[str, ...], tuple[Entry, ...]]:
    """Each term in dictionary form -> its entries; a term may mean one thing only (bar
    :data:`PER_PROCESS_KINDS` of different processes)."""
    phrases: dict[tuple[str, ...], tuple[Entry, ...]] = {}
    for entry in entries:
        for term in entry.terms:
            phrase = tuple(w.form for w in words_of(term, known, user_words))
            if not phrase:
                raise _fail(path, f"{entry.kind} {entry.key!r}", f"term {term!r} has no word left after "
                            "particles and signs are removed")
            meanings = phrases.get(phrase, ())
            for other in meanings:
                if other != entry and not (other.kind == entry.kind in PER_PROCESS_KINDS
                                           and other.process != entry.process):
                    raise _fail(path, f"{entry.kind} {entry.key!r}", f"term {term!r} also means {other.kind} "
                                f"{other.key!r}; give each term one meaning")
            if entry not in meanings:
                phrases[phrase] = (*meanings, entry)
    return phrases


def load_glossary(path: str | Path = DEFAULT_GLOSSARY) -> Glossary:
    """Read and check a glossary file; :class:`GlossaryError` names the file and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise GlossaryError(f"glossary not found: {path} (run in the project folder or give --glossary PATH)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise GlossaryError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise GlossaryError(f"{path}: expected a mapping with 'processes', 'operations', ... at the top")
    processes = _processes(path, data.get("processes"))
    entries = _entries(path, data, processes)
    _check_defaults(path, processes, entries)
    terms = [term for entry in entries for term in entry.terms]
    user_words = korean_user_words(terms)
    known = frozenset(w.form for term in terms if not HANGUL.search(term) for w in words_of(term))
    phrases = _phrases(path, entries, known, user_words)
    return Glossary(path, processes, tuple(entries), phrases, known, user_words)
