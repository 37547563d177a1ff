"""The page's real server: Gradio on 127.0.0.1 answering `/`, every bad input answered through its API
(gradio_client) while it keeps serving, and ``machining-t2v serve`` started as a user starts it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from machining_t2v.webapp.app import TITLE, launch
from machining_t2v.webapp.studio import Studio
from tests.webapp.conftest import (
    FAST_STEPS,
    GLOSSARY,
    KOREAN_SLOT,
    SLOT_PROMPT,
    copy_loras,
    free_port,
    settings_for,
)

SCRIPT = Path(sys.executable).with_name("machining-t2v")


@pytest.fixture(scope="module")
def served(tiny_dir, trained_loras, tmp_path_factory):
    """The page on a free port with two trained LoRAs; yields (app, client, LoRA folders)."""
    root = tmp_path_factory.mktemp("served")
    loras = copy_loras(trained_loras, root / "06_models")
    app = launch(Studio(settings_for(tiny_dir, root)), port=free_port())
    try:
        yield app, Client(app.local_url, verbose=False), loras
    finally:
        app.close()


def page_title(url: str) -> str:
    with urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=30) as response:
        return json.loads(response.read())["title"]


def generate(client: Client, instruction: str, **fields) -> tuple:
    values = {"prompt": "", "image_lora": "", "motion_lora": "", "steps": FAST_STEPS, **fields}
    return client.predict(instruction=instruction, **values, api_name="/generate")


def test_the_page_answers_on_localhost_only(served):
    app, _, _ = served
    assert app.local_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(app.local_url, timeout=30) as response:
        assert response.status == 200 and "<!doctype html>" in response.read().decode()
    assert page_title(app.local_url) == TITLE  # the title the page's script sets


@pytest.mark.parametrize("instruction, message", [
    ("", "**No prompt:** the instruction is empty"),
    ("반짝반짝 hello", "**No prompt:** no machining term of the glossary"),
    ("x" * 2000, "**No prompt:** the instruction is 2000 characters long"),
    ("드릴로 구멍을 뚫는다", "**No prompt:** drilling is a process no LoRA has learned"),
])
def test_bad_instructions_get_their_message_through_the_server(served, instruction, message):
    _, client, _ = served
    assert client.predict(instruction, api_name="/make_prompt")[0].startswith(message)
    status, prompt, video, *_ = generate(client, instruction)
    assert status.startswith(message) and video is None


def test_a_mixed_instruction_makes_a_clip_with_the_trained_loras(served):
    _, client, loras = served
    status, prompt, video, download, table, files, *_ = generate(
        client, "엔드밀 slot milling 알루미늄 블록 X축", image_lora=str(loras["image"]), motion_lora=str(loras["motion"]))
    assert prompt == SLOT_PROMPT and status.startswith("**Done:** 4 frames")
    assert Path(video).suffix == ".mp4" and Path(video).stat().st_size > 0 and Path(download).name == Path(video).name
    assert table["data"][0][2] == SLOT_PROMPT and len(files) == 1


def test_a_lora_deleted_while_the_page_is_open_is_reported_and_the_server_keeps_serving(served, trained_loras):
    _, client, loras = served
    spare = Path(shutil.copytree(loras["image"], loras["image"].parent / "spare_lora"))
    client.predict(api_name="/refresh_loras")  # the page lists it
    assert generate(client, KOREAN_SLOT, image_lora=str(spare))[0].startswith("**Done:**")
    shutil.rmtree(spare)
    status, _, video, _, _, _, image_list, _, lora_note = generate(client, KOREAN_SLOT, image_lora=str(spare))
    assert video is None and status.startswith(f"**No clip:** the image LoRA {spare} is gone")
    assert [path for _, path in image_list["choices"]] == ["", str(loras["image"])]  # the refreshed list
    assert lora_note == ""  # LoRAs are still there: nothing to say about them
    status, _, video, *_ = generate(client, KOREAN_SLOT)
    assert status.startswith("**Done:**") and Path(video).is_file()


def test_with_no_lora_trained_the_page_says_so_and_generates_with_the_base_model(tiny_dir, tmp_path):
    app = launch(Studio(settings_for(tiny_dir, tmp_path)), port=free_port())
    try:
        client = Client(app.local_url, verbose=False)
        image, motion, note = client.predict(api_name="/refresh_loras")
        assert image["choices"] == motion["choices"] == [["none (base model alone)", ""]]
        assert image["value"] == motion["value"] == ""
        assert note.startswith("No LoRA is trained yet: the clips come from the base model alone. `make run` trains")
        status, _, video, *_ = generate(client, KOREAN_SLOT)
        assert "image LoRA none, motion LoRA none" in status and Path(video).is_file()
    finally:
        app.close()


def test_the_console_script_serves_the_page_until_interrupted(tiny_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    process = subprocess.Popen(
        [str(SCRIPT), "serve", "--port", str(port), "--base", "builtin:tiny", "--tiny-model-dir", str(tiny_dir),
         "--glossary", str(GLOSSARY), "--trigger", "mtv"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watchdog = threading.Timer(120, process.kill)  # a server that never comes up fails the test, not CI
    watchdog.start()
    try:
        lines = []
        while not any(line.startswith("The page is on") for line in lines) and process.poll() is None:
            lines.append(process.stdout.readline())
        assert lines[-1].startswith(f"The page is on http://127.0.0.1:{port}/ (base model builtin:tiny"), lines
        assert page_title(f"http://127.0.0.1:{port}/") == TITLE
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
        watchdog.cancel()
    assert process.returncode == 0, output  # Ctrl+C closes the server and ends the command normally
    assert "share=True" not in output  # no hint at public links


def test_serve_outside_a_project_asks_for_the_glossary(tmp_path):
    result = subprocess.run([str(SCRIPT), "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("machining-t2v: error: glossary not found: conf/base/glossary.yml "
                                     "(run in the project folder or give --glossary PATH)")


def test_a_taken_port_is_a_clear_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([str(SCRIPT), "serve", "--port", str(port), "--glossary", str(GLOSSARY)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"machining-t2v: error: cannot listen on 127.0.0.1:{port} (Address already in "
                                     "use): another program may be using the port; choose another with --port")
