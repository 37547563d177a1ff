"""Loading the machining glossary: the project's file loads, and a broken edit names file and entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from machining_t2v.data.synthetic_videos.vocabulary import (
    DIRECTION_WORDS,
    MATERIAL_COLOURS,
    PROCESSES,
)
from machining_t2v.instructions.glossary import GlossaryError, load_glossary
from machining_t2v.instructions.prompting import instruction_to_prompt

GLOSSARY = Path(__file__).resolve().parents[2] / "conf" / "base" / "glossary.yml"

MINIMAL = """
processes:
  milling:
    trained: true
    prompt: "{operation} on a milling machine, {material} workpiece, spinning end mill travelling {direction}"
    defaults: {operation: slot milling, material: steel, direction: x}
    en: [mill]
operations:
  slot milling: {process: milling, prompt: "slot milling {axis}", en: [slot], ko: [슬롯]}
materials:
  steel: {en: [steel], ko: [강철]}
directions:
  milling:
    x: {prompt: "from left to right", axis: "along X", en: ["x axis"]}
other: {en: [the]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "glossary.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_project_glossary_covers_the_sample_videos_vocabulary():
    glossary = load_glossary(GLOSSARY)
    assert glossary.trained_processes == list(PROCESSES)
    keys = {kind: {e.key for e in glossary.entries if e.kind == kind} for kind in ("material", "direction")}
    assert set(MATERIAL_COLOURS) <= keys["material"]
    assert set(DIRECTION_WORDS) <= keys["direction"]
    for entry in glossary.entries:
        if entry.kind == "direction" and entry.key in DIRECTION_WORDS:
            assert entry.prompt == DIRECTION_WORDS[entry.key], entry
    assert {"drilling", "grinding"} <= set(glossary.processes) - set(glossary.trained_processes)


def test_a_shop_extends_the_glossary_with_its_own_word(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("ko: [슬롯]", "ko: [슬롯, 장홈]"))
    result = instruction_to_prompt("강철에 장홈을 가공", load_glossary(path), "mtv")
    assert result.operation == "slot milling" and result.unknown == ["가공"]
    assert result.prompt == "mtv slot milling along X on a milling machine, steel workpiece, spinning end mill " \
        "travelling from left to right"


@pytest.mark.parametrize("edit, where", [
    (("trained: true", "trained: yes please"), "processes.milling"),
    (("en: [steel]", "en: steel"), "materials.steel.en"),
    (("en: [the]", "en: [on]"), "other.en"),
    (("process: milling, prompt", "process: boring, prompt"), "operations.slot milling.process"),
    (("material: steel", "material: unobtainium"), "processes.milling.defaults.material"),
    (("{material} workpiece", "workpiece"), "processes.milling"),
    (('x: {prompt: "from left to right", ', "x: {"), "directions.milling.x.prompt"),
])
def test_a_bad_entry_is_named_with_the_file(tmp_path, edit, where):
    path = _write(tmp_path, MINIMAL.replace(*edit))
    with pytest.raises(GlossaryError) as error:
        load_glossary(path)
    assert str(error.value).startswith(f"{path}: {where}:"), error.value


def test_a_term_with_two_meanings_is_refused(tmp_path):
    path = _write(tmp_path, MINIMAL.replace("ko: [강철]", "ko: [강철, 슬롯]"))
    with pytest.raises(GlossaryError, match=f"{path}: material 'steel': term '슬롯' also means operation"):
        load_glossary(path)


def test_a_missing_or_broken_file_says_which(tmp_path):
    with pytest.raises(GlossaryError, match=f"glossary not found: {tmp_path / 'none.yml'}"):
        load_glossary(tmp_path / "none.yml")
    with pytest.raises(GlossaryError, match="not valid YAML"):
        load_glossary(_write(tmp_path, "processes: [unclosed"))
