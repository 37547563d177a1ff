"""Generation with LoRAs through diffusers' loaders, on the real tiny model: layouts, scales, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from machining_t2v.data.video_io import probe_video, read_frames
from machining_t2v.fixtures.tiny_model import build_tiny_model
from machining_t2v.generation import generator as generation
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
    save_diffusers_lora,
    to_animatediff_motion_lora,
    to_kohya,
)
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

FAST = {"num_frames": 4, "num_inference_steps": 2, "guidance_scale": 4.0, "size": 64}


def make_loras(tiny_dir, out_dir):
    """An image and a motion LoRA for the tiny model with random (non-zero) weights, alpha != rank,
    saved in the diffusers layout exactly as the training pipelines save them."""
    base = load_base_model("builtin:tiny", tiny_dir)
    unet = build_motion_unet(base.unet, load_motion_adapter("builtin:tiny", tiny_dir))
    generator = torch.Generator().manual_seed(0)
    folders = {}
    for kind, targets, alpha in (("image", IMAGE_LORA_TARGETS, 8.0), ("motion", MOTION_LORA_TARGETS, 2.0)):
        config = add_lora(unet, rank=4, alpha=alpha, target_modules=targets, adapter_name=kind)
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if "lora_B" in name and f".{kind}." in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        folders[kind] = out_dir / f"{kind}_lora"
        save_diffusers_lora(lora_state_dict(unet, kind), config, folders[kind], kind=kind)
    return folders


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """The tiny model runs several times faster on one thread on small CPUs (restored afterwards)."""
    with generation.cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def loras(tiny_dir, tmp_path_factory):
    return make_loras(tiny_dir, tmp_path_factory.mktemp("loras"))


@pytest.fixture
def generator(tiny_dir):
    return generation.load_generator(tiny_model_dir=tiny_dir)


def render(generator_, prompt="mtv slot milling on a milling machine", **overrides):
    return generation.generate_video(generator_, prompt, **{**FAST, "seed": 0, **overrides})


def test_same_seed_same_clip_and_scales_switch_loras(generator, loras):
    base = render(generator)
    assert base.shape == (4, 64, 64, 3) and base.dtype == np.uint8
    assert np.array_equal(render(generator), base)
    assert not np.array_equal(render(generator, seed=1), base)

    image = generation.load_lora(generator, loras["image"], "image")
    motion = generation.load_lora(generator, loras["motion"], "motion")
    assert (image.layout, image.targets, motion.targets) == ("diffusers", "spatial", "motion")
    outputs = {}
    for name, scales in {"image": {"image": 1.0}, "motion": {"motion": 1.0},
                         "both": {"image": 1.0, "motion": 1.0}, "half": {"image": 0.5}}.items():
        generation.set_lora_scales(generator, scales)
        outputs[name] = render(generator)
    clips = [base, *outputs.values()]
    assert all(not np.array_equal(a, b) for i, a in enumerate(clips) for b in clips[i + 1 :])
    generation.set_lora_scales(generator, {})  # every LoRA off again: the base clip, bit for bit
    assert np.array_equal(render(generator), base)
    with pytest.raises(ValueError, match="no LoRA loaded as 'nope'"):
        generation.set_lora_scales(generator, {"nope": 1.0})


def test_kohya_and_animatediff_layouts_load_like_the_diffusers_files(generator, loras, tmp_path):
    image_sd = {k.removeprefix("unet."): v for k, v in load_file(loras["image"] / "pytorch_lora_weights.safetensors").items()}
    motion_sd = {k.removeprefix("unet."): v for k, v in load_file(loras["motion"] / "pytorch_lora_weights.safetensors").items()}
    # alpha != rank in both: the kohya file carries alpha, the MotionLoRA layout folds it into "up".
    save_file(to_kohya(image_sd, alpha=8.0), tmp_path / "kohya.safetensors")
    save_file(to_animatediff_motion_lora(motion_sd, alpha=2.0), tmp_path / "mm_lora.safetensors")

    loaded = {name: generation.load_lora(generator, path, name).layout for name, path in {
        "image": loras["image"], "kohya": tmp_path / "kohya.safetensors",
        "motion": loras["motion"], "original": tmp_path / "mm_lora.safetensors"}.items()}
    assert loaded == {"image": "diffusers", "kohya": "kohya", "motion": "diffusers", "original": "animatediff-motionlora"}
    clips = {}
    for name in loaded:
        generation.set_lora_scales(generator, {name: 1.0})
        clips[name] = render(generator).astype(int)
    assert np.abs(clips["kohya"] - clips["image"]).max() <= 1
    assert np.abs(clips["original"] - clips["motion"]).max() <= 1


def test_pickled_lora_loads_only_through_weights_only(generator, loras, tmp_path):
    weights = load_file(loras["motion"] / "pytorch_lora_weights.safetensors")
    torch.save(weights, tmp_path / "motion.bin")
    assert generation.load_lora(generator, tmp_path / "motion.bin", "motion").targets == "motion"

    torch.save({"weights": weights, "config": logging.Formatter()}, tmp_path / "unsafe.pt")  # needs full unpickling
    with pytest.raises(ValueError, match=r"Refusing LoRA .*unsafe\.pt.*weights_only=True"):
        generation.load_lora(generator, tmp_path / "unsafe.pt", "unsafe")
    (tmp_path / "lora.txt").write_text("not weights")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        generation.load_lora(generator, tmp_path / "lora.txt", "text")
    assert set(generator.loras) == {"motion"}


def test_lora_for_another_base_is_refused_naming_lora_and_base(generator, tmp_path):
    sd15_like = {  # an SD1.5 LoRA: 320-wide first block, a third down block the tiny UNet lacks
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": torch.zeros(4, 320),
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": torch.zeros(320, 4),
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight": torch.zeros(4, 640),
        "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_k.lora.up.weight": torch.zeros(640, 4),
    }
    path = tmp_path / "sd15_lora.safetensors"
    save_file(sd15_like, path)
    with pytest.raises(generation.LoraMismatchError) as error:
        generation.load_lora(generator, path, "sd15")
    message = str(error.value)
    assert str(path) in message and generator.base_source in message
    assert "LoRA 320->320, base 32->32" in message and "down_blocks.2" in message
    assert not generator.loras and "sd15" not in generator.pipe.get_list_adapters().get("unet", [])


def test_missing_and_malformed_lora_paths(generator, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"LoRA not found: {tmp_path / 'nowhere'}"):
        generation.load_lora(generator, tmp_path / "nowhere", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weight file"):
        generation.load_lora(generator, tmp_path / "empty", "x")
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"unet.x.lora.down.weight": torch.zeros(1, 1)}, several / name)
    with pytest.raises(ValueError, match="several .safetensors files"):
        generation.load_lora(generator, several, "x")
    save_file({"conv_in.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a LoRA"):
        generation.load_lora(generator, tmp_path / "model.safetensors", "x")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        generation.load_lora(generator, tmp_path / "broken.safetensors", "x")


def test_prompt_frames_and_size_checks(generator, caplog):
    for empty in ("", "   ", None):
        with pytest.raises(ValueError, match="prompt is empty"):
            render(generator, prompt=empty)
    with pytest.raises(ValueError, match=r"motion_max_seq_length is 32; ask for at most 32 frames"):
        render(generator, num_frames=33)
    with pytest.raises(ValueError, match="multiple of 8"):
        render(generator, size=60)

    long_prompt = "mtv slot milling " + " ".join(f"pass{i} with coolant" for i in range(40))
    with caplog.at_level(logging.WARNING, logger="machining_t2v.generation.generator"):
        clip = render(generator, prompt=long_prompt, num_frames=2, num_inference_steps=1)
    assert clip.shape[0] == 2
    warning = next(r.getMessage() for r in caplog.records if "truncated" in r.getMessage())
    assert "277 tokens long" in warning and "reads at most 77" in warning and "dropping '" in warning


def test_save_video_writes_h264_and_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    mp4, gif = generation.save_video(frames, tmp_path / "out" / "clip", fps=8)
    assert (mp4.name, gif.name) == ("clip.mp4", "clip.gif")
    assert probe_video(mp4).num_frames == 6 and read_frames(mp4, [0, 5]).shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="must end in .mp4"):
        generation.save_video(frames, tmp_path / "clip.avi")
    assert generation.prompt_slug("Face the steel bar, on the lathe!") == "face_the_steel_bar_on_the_lathe"


def test_generation_report_and_cli_modules_do_not_import_kedro():
    import subprocess
    import sys

    code = ("import sys, machining_t2v.generation.generator, machining_t2v.evaluation.report, machining_t2v.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kedro', 'kedro_datasets')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
