"""``machining-t2v prompt`` through a real subprocess: the JSON line, the trigger, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("machining-t2v")


def _run(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    return subprocess.run([str(SCRIPT), "prompt", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_json_on_the_last_line_holds_the_prompt_and_its_parts():
    result = _run("엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer == {
        "prompt": "mtv slot milling along X on a milling machine, aluminium workpiece, spinning end mill "
                  "travelling from left to right",
        "process": "milling", "operation": "slot milling", "material": "aluminium", "direction": "x",
        "unknown": [], "known_process": True, "message": None, "defaults": {},
    }


def test_the_plain_answer_is_the_prompt_with_the_environments_trigger():
    result = _run("face the steel bar on the lathe", "--env", "sd15")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("ohwx face the bar on a lathe, steel bar spinning in the chuck, fixed turning "
                                     "tool feeding inwards towards the centre of the bar")
    assert _run("face the steel bar", "--trigger", "sks").stdout.startswith("sks face the bar")


def test_outside_a_project_the_glossary_is_asked_for(tmp_path):
    result = _run("mill the pocket", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("machining-t2v: error: glossary not found: conf/base/glossary.yml "
                                     "(run in the project folder or give --glossary PATH)")
    glossary = PROJECT_ROOT / "conf" / "base" / "glossary.yml"
    result = _run("mill the pocket", "--glossary", str(glossary), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("mtv pocket milling"), result.stderr


@pytest.mark.parametrize("instruction, message", [
    ("  ", "machining-t2v: error: the instruction is empty"),
    ("x" * 2000, "machining-t2v: error: the instruction is 2000 characters long"),
    ("hello 안녕하세요", "machining-t2v: error: no machining term of the glossary"),
    ("드릴로 구멍을 뚫는다", "machining-t2v: error: drilling is a process no LoRA has learned"),
])
def test_bad_instructions_fail_with_one_clear_line_and_status_2(instruction, message):
    result = _run(instruction)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_untrained_process_still_answers_json_for_the_caller():
    result = _run("drill a hole in the brass block", "--json")
    assert result.returncode == 2
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["process"] == "drilling" and answer["known_process"] is False and answer["prompt"] is None
    assert answer["material"] == "brass"


def test_mixed_korean_and_english_notes_the_words_left_out():
    result = _run("알루미늄 block을 X-axis로 slot milling, 반짝반짝", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert (answer["process"], answer["material"], answer["direction"]) == ("milling", "aluminium", "x")
    assert answer["unknown"] == ["반짝반짝"]
    assert "machining-t2v: note: not in the glossary, left out: 반짝반짝" in result.stderr


def test_the_prompt_command_answers_without_the_deep_learning_stack():
    code = ("import sys\nfrom machining_t2v import cli\nassert cli.main(['prompt', 'mill the slot']) == 0\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'gradio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
