"""The real-model path at real size: a random-weight SD1.5 + AnimateDiff v1-5-3 folder, trained
with `kedro run --pipelines=image_ft` and `--pipelines=motion_ft` end to end on two short videos.

Nothing here is about quality (the weights are random); it checks what only shows at real size:
that the folder loads through the product's model loading, that both chains run (data prep,
training, validation samples, evaluation) on it through the real CLI, that the LoRAs have SD1.5's
module counts (128 spatial, 160 temporal attention projections), record their noise schedule, and
load back into a diffusers ``AnimateDiffPipeline``. Each `kedro run`'s wall time and peak RSS are
printed (run with ``-s`` to see them) and written to ``real_model_runs.json`` in the temp folder.

About 6-7 minutes and 12 GB of RAM on 2 CPU cores (`make test-slow`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, make_project

# --------------------------------------------------------------------------- the command lines, in one place

STILL_PX, CLIP_PX, CLIP_FRAMES = 128, 64, 8

# Small sizes, a 2-step budget, and validation sampling and evaluation cut to the minimum (one
# validation prompt, one denoising step without classifier-free guidance, 2-frame 64 px evaluation
# clips, one seed, one variant, one reference clip per process). Runtime params win over every
# conf environment, so the same values hold with --env sd15.
COMMON_PARAMS = {
    "frames.num_frames": CLIP_FRAMES,
    "frames.frame_stride": 2,
    "frames.target_fps": "null",  # the stride above, whatever an environment sets
    "frames.clips_per_video": 1,
    "frames.stills_per_video": 2,
    "frames.min_motion": 0.0,
    "captions.model": "null",
    "evaluation.clip_model": "builtin:standin-clip",  # sd15 names a real CLIP, which cannot be downloaded here
    "evaluation.sampling.num_frames": 2,
    "evaluation.sampling.num_inference_steps": 1,
    "evaluation.sampling.guidance_scale": 1.0,
    "evaluation.sampling.size": 64,
    "evaluation.sampling.seeds_per_prompt": 1,
    "evaluation.reference.max_clips_per_process": 1,
}
TRAINING_PARAMS = {
    "training.max_steps": 2,
    "training.num_train_epochs": "null",
    "training.gradient_accumulation_steps": 1,
    "training.checkpoint_every": 0,
    "training.log_every": 1,
    "validation.every": 0,  # validation samples once, at the end
    "validation.batch_size": 1,
    "validation.prompts": "[mtv milling on a milling machine]",
    "validation.num_inference_steps": 1,
    "validation.guidance_scale": 1.0,
}
PIPELINE_PARAMS = {
    "image_ft": {**{f"image_ft.{k}": v for k, v in TRAINING_PARAMS.items()}, "image_ft.training.batch_size": 2,
                 "evaluation.variants": "[image]"},
    "motion_ft": {**{f"motion_ft.{k}": v for k, v in TRAINING_PARAMS.items()}, "motion_ft.training.batch_size": 1,
                  "motion_ft.num_frames": CLIP_FRAMES, "evaluation.variants": "[motion]"},
}
# Through the real-model environment, with the small sizes on the command line.
ENV_ARGS = ["--env", "sd15"]
FRAME_SIZES = {"frames.still_resolution": STILL_PX, "frames.clip_resolution": CLIP_PX}


def kedro_run_args(pipeline: str, model_folder: Path) -> list[str]:
    """The `kedro run` arguments of one chain on the random SD1.5 folder."""
    params = {"base_model.pretrained": str(model_folder),
              "base_model.motion_adapter": str(model_folder / "motion_adapter"),
              **COMMON_PARAMS, **FRAME_SIZES, **PIPELINE_PARAMS[pipeline]}
    joined = ",".join(f"{key}={value}" for key, value in params.items())
    assert joined.count(",") == len(params) - 1, "Kedro splits --params at commas: no value may hold one"
    return ["run", *ENV_ARGS, f"--pipelines={pipeline}", "--params", joined]


# --------------------------------------------------------------------------- running


def run_kedro(project: Path, args: list[str], log: Path, timeout: float = 1200) -> dict:
    """`kedro run` as a subprocess in ``project``; its wall time and peak RSS (of it and its children)."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
               [str(PROJECT_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "kedro", *args], cwd=project, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        deadline = started + timeout
        while True:  # os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix the runs)
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.5)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    peak_gb = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9
    return {"args": args, "returncode": process.returncode, "wall_s": round(seconds, 1),
            "peak_rss_gb": round(peak_gb, 2), "log": str(log)}


