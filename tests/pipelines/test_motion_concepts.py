"""Motion concepts end to end on the tiny model: one motion LoRA per concept, each in its own
namespace with its own exports and MLflow entries, evaluated as ``motion:<concept>``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from machining_t2v.generation.generator import cpu_threads
from machining_t2v.kedro_glue.concepts import configured_concepts
from tests.conftest import make_project, run_pipeline

# The first four sample videos: milling_000 (y), turning_001 (left, "towards the chuck"),
# milling_002 (x), turning_003 (inward).
CONCEPTS = """\
  concepts:
    mill_feed_right: {column: direction, equals: x}
    turn_towards_chuck: {caption: "towards the chuck"}
"""
SMALL_RUN = {
    "sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 2.0, "max_seconds": 2.0},
    "motion_ft": {"training": {"max_steps": 3, "lr_warmup_steps": 1, "checkpoint_every": 3},
                  "validation": {"every": 3, "num_inference_steps": 2}},
    "evaluation": {"sampling": {"num_frames": 6, "num_inference_steps": 2, "seeds_per_prompt": 1}},
}


def with_concepts(root):
    """A project copy whose conf/base names the two concepts."""
    make_project(root)
    path = root / "conf/base/parameters_motion_ft.yml"
    path.write_text(path.read_text().replace("  concepts: {}\n", CONCEPTS))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = with_concepts(tmp_path_factory.mktemp("concepts") / "project")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with cpu_threads(1):
            run_pipeline(root, "motion_ft", params=SMALL_RUN)
    finally:
        os.chdir(cwd)
    return root


def test_the_registry_reads_the_concepts_from_conf(project, tmp_path):
    assert configured_concepts(project) == ["mill_feed_right", "turn_towards_chuck"]
    assert configured_concepts(make_project(tmp_path / "plain")) == []


def test_registering_concepts_raises_no_dotted_name_warning(project):
    # A fresh interpreter: Kedro gives that warning once per process.
    registered = subprocess.run(
        [sys.executable, "-W", "default", "-c",
         "from machining_t2v.pipeline_registry import register_pipelines; "
         "print(sorted(register_pipelines()['motion_ft'].datasets()))"],
        cwd=project, capture_output=True, text=True, check=True)
    assert "mill_feed_right.motion_lora_card" in registered.stdout
    assert "dataset names contain" not in registered.stderr


def test_one_lora_per_concept_with_its_own_exports(project):
    models = project / "data/06_models"
    assert not (models / "motion_lora/lora_info.json").exists()  # no LoRA on every clip
    for concept, clips in (("mill_feed_right", ["milling_002"]), ("turn_towards_chuck", ["turning_001"])):
        folder = models / "motion_concepts" / concept / "motion_lora"
        assert {"pytorch_lora_weights.safetensors", "motion_lora_animatediff.safetensors",
                "lora_info.json"} <= {p.name for p in folder.iterdir()}
        info = json.loads((folder / "lora_info.json").read_text())
        assert info["concept"] == concept and info["steps"] == 3
        summary = json.loads((project / f"data/08_reporting/motion_concepts/{concept}/motion_ft_summary.json")
                             .read_text())
        assert summary["concept"] == concept
        # Each concept trained on its own video's clips only (2 s at 12 fps: one 8-frame clip, stride 2).
        manifest = pd.read_csv(project / "data/03_primary/frame_manifest.csv")
        own = manifest[(manifest["kind"] == "clip") & manifest["video"].str.startswith(tuple(clips))]
        assert summary["num_samples"] == len(own) > 0
        assert any((project / f"data/08_reporting/motion_concepts/{concept}/motion_ft_samples").glob("*.mp4"))


def test_each_concept_has_its_own_mlflow_entries(project):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    (run,) = client.search_runs([experiment.experiment_id])
    for concept in ("mill_feed_right", "turn_towards_chuck"):
        assert run.data.tags[f"motion_ft.{concept}.mode"] == "temporal"
        assert any(key.startswith(f"motion_ft.{concept}.") for key in run.data.metrics)
        assert f"eval.motion:{concept}.direction_agreement" in run.data.metrics
        folder = f"motion_concepts/{concept}"
        assert {a.path for a in client.list_artifacts(run.info.run_id, folder)} >= {
            f"{folder}/motion_lora", f"{folder}/motion_ft_samples", f"{folder}/motion_ft_summary.json"}
        assert {a.path for a in client.list_artifacts(run.info.run_id, f"{folder}/motion_lora")} >= {
            f"{folder}/motion_lora/README.md", f"{folder}/motion_lora/pytorch_lora_weights.safetensors"}


def test_the_evaluation_scores_each_concept_on_prompts_of_its_process(project):
    metrics = pd.read_csv(project / "data/08_reporting/evaluation_metrics.csv")
    processes = metrics.groupby("variant")["process"].unique().map(sorted).to_dict()
    assert processes["motion:mill_feed_right"] == ["milling"]
    assert processes["motion:turn_towards_chuck"] == ["turning"]
    summary = pd.read_csv(project / "data/08_reporting/evaluation_summary.csv")
    overall = summary[summary["split"] == "all"]
    assert list(overall["variant"]) == ["base", "motion:mill_feed_right", "motion:turn_towards_chuck", "reference"]
    assert "direction_agreement" in summary.columns
    models = json.loads((project / "data/08_reporting/evaluation_models.json").read_text())
    assert models["skipped_variants"]["both:mill_feed_right"] == "no trained image LoRA"
    report = (project / "data/08_reporting/evaluation_report.md").read_text()
    assert "+motion LoRA (mill_feed_right)" in report


def test_each_concepts_lora_has_its_own_model_card(project):
    for concept in ("mill_feed_right", "turn_towards_chuck"):
        folder = project / "data/06_models/motion_concepts" / concept / "motion_lora"
        card = (folder / "README.md").read_text()
        assert f"# Motion LoRA `{concept}`" in card and "| Steps | 3 |" in card
        assert f"| metric | base | +motion LoRA ({concept}) | reference clips (ceiling) |" in card
        assert f"--motion-lora data/06_models/motion_concepts/{concept}/motion_lora" in card
        assert (folder / "sample.gif").is_file()
        workflow = json.loads((folder / "comfyui_workflow.json").read_text())
        assert any(node["class_type"] == "KSampler" for node in workflow.values())
    assert not (project / "data/06_models/motion_lora/README.md").exists()  # no LoRA on every clip, no card


def test_concepts_given_only_with_params_are_refused(project):
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with pytest.raises(ValueError, match="differ from the concepts the pipelines were registered with"):
            run_pipeline(project, "motion_ft", params={
                "motion_ft": {"concepts": {"roughing": {"folder": "roughing"}}}})
    finally:
        os.chdir(cwd)


def test_generate_picks_a_concepts_lora_by_name(project):
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with cpu_threads(1):
            run_pipeline(project, "generate", params={"generate": {
                "prompt": "turn the bar on a lathe", "motion_concept": "turn_towards_chuck", "num_frames": 6,
                "num_inference_steps": 2}})
        record = json.loads((project / "data/07_model_output/generated/generation.json").read_text())
        assert record["lora_scales"] == {"motion": 1.0}
        assert record["loras"]["motion"]["path"].endswith("motion_concepts/turn_towards_chuck/motion_lora")
        with pytest.raises(ValueError, match="generate.motion_concept 'drilling' is not a motion concept of this "
                                             "project \\(motion_ft.concepts: mill_feed_right, turn_towards_chuck\\)"):
            run_pipeline(project, "generate", params={"generate": {"motion_concept": "drilling"}})
    finally:
        os.chdir(cwd)


def test_the_training_launcher_trains_every_concept(project):
    """``machining_t2v.training.launch motion_ft`` on one process: each concept's clip selection, then its training."""
    args = [sys.executable, "-m", "machining_t2v.training.launch", "motion_ft", "--project-path", str(project),
            "--train-only", "--no-mlflow", "--params",
            "motion_ft.training.max_steps=2,motion_ft.training.checkpoint_every=2,motion_ft.validation.every=0"]
    done = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for concept in ("mill_feed_right", "turn_towards_chuck"):
        info = json.loads((project / f"data/06_models/motion_concepts/{concept}/motion_lora/lora_info.json").read_text())
        assert (info["concept"], info["steps"]) == (concept, 2)
