"""The ``machining-t2v`` console script: a real subprocess run with LoRAs from outside any project,
and every bad input with its message (in-process, through ``main(argv)``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from machining_t2v import cli
from machining_t2v.data.video_io import probe_video, read_frames
from machining_t2v.generation import generator
from tests.conftest import PROJECT_ROOT
from tests.generation.conftest import make_loras

SCRIPT = Path(sys.executable).with_name("machining-t2v")


@pytest.fixture(scope="module")
def outside_loras(tiny_dir, tmp_path_factory):
    """LoRA folders somewhere no project is, as a user would download them."""
    return make_loras(tiny_dir, tmp_path_factory.mktemp("downloads"))


@pytest.fixture(autouse=True)
def one_cpu_thread():
    with generator.cpu_threads(1):
        yield


def run_main(args: list[str], tiny_dir: Path) -> int:
    # --base named: in the project folder the default would be the committed starter model.
    return cli.main(["generate", "--base", "builtin:tiny", "--tiny-model-dir", str(tiny_dir), "--steps", "1",
                     "--frames", "2", *args])


def test_console_script_writes_playable_h264_and_gif(tiny_dir, outside_loras, tmp_path):
    out = tmp_path / "videos" / "clip.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(SCRIPT), "generate", "mtv face the steel bar on the lathe",
         "--image-lora", str(outside_loras["image"]), "--motion-lora", str(outside_loras["motion"] / "pytorch_lora_weights.safetensors"),
         "--scale-image", "0.8", "--scale-motion", "1.0", "--frames", "6", "--steps", "3", "--guidance", "7.5",
         "--seed", "0", "--scheduler", "dpm++", "--negative-prompt", "blurry", "--size", "64",
         "--out", str(out), "--tiny-model-dir", str(tiny_dir), "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Wrote {out}" in result.stdout and "random weights" in result.stdout
    assert "Loaded spatial LoRA" in result.stderr and "Loaded motion LoRA" in result.stderr
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height) == (6, 64, 64)
    assert read_frames(out, list(range(6))).shape == (6, 64, 64, 3)
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.n_frames == 6
    # The mp4 is H.264 (browser-playable), not OpenCV's mp4v.
    ffprobe = subprocess.run([sys.executable, "-c", "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    header = subprocess.run([ffprobe, "-hide_banner", "-i", str(out)], capture_output=True, text=True).stderr
    assert "h264" in header and "yuv420p" in header


def test_console_script_reports_failures_with_status_1(tmp_path):
    result = subprocess.run([str(SCRIPT), "generate", "mtv turning", "--motion-lora", str(tmp_path / "missing")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    assert f"machining-t2v: error: --motion-lora: LoRA not found: {tmp_path / 'missing'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_settings_give_the_same_video_in_process(tiny_dir, outside_loras, tmp_path, monkeypatch):
    for name in ("a", "b"):
        assert run_main(["mtv slot milling", "--image-lora", str(outside_loras["image"]), "--out",
                         str(tmp_path / f"{name}.mp4")], tiny_dir) == 0
    assert read_frames(tmp_path / "a.mp4", [0, 1]).tolist() == read_frames(tmp_path / "b.mp4", [0, 1]).tolist()
    default = tmp_path / "cwd"
    default.mkdir()
    monkeypatch.chdir(default)
    assert run_main(["mtv slot milling"], tiny_dir) == 0  # default --out: <prompt slug>.mp4 here
    assert (default / "mtv_slot_milling.mp4").is_file() and (default / "mtv_slot_milling.gif").is_file()


def test_default_base_is_the_starter_model_in_the_project_folder(tmp_path, monkeypatch, capsys, caplog):
    from machining_t2v_starter.stages import STARTER_MARKER

    assert cli.STARTER_MARKER == STARTER_MARKER  # named twice so that the console script starts without torch
    monkeypatch.chdir(tmp_path)  # no project here
    assert cli.default_base() == "builtin:tiny"
    assert cli.default_motion_adapter("builtin:tiny") == "builtin:tiny"
    assert cli.default_motion_adapter("stable-diffusion-v1-5/stable-diffusion-v1-5") == cli.DEFAULT_REAL_MOTION_ADAPTER
    if not cli.is_starter_folder(PROJECT_ROOT / cli.PROJECT_STARTER_DIR):
        pytest.skip("no starter model committed in models/starter")
    # In the project the LoRAs of data/06_models were trained on the starter, so it is the default,
    # with the motion adapter of its own folder.
    monkeypatch.chdir(PROJECT_ROOT)
    assert cli.default_base() == "models/starter"
    assert cli.default_motion_adapter("models/starter") == str(Path("models/starter/motion_adapter"))
    out = tmp_path / "starter.mp4"
    with caplog.at_level(logging.INFO, logger="machining_t2v"):
        assert cli.main(["generate", "mtv face the bar on a lathe", "--steps", "2", "--out", str(out)]) == 0
    assert "with base models/starter" in caplog.text
    # The starter's own frames and guidance, not SD1.5's 16 and 7.5.
    assert "Generating 8 frames, 2 steps, guidance 4, seed 0" in caplog.text
    assert "random weights" not in capsys.readouterr().out
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height) == (8, 64, 64)  # the starter's native 64 px


def test_bad_inputs_fail_with_clear_messages(tiny_dir, tmp_path, capsys, caplog):
    def fails(args: list[str], message: str) -> None:
        assert run_main(["--out", str(tmp_path / "x.mp4"), *args], tiny_dir) == 1
        error = capsys.readouterr().err
        assert message in error, error

    fails(["   "], "The prompt is empty")
    fails(["mtv turning", "--image-lora", str(tmp_path / "nope.safetensors")],
          f"--image-lora: LoRA not found: {tmp_path / 'nope.safetensors'}")
    fails(["mtv turning", "--frames", "40"], "motion_max_seq_length is 32; ask for at most 32 frames")
    foreign = tmp_path / "sd15_lora.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(4, 320),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(320, 4)},
              foreign)
    fails(["mtv turning", "--image-lora", str(foreign)], f"LoRA {foreign} does not match base model {tiny_dir}")
    unsafe = tmp_path / "lora.pt"
    torch.save({"layer": logging.Formatter()}, unsafe)  # unpickling it needs a class: weights_only refuses
    fails(["mtv turning", "--motion-lora", str(unsafe)], f"Refusing LoRA {unsafe}")
    fails(["mtv turning", "--out", str(tmp_path / "clip.avi")], "must end in .mp4")
    assert not list(tmp_path.glob("x.*"))

    # A prompt longer than the tokenizer's 77 tokens is generated truncated, with a warning.
    with caplog.at_level(logging.WARNING, logger="machining_t2v.generation.video"):
        assert run_main(["mtv " + "turn the bar slowly " * 30, "--out", str(tmp_path / "long.mp4")], tiny_dir) == 0
    assert any("it is truncated" in record.getMessage() for record in caplog.records)
    assert probe_video(tmp_path / "long.mp4").num_frames == 2


def test_command_line_errors_exit_2_without_loading_models(capsys):
    for args in (["generate", "x", "--frames", "0"], ["generate", "x", "--scheduler", "plms"],
                 ["generate", "x", "--scale-image", "-1"], ["generate"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        assert exit_info.value.code == 2
    assert "--frames: must be at least 1" in capsys.readouterr().err


def test_kedro_finds_its_project_command_group():
    # kedro imports <package>.cli and refuses to start without a click group named `cli` in it.
    assert isinstance(cli.cli, click.Group) and not cli.cli.commands
    assert shutil.which("machining-t2v", path=str(SCRIPT.parent)) == str(SCRIPT)


def test_generate_warns_about_prompt_words_the_tokenizer_does_not_know(tiny_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        assert run_main(["mtv 엔드밀로 slot milling, 알루미늄 workpiece", "--out", str(tmp_path / "ko.mp4")],
                        tiny_dir) == 0
    warnings = [r.getMessage() for r in caplog.records if "tokenizer does not know" in r.getMessage()]
    assert len(warnings) == 1 and "엔드밀로, 알루미늄" in warnings[0]
    assert "machining-t2v prompt" in warnings[0]  # the way out: the instruction command


def test_generate_uses_a_textual_inversion_embedding_folder_or_file(tiny_dir, tmp_path, capsys, caplog):
    import json

    from machining_t2v.kedro_glue.datasets import EmbeddingDataset, TrainedEmbedding

    width = json.loads((tiny_dir / "text_encoder" / "config.json").read_text())["hidden_size"]
    folder = tmp_path / "image_embedding"
    EmbeddingDataset(str(folder)).save(TrainedEmbedding(
        token="<mtv>", vector=3 * torch.randn(width, generator=torch.Generator().manual_seed(1)), replaces="mtv"))

    def frames(name: str, *args: str) -> list:
        assert run_main([*args, "--out", str(tmp_path / f"{name}.mp4")], tiny_dir) == 0
        return read_frames(tmp_path / f"{name}.mp4", [0, 1]).tolist()

    with caplog.at_level(logging.INFO, logger="machining_t2v.cli"):
        with_folder = frames("folder", "mtv turning on a lathe", "--embedding", str(folder))
    assert "Prompt with the embedding's token: <mtv> turning on a lathe" in caplog.text  # the trigger replaced
    # The file alone has no trigger word to replace: its token goes in front.
    assert frames("file", "turning on a lathe", "--embedding", str(folder / "learned_embeds.safetensors")) == with_folder
    assert frames("plain", "mtv turning on a lathe") != with_folder

    capsys.readouterr()
    assert run_main(["mtv turning", "--embedding", str(tmp_path)], tiny_dir) == 1
    assert f"{tmp_path} holds no textual-inversion embedding (embedding_info.json is missing)" in capsys.readouterr().err
    a1111 = next(p for p in folder.glob("*.safetensors") if p.name != "learned_embeds.safetensors")
    assert run_main(["mtv turning", "--embedding", str(a1111)], tiny_dir) == 1
    assert "expected one token's vector in the diffusers layout ({token: vector}), found ['emb_params']" in \
        capsys.readouterr().err
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file" * 10)
    assert run_main(["mtv turning", "--embedding", str(garbage)], tiny_dir) == 1
    assert f"textual-inversion embedding {garbage} is not a .safetensors file" in capsys.readouterr().err
