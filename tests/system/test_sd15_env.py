"""The sd15 environment: SD1.5 + AnimateDiff recipes merged over conf/base, and its overrides."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, write_test_video

SD15 = PROJECT_ROOT / "conf" / "sd15"


def parameters(env: str) -> dict:
    from kedro.config import OmegaConfigLoader

    from machining_t2v.settings import CONFIG_LOADER_ARGS

    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)["parameters"]


def leaf_paths(tree: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths |= leaf_paths(value, f"{path}.") if isinstance(value, dict) and value else {path}
    return paths


def test_sd15_only_overrides_keys_that_base_has():
    base = leaf_paths(parameters("base"))
    for file in sorted(SD15.glob("parameters*.yml")):
        unknown = leaf_paths(yaml.safe_load(file.read_text())) - base
        assert not unknown, f"{file.name} sets keys conf/base does not have: {sorted(unknown)}"
    # Everything base has is still there after the merge (a list, such as the prompts, is one leaf).
    assert base <= leaf_paths(parameters("sd15"))


def test_sd15_holds_the_anchors_recipes():
    params = parameters("sd15")
    assert params["base_model"]["pretrained"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert params["base_model"]["motion_adapter"] == "guoyww/animatediff-motion-adapter-v1-5-3"
    frames = params["frames"]
    assert (frames["still_resolution"], frames["clip_resolution"], frames["num_frames"]) == (512, 256, 16)
    assert 1.7 <= (frames["num_frames"] - 1) / frames["target_fps"] <= 2.2  # seconds a clip spans
    image, motion = params["image_ft"], params["motion_ft"]
    assert image["training"]["learning_rate"] == 1e-4 and 4 <= image["lora"]["rank"] <= 32
    assert image["gradient_checkpointing"] and motion["gradient_checkpointing"]
    assert image["training"]["batch_size"] == 4
    assert motion["training"]["learning_rate"] == 5e-4 and motion["dual"]["spatial_learning_rate"] == 1e-4
    assert 32 <= motion["lora"]["rank"] <= 64 and motion["training"]["max_steps"] == 2000
    assert motion["training"]["batch_size"] == 1 and motion["training"]["gradient_accumulation_steps"] > 1
    for sampling in (params["evaluation"]["sampling"], params["generate"]):
        assert (sampling["num_frames"], sampling["num_inference_steps"], sampling["guidance_scale"]) == (16, 25, 7.5)
        assert sampling["size"] is None and sampling["scheduler"] == "ddim"
    for validation in (image["validation"], motion["validation"]):
        assert (validation["num_inference_steps"], validation["guidance_scale"]) == (25, 7.5)
    assert params["evaluation"]["clip_model"] == "openai/clip-vit-base-patch32"
    # The base environment is untouched: the starter's recipes.
    base = parameters("base")
    assert base["base_model"]["pretrained"] == "models/starter" and base["frames"]["clip_resolution"] is None
    assert base["captions"]["trigger"] == "mtv" and base["generate"]["guidance_scale"] == 4.0


def test_every_sd15_prompt_uses_its_one_rare_trigger():
    params = parameters("sd15")
    trigger = params["captions"]["trigger"]
    assert trigger and trigger != "mtv"
    prompts = (params["image_ft"]["validation"]["prompts"] + params["motion_ft"]["validation"]["prompts"]
               + [p["text"] for p in params["evaluation"]["prompts"]] + [params["generate"]["prompt"]])
    for prompt in prompts:
        assert re.match(rf"{trigger}\b", prompt), prompt
    assert [p["id"] for p in params["evaluation"]["prompts"]] == [p["id"] for p in parameters("base")["evaluation"]["prompts"]]


@pytest.fixture
def sd15_project(project):
    shutil.copytree(SD15, project / "conf" / "sd15")
    return project


def run_sd15(project: Path, pipeline: str, params: dict | None = None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="sd15", runtime_params=params or {}) as session:
        return session.run(pipeline_names=[pipeline])


def test_frames_under_sd15_cut_512_px_stills_and_256_px_clips_of_about_2_s(sd15_project):
    write_test_video(sd15_project / "data/01_raw/videos/a.mp4", num_frames=40, fps=12)
    run_sd15(sd15_project, "frames")
    import pandas as pd

    manifest = pd.read_csv(sd15_project / "data/03_primary/frame_manifest.csv")
    stills, clips = manifest[manifest["kind"] == "still"], manifest[manifest["kind"] == "clip"]
    assert set(stills["width"]) == {512} and set(clips["width"]) == {256}
    indices = [int(i) for i in clips.iloc[0]["frame_indices"].split()]
    assert len(indices) == 16 and (indices[-1] - indices[0]) / 12 == pytest.approx(2.5)  # stride 2 at 12 fps


def test_sd15_names_its_hub_ids_and_a_user_overrides_them_on_the_command_line(sd15_project, monkeypatch):
    import huggingface_hub.constants

    # No network here: the hub ids fail at once, before the first node, naming the id.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load base model 'stable-diffusion-v1-5/stable-diffusion-v1-5'"):
        run_sd15(sd15_project, "generate")
    # Local folders instead, named on the command line: no committed file is edited.
    kedro = os.path.join(os.path.dirname(sys.executable), "kedro")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [kedro, "run", "--env", "sd15", "--pipelines=image_ft", "--params",
         "base_model.pretrained=/models/sd15,base_model.motion_adapter=/models/animatediff-v1-5-3"],
        cwd=sd15_project, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert result.returncode != 0
    assert "base model folder not found: /models/sd15" in result.stdout + result.stderr
    assert not list((sd15_project / "data/01_raw/videos").iterdir())  # sample_data never ran
