"""A work instruction becomes the prompt the model gets: :func:`instruction_to_prompt`.

The instruction's words are matched against the glossary (longest phrase first); the process
comes from a process word, else a tool or machine part, else the operation or direction, else the
workpiece (a bar is turned, a block milled). A process
no LoRA has learned is reported as such and gets no prompt: it is never mapped to another one.
What the instruction leaves unsaid (material, direction ...) comes from the process's defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from machining_t2v.instructions.glossary import PER_PROCESS_KINDS, Entry, Glossary, Process
from machining_t2v.instructions.morphology import Word, words_of

#: Longest instruction read: one work step. CLIP reads 77 tokens, so a page of text could not
#: reach the model anyway.
MAX_INSTRUCTION_CHARS = 500

#: One matched term: the glossary entries it means (several only for per-process kinds).
Match = tuple[Entry, ...]


class InstructionError(ValueError):
    """The instruction cannot be read at all (empty, or longer than one work step)."""


@dataclass(frozen=True)
class InstructionPrompt:
    """What an instruction says and the prompt made from it.

    ``process``, ``operation``, ``material`` and ``direction`` are what the instruction says, in
    the captions' words (None where it says nothing); ``defaults`` what the prompt filled in for
    the rest. ``prompt`` is None when no prompt could be made, and ``message`` then says why.
    ``known_process`` is False for a process no LoRA has learned (or none found).
    """

    prompt: str | None
    process: str | None
    operation: str | None
    material: str | None
    direction: str | None
    unknown: list[str]
    known_process: bool
    message: str | None = None
    defaults: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def _match(words: list[Word], phrases: dict[tuple[str, ...], Match]) -> tuple[list[Match], list[str]]:
    """Glossary matches, longest phrase first, and the words no phrase covers (as written)."""
    longest = max(len(phrase) for phrase in phrases)
    forms = [w.form for w in words]
    matches: list[Match] = []
    unknown: list[str] = []
    i = 0
    while i < len(words):
        for length in range(min(longest, len(words) - i), 0, -1):
            entries = phrases.get(tuple(forms[i : i + length]))
            if entries:
                matches.append(entries)
                i += length
                break
        else:
            unknown.append(words[i].surface)
            i += 1
    return matches, list(dict.fromkeys(unknown))


def _named_processes(matches: list[Match]) -> list[set[str]]:
    """Processes the instruction names, strongest evidence first: process words; tools and machine
    parts; operations and directions (only where the term belongs to one process); workpieces."""
    levels: list[set[str]] = [set(), set(), set(), set()]
    for match in matches:
        for entry in match:
            if entry.process is None:
                continue
            if entry.kind == "process":
                levels[0].add(entry.process)
            elif entry.kind in ("tool", "machine_part"):
                levels[1].add(entry.process)
            elif entry.kind == "workpiece":
                levels[3].add(entry.process)
        if all(e.kind in PER_PROCESS_KINDS for e in match) and len({e.process for e in match}) == 1:
            levels[2].add(str(match[0].process))
    return levels


def _first(matches: list[Match], kind: str, process: str | None = None) -> Entry | None:
    for match in matches:
        for entry in match:
            if entry.kind == kind and (process is None or entry.process == process):
                return entry
    return None


def _check_text(text: str | None) -> str:
    text = " ".join((text or "").split())
    if not text:
        raise InstructionError("the instruction is empty: say what to machine, e.g. "
                               "'엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공' or 'face the steel bar on the lathe'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(f"the instruction is {len(text)} characters long; give one work step of at most "
                               f"{MAX_INSTRUCTION_CHARS} characters (the model reads 77 tokens)")
    return text


def _choose_process(glossary: Glossary, matches: list[Match]) -> tuple[str | None, str | None]:
    """(process, message): the process the instruction is about, or None and why not."""
    levels = _named_processes(matches)
    named = set().union(*levels)
    untrained = [name for name in glossary.processes if name in named and not glossary.processes[name].trained]
    trained = ", ".join(glossary.trained_processes)
    if untrained:
        return untrained[0], (f"{untrained[0]} is a process no LoRA has learned (trained: {trained}); "
                              "no prompt is made for it")
    for level in levels:
        if len(level) == 1:
            return next(iter(level)), None
        if len(level) > 1:
            return None, (f"the instruction names more than one process ({', '.join(sorted(level))}); "
                          "give one work step at a time")
    return None, f"could not tell the process: name it ({trained}) or the machine or tool"


def _caption(process: Process, operation: Entry, direction: Entry, material: str) -> str:
    """The process's caption form filled in: "slot milling along X on a milling machine, ..."."""
    return str(process.prompt).format(operation=str(operation.prompt).format(axis=direction.axis or "").strip(),
                                      material=material, direction=direction.prompt)


def instruction_to_prompt(text: str | None, glossary: Glossary, trigger: str | None) -> InstructionPrompt:
    """The prompt for a work instruction (Korean, English or both) in the training captions' words,
    with ``trigger`` in front. Raises :class:`InstructionError` for an empty or over-long text."""
    text = _check_text(text)
    matches, unknown = _match(words_of(text, glossary.known_words, glossary.user_words), glossary.phrases)
    if not [match for match in matches if any(e.kind != "other" for e in match)]:
        return InstructionPrompt(None, None, None, None, None, unknown, False,
                                 f"no machining term of the glossary ({glossary.path}) in the instruction; "
                                 "add the shop's words there")
    material = _first(matches, "material")
    name, message = _choose_process(glossary, matches)
    if name is None or message is not None:
        return InstructionPrompt(None, name, None, material and material.key, None, unknown, False, message)
    process = glossary.processes[name]
    operation = _first(matches, "operation", name)
    direction = _first(matches, "direction", name)
    defaults: dict[str, str] = {}
    if operation is None:
        defaults["operation"] = process.defaults["operation"]
    used_operation = operation or glossary.entry("operation", defaults["operation"], name)
    if direction is None:  # an operation's own default first: facing feeds inwards
        defaults["direction"] = used_operation.direction or process.defaults["direction"]
    used_direction = direction or glossary.entry("direction", defaults["direction"], name)
    if material is None:
        defaults["material"] = process.defaults["material"]
    caption = _caption(process, used_operation, used_direction, material.key if material else defaults["material"])
    prompt = " ".join(f"{trigger or ''} {caption}".split())
    return InstructionPrompt(prompt, name, operation and operation.key, material and material.key,
                             direction and direction.key, unknown, True, None, defaults)
