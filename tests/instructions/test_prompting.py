"""Work instructions to prompts: realistic Korean, English and mixed instructions, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from machining_t2v.data.synthetic_videos.vocabulary import MILLING_JOBS, TURNING_JOBS, make_caption
from machining_t2v.instructions.glossary import load_glossary
from machining_t2v.instructions.prompting import (
    MAX_INSTRUCTION_CHARS,
    InstructionError,
    instruction_to_prompt,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GLOSSARY = PROJECT_ROOT / "conf" / "base" / "glossary.yml"


@pytest.fixture(scope="module")
def glossary():
    return load_glossary(GLOSSARY)


# Realistic work instructions and what each must become (an empty cell: the instruction says nothing).
with (Path(__file__).parent / "instructions.csv").open(newline="", encoding="utf-8") as file:
    INSTRUCTIONS = [tuple(value or None for value in row.values()) for row in csv.DictReader(file)]


@pytest.mark.parametrize("text, process, operation, material, direction", INSTRUCTIONS,
                         ids=[row[0] for row in INSTRUCTIONS])
def test_instruction_maps_to_the_captions_words(glossary, text, process, operation, material, direction):
    result = instruction_to_prompt(text, glossary, "mtv")
    assert (result.process, result.operation, result.material, result.direction) == (
        process, operation, material, direction), result
    assert result.known_process and result.message is None
    assert result.prompt.startswith("mtv ") and result.unknown == []


def test_there_are_at_least_forty_instructions_in_both_languages():
    korean = [row for row in INSTRUCTIONS if any("\uac00" <= c <= "\ud7a3" for c in row[0])]
    assert len(INSTRUCTIONS) >= 40 and len(korean) >= 20 and len(INSTRUCTIONS) - len(korean) >= 15


def test_the_example_instruction_gives_the_sample_videos_caption(glossary):
    result = instruction_to_prompt("엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공", glossary, "mtv")
    assert result.prompt == "mtv " + make_caption("milling", "slot milling along X", "aluminium", "x")
    assert result.defaults == {}


@pytest.mark.parametrize("process, operation, direction",
                         [("milling", *job) for job in MILLING_JOBS] + [("turning", *job) for job in TURNING_JOBS])
def test_every_sample_job_is_said_as_its_caption_says_it(glossary, process, operation, direction):
    """Prompts are in the training captions' words: the glossary's caption forms rebuild every
    sample video's caption, whatever the instruction said about it."""
    op_key = next(e.key for e in glossary.entries if e.kind == "operation" and e.process == process
                  and e.prompt.format(axis=glossary.entry("direction", direction, process).axis or "").strip()
                  == operation)
    words = {"x": "X축", "-x": "-X 방향", "y": "Y축", "-y": "-Y 방향", "diagonal": "대각선",
             "-diagonal": "오른쪽 아래에서 왼쪽 위", "left": "척 쪽", "right": "척 반대쪽", "inward": "중심 쪽"}
    op_term = glossary.entry("operation", op_key, process).terms[0]
    text = f"{glossary.entry('process', process).terms[0]} {op_term} brass {words[direction]}"
    result = instruction_to_prompt(text, glossary, "mtv")
    assert result.prompt == "mtv " + make_caption(process, operation, "brass", direction), text


def test_unsaid_parts_come_from_the_process_defaults(glossary):
    result = instruction_to_prompt("mill the pocket", glossary, "ohwx")
    assert result.defaults == {"direction": "x", "material": "aluminium"}
    assert result.prompt == ("ohwx pocket milling along X on a milling machine, aluminium workpiece, "
                             "spinning end mill travelling from left to right")
    facing = instruction_to_prompt("면삭", glossary, "")
    assert facing.defaults == {"direction": "inward", "material": "steel"}
    assert facing.prompt == make_caption("turning", "face the bar", "steel", "inward")


def test_seen_evaluation_prompts_are_what_their_instructions_become(glossary):
    prompts = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_evaluation.yml").read_text())
    seen = {p["id"]: p["text"] for p in prompts["evaluation"]["prompts"] if p["split"] == "seen"}
    assert instruction_to_prompt("알루미늄을 X축 방향으로 슬롯 밀링", glossary, "mtv").prompt == seen["mill_x_aluminium"]
    assert instruction_to_prompt("황동 봉을 척 쪽으로 선삭", glossary, "mtv").prompt == seen["turn_brass"]


# ---------------------------------------------------------------------------------- bad input


def test_an_empty_instruction_is_refused(glossary):
    for text in ("", "   \n\t", None):
        with pytest.raises(InstructionError, match="the instruction is empty"):
            instruction_to_prompt(text, glossary, "mtv")


def test_only_unknown_words_give_no_prompt_and_name_them(glossary):
    result = instruction_to_prompt("hello 안녕하세요 world", glossary, "mtv")
    assert result.prompt is None and not result.known_process
    assert result.unknown == ["hello", "안녕하세요", "world"]
    assert "no machining term" in result.message and str(GLOSSARY.name) in result.message


def test_a_two_thousand_character_instruction_is_refused(glossary):
    text = ("엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공 " * 80)[:2000]
    assert len(text) == 2000
    with pytest.raises(InstructionError, match=f"2000 characters long.*at most {MAX_INSTRUCTION_CHARS}"):
        instruction_to_prompt(text, glossary, "mtv")


def test_mixed_korean_and_english_reads_both(glossary):
    result = instruction_to_prompt("선반에서 steel bar를 face 가공, inwards", glossary, "mtv")
    assert (result.process, result.operation, result.material, result.direction) == (
        "turning", "face the bar", "steel", "inward")
    assert result.prompt == "mtv " + make_caption("turning", "face the bar", "steel", "inward")


@pytest.mark.parametrize("text, process", [
    ("드릴로 구멍을 뚫는다", "drilling"),
    ("drill a hole in the aluminium block", "drilling"),
    ("연삭기로 강철 표면 연삭", "grinding"),
    ("선반에서 나사 가공", "tapping"),
    ("밀링머신에서 드릴로 구멍 가공", "drilling"),
])
def test_a_process_no_lora_learned_is_reported_never_mapped(glossary, text, process):
    result = instruction_to_prompt(text, glossary, "mtv")
    assert result.process == process and not result.known_process and result.prompt is None
    assert f"{process} is a process no LoRA has learned (trained: milling, turning)" in result.message


def test_unknown_words_beside_known_ones_are_listed(glossary):
    result = instruction_to_prompt("slot the aluminium block with a shiny flux capacitor", glossary, "mtv")
    assert result.unknown == ["shiny", "flux", "capacitor"]
    assert result.prompt.startswith("mtv slot milling")


def test_two_processes_in_one_instruction_give_no_prompt(glossary):
    result = instruction_to_prompt("mill the slot, then turn it on the lathe", glossary, "mtv")
    assert result.prompt is None and "more than one process" in result.message