def _tail(path: str, lines: int = 60) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def _write_videos(folder: Path) -> None:
    """Two short synthetic videos (one milling, one turning), 2 s at 12 fps, with caption sidecars."""
    from machining_t2v.data.synthetic_videos.clips import render_clip, sample_clip_specs
    from machining_t2v.data.video_io import write_video

    folder.mkdir(parents=True, exist_ok=True)
    for spec in sample_clip_specs(num_clips=2, seed=0, width=160, height=128, fps=12, min_seconds=2.0,
                                  max_seconds=2.0, webm_fraction=0.0):
        write_video(folder / f"{spec.name}.mp4", render_clip(spec), spec.fps)
        (folder / f"{spec.name}.txt").write_text(f"mtv {spec.caption}")


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory) -> Path:
    """The random SD1.5 + v1-5-3 folder, built in a subprocess so this process stays small."""
    folder = tmp_path_factory.mktemp("sd15_random") / "model"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "machining_t2v.fixtures.sd15_random", str(folder)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def trained_project(sd15_folder, tmp_path_factory) -> tuple[Path, dict]:
    """A project copy in which image_ft, then motion_ft, ran on the random SD1.5 folder."""
    root = make_project(tmp_path_factory.mktemp("real_model") / "project")
    if not (root / "conf" / "sd15").is_dir():
        shutil.copytree(PROJECT_ROOT / "conf" / "sd15", root / "conf" / "sd15")
    _write_videos(root / "data" / "01_raw" / "videos")
    runs = {}
    for pipeline in ("image_ft", "motion_ft"):
        run = run_kedro(root, kedro_run_args(pipeline, sd15_folder), root / f"{pipeline}.log")
        runs[pipeline] = run
        print(f"\n[real model] kedro {' '.join(run['args'][:3])}: {run['wall_s']} s, peak RSS {run['peak_rss_gb']} GB")
        assert run["returncode"] == 0, f"kedro run --pipelines={pipeline} failed:\n{_tail(run['log'])}"
    (root / "real_model_runs.json").write_text(json.dumps(runs, indent=2))
    return root, runs


# --------------------------------------------------------------------------- checks


def test_kedro_params_parse_as_intended(tmp_path):
    """Quick: the --params string reaches Kedro as the intended values (lists, nulls, numbers)."""
    from kedro.framework.cli.utils import _split_params

    args = kedro_run_args("motion_ft", tmp_path / "model")
    assert args[: 1 + len(ENV_ARGS)] == ["run", *ENV_ARGS] and "--pipelines=motion_ft" in args
    params = _split_params(None, None, args[-1])
    assert params["base_model"]["motion_adapter"] == str(tmp_path / "model" / "motion_adapter")
    assert params["motion_ft"]["validation"]["prompts"] == ["mtv milling on a milling machine"]
    assert params["motion_ft"]["training"]["num_train_epochs"] is None
    assert params["motion_ft"]["training"]["max_steps"] == 2
    assert params["evaluation"]["variants"] == ["motion"]
    assert params["frames"]["num_frames"] == CLIP_FRAMES and params["frames"]["target_fps"] is None


def _lora_modules(file: Path) -> set[str]:
    """Distinct module paths of a LoRA file, in any of the layouts the project writes."""
    from safetensors import safe_open

    patterns = (r"^(?:unet\.)?(.+?)\.(?:lora_[AB]|lora\.(?:down|up))\.weight$",  # diffusers / peft
                r"^(lora_unet_.+?)\.(?:lora_down\.weight|lora_up\.weight|alpha)$",  # kohya
                r"^(.+?\.processor\.to_(?:q|k|v|out))_lora\.(?:down|up)\.weight$")  # AnimateDiff MotionLoRA
    modules = set()
    with safe_open(str(file), "pt") as handle:
        for key in handle.keys():
            match = next((m for m in (re.match(p, key) for p in patterns) if m), None)
            assert match, f"{file.name}: unexpected key {key}"
            modules.add(match[1])
    return modules


@pytest.mark.slow
def test_sd15_folder_has_the_real_shapes(sd15_folder):
    from diffusers import DDPMScheduler, MotionAdapter
    from transformers import CLIPTextConfig, CLIPTokenizer

    from machining_t2v.fixtures.sd15_random import SD15_UNET_CONFIG

    unet_config = json.loads((sd15_folder / "unet" / "config.json").read_text())
    assert unet_config["block_out_channels"] == list(SD15_UNET_CONFIG["block_out_channels"])
    assert unet_config["cross_attention_dim"] == 768
    text_config = CLIPTextConfig.from_pretrained(sd15_folder / "text_encoder")
    assert (text_config.num_hidden_layers, text_config.hidden_size, text_config.vocab_size) == (12, 768, 49408)
    assert len(CLIPTokenizer.from_pretrained(sd15_folder / "tokenizer")) <= text_config.vocab_size
    vae_config = json.loads((sd15_folder / "vae" / "config.json").read_text())
    assert vae_config["block_out_channels"] == [128, 256, 512, 512] and vae_config["scaling_factor"] == 0.18215
    adapter_config = MotionAdapter.load_config(sd15_folder / "motion_adapter")
    assert adapter_config["use_motion_mid_block"] is False
    scheduler = DDPMScheduler.from_pretrained(sd15_folder / "scheduler")
    assert (scheduler.config.beta_schedule, scheduler.config.clip_sample) == ("scaled_linear", False)
    assert (sd15_folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size > 1.6e9  # fp16, 860M
    assert json.loads((sd15_folder / "sd15_random.json").read_text())["dtype"] == "float16"


@pytest.mark.slow
def test_image_and_motion_chains_run_through_kedro(trained_project):
    root, runs = trained_project
    for pipeline, run in runs.items():
        assert run["wall_s"] > 0 and run["peak_rss_gb"] > 1, (pipeline, run)
    summary = json.loads((root / "data" / "08_reporting" / "image_ft_summary.json").read_text())
    assert summary["steps"] == 2
    motion_summary = json.loads((root / "data" / "08_reporting" / "motion_ft_summary.json").read_text())
    assert motion_summary["steps"] == 2 and motion_summary["num_frames"] == CLIP_FRAMES
    assert (root / "data" / "08_reporting" / "evaluation_metrics.csv").is_file()


@pytest.mark.slow
def test_loras_have_sd15_module_counts(trained_project):
    root, _ = trained_project
    image, motion = root / "data" / "06_models" / "image_lora", root / "data" / "06_models" / "motion_lora"
    for file in (image / "pytorch_lora_weights.safetensors", image / "image_lora_kohya.safetensors"):
        modules = _lora_modules(file)
        assert len(modules) == 128, (file.name, len(modules))
        assert not [m for m in modules if "motion_modules" in m], file.name
    for file in (motion / "pytorch_lora_weights.safetensors", motion / "motion_lora_animatediff.safetensors"):
        modules = _lora_modules(file)
        assert len(modules) == 160, (file.name, len(modules))
        assert all("motion_modules" in m for m in modules), file.name


@pytest.mark.slow
def test_loras_record_their_noise_schedule(trained_project):
    """The motion LoRA trains under the video sampler's linear betas; the image LoRA under SD1.5's own."""
    root, _ = trained_project
    image = json.loads((root / "data" / "06_models" / "image_lora" / "lora_info.json").read_text())
    motion = json.loads((root / "data" / "06_models" / "motion_lora" / "lora_info.json").read_text())
    assert motion.get("beta_schedule") == "linear", motion
    assert motion.get("prediction_type") == "epsilon", motion
    assert image.get("beta_schedule") == "scaled_linear", image
    assert image.get("prediction_type") == "epsilon", image


@pytest.mark.slow
def test_loras_reload_into_animatediff_pipeline(trained_project, sd15_folder):
    from machining_t2v.generation.generator import build_generator
    from machining_t2v.generation.loras import load_lora, set_lora_scales
    from machining_t2v.generation.video import generate_video

    root, _ = trained_project
    models = root / "data" / "06_models"
    from machining_t2v.models.loading import load_base_model, load_motion_adapter

    generator = build_generator(load_base_model(str(sd15_folder)), load_motion_adapter(str(sd15_folder / "motion_adapter")),
                                base_spec=str(sd15_folder), motion_adapter_spec=str(sd15_folder / "motion_adapter"),
                                device="cpu", dtype="float32")
    assert type(generator.pipe).__name__ == "AnimateDiffPipeline"
    image = load_lora(generator, models / "image_lora", "image")
    motion = load_lora(generator, models / "motion_lora", "motion")
    original = load_lora(generator, models / "motion_lora" / "motion_lora_animatediff.safetensors", "motion_original")
    assert (image.targets, image.num_layers) == ("spatial", 128)
    assert (motion.targets, motion.num_layers) == ("motion", 160)
    assert (original.layout, original.targets, original.num_layers) == ("animatediff-motionlora", "motion", 160)
    set_lora_scales(generator, {"image": 1.0, "motion": 1.0})
    frames = generate_video(generator, "mtv milling on a milling machine", num_frames=2, num_inference_steps=1,
                            guidance_scale=1.0, size=64)
    assert frames.shape == (2, 64, 64, 3) and frames.dtype.name == "uint8"
