"""evaluation and generate pipelines end to end on the tiny model, after a short image_ft + motion_ft run."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from machining_t2v.generation import cpu_threads
from machining_t2v.pipelines.evaluation.nodes import (
    METRICS,
    build_prompt_table,
    generate_evaluation_clips,
    process_of,
)
from machining_t2v.video_io import probe_video
from tests.conftest import make_project, run_pipeline

VARIANTS = ["base", "image", "motion", "both"]
PROMPT_IDS = ["mill_x_aluminium", "turn_brass", "mill_circle_titanium", "face_cast_iron"]
SMALL_RUN = {
    "sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 2.0, "max_seconds": 2.0},
    "image_ft": {"training": {"max_steps": 4, "batch_size": 4, "lr_warmup_steps": 1, "checkpoint_every": 4},
                 "validation": {"every": 4, "num_inference_steps": 2}},
    "motion_ft": {"training": {"max_steps": 4, "lr_warmup_steps": 1, "checkpoint_every": 4},
                  "validation": {"every": 4, "num_inference_steps": 2}},
    "evaluation": {"sampling": {"num_frames": 6, "num_inference_steps": 3}},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """`kedro run` (image_ft + motion_ft + evaluation) then `kedro run --pipelines=evaluation`,
    in-process in a throw-away project (one CPU thread: several times faster for the tiny model)."""
    import os

    root = make_project(tmp_path_factory.mktemp("evaluation") / "project")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with cpu_threads(1):
            run_pipeline(root, "__default__", params=SMALL_RUN)
            run_pipeline(root, "evaluation", params=SMALL_RUN)
    finally:
        os.chdir(cwd)
    return root


def test_metrics_csv_has_every_variant_prompt_and_metric(project):
    metrics = pd.read_csv(project / "data/08_reporting/evaluation_metrics.csv")
    generated = metrics[metrics["variant"] != "reference"]
    assert sorted(generated["variant"].unique()) == sorted(VARIANTS)
    counts = generated.groupby(["variant", "prompt_id"])["metric"].apply(sorted)
    assert len(counts) == 16 and all(list(value) == sorted(METRICS) for value in counts)
    assert set(generated["seed"]) == {0}  # the same seed for every variant
    assert dict(generated.drop_duplicates("prompt_id").set_index("prompt_id")["split"]) == {
        "mill_x_aluminium": "seen", "turn_brass": "seen", "mill_circle_titanium": "held_out",
        "face_cast_iron": "held_out"}
    reference = metrics[metrics["variant"] == "reference"]
    assert set(reference["process"]) == {"milling", "turning"} and reference["value"].notna().all()
    values = generated.pivot_table(index=["prompt_id", "metric"], columns="variant", values="value")
    assert (values["base"] != values["both"]).any() and (values["image"] != values["motion"]).any()
    fidelity = generated[generated["metric"] == "motion_fidelity"]["value"]
    assert fidelity.between(0, 1).all()


def test_report_names_models_and_labels_the_standin_clip(project):
    reporting = project / "data/08_reporting"
    report = (reporting / "evaluation_report.md").read_text()
    page = (reporting / "evaluation_report.html").read_text()
    for text in (report, page):
        assert "stand-in CLIP with random weights: its scores measure nothing about quality" in text
        assert "built-in tiny model with random weights" in text
        for label in ("+image LoRA", "+motion LoRA", "+image +motion LoRA", "reference clips (ceiling)"):
            assert label in text
        assert "image_lora/pytorch_lora_weights.safetensors" in text
        assert "motion_lora/pytorch_lora_weights.safetensors" in text
        assert "tiny-sd" in text and "builtin:standin-clip" in text
    assert "](evaluation_plots/motion_fidelity.png)" in report
    assert "](evaluation_strips/turn_brass__both__seed0.png)" in report
    assert page.count("data:image/png;base64,") == len(METRICS) + 16
    summary = pd.read_csv(reporting / "evaluation_summary.csv")
    overall = summary[summary["split"] == "all"].set_index("variant")
    assert list(overall.index) == [*VARIANTS, "reference"]
    models = json.loads((reporting / "evaluation_models.json").read_text())
    assert models["variants"] == VARIANTS and models["clip_model"]["is_standin"] is True
    assert set(models["loras"]) == {"image", "motion"} and models["loras"]["image"]["steps"] == 4


def test_plots_strips_and_side_by_side_videos(project):
    reporting = project / "data/08_reporting"
    assert sorted(p.stem for p in (reporting / "evaluation_plots").glob("*.png")) == sorted(METRICS)
    strips = sorted(p.stem for p in (reporting / "evaluation_strips").glob("*.png"))
    assert strips == sorted(f"{p}__{v}__seed0" for p in PROMPT_IDS for v in VARIANTS)
    with Image.open(reporting / "evaluation_strips/turn_brass__base__seed0.png") as strip:
        assert strip.size == (6 * 64 + 5 * 2, 64)
    for prompt_id in PROMPT_IDS:
        info = probe_video(reporting / f"evaluation_videos/{prompt_id}__seed0.mp4")
        assert (info.num_frames, info.width) == (6, 4 * 64 + 3 * 2)


def test_mlflow_runs_hold_eval_metrics_and_report(project):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"__default__", "evaluation"}
    for run in runs.values():  # the evaluation also ran at the end of the training chains
        for variant in VARIANTS:
            assert f"eval.{variant}.clip_t" in run.data.metrics
            assert f"eval.{variant}.held_out.motion_fidelity" in run.data.metrics
        assert "eval.reference.flicker" in run.data.metrics
    run = runs["evaluation"]
    assert run.data.tags["eval.clip_is_standin"] == "true" and run.data.tags["eval.base_model"].endswith("tiny-sd")
    assert run.data.params["evaluation.sampling.num_frames"] == "6"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation_report.md", "evaluation_report.html", "evaluation_metrics.csv", "evaluation_summary.csv",
            "evaluation_models.json", "evaluation_plots", "evaluation_strips", "evaluation_videos"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "evaluation_strips")) == 16


def test_generate_pipeline_writes_gif_and_h264_with_project_loras(project, monkeypatch):
    monkeypatch.chdir(project)
    with cpu_threads(1):
        run_pipeline(project, "generate", params={"generate": {"prompt": "face the steel bar on the lathe",
                                                               "num_frames": 6, "num_inference_steps": 3}})
    folder = project / "data/07_model_output/generated"
    name = "mtv_face_the_steel_bar_on_the_lathe"
    assert probe_video(folder / f"{name}.mp4").num_frames == 6
    with Image.open(folder / f"{name}.gif") as gif:
        assert gif.n_frames == 6
    record = json.loads((folder / "generation.json").read_text())
    assert record["prompt"] == "mtv face the steel bar on the lathe"
    assert set(record["loras"]) == {"image", "motion"} and record["lora_scales"] == {"image": 0.8, "motion": 1.0}


def test_evaluation_without_loras_runs_the_base_only(project):
    prompts = build_prompt_table({"prompts": [{"id": "turn", "text": "mtv turning on a lathe", "process": "turning",
                                               "split": "seen"}], "processes": {"turning": ["lathe"]}})
    params = {"variants": VARIANTS, "lora_scales": {"image": 1.0, "motion": 1.0}, "cpu_threads": 1,
              "sampling": {"num_frames": 2, "num_inference_steps": 1, "guidance_scale": 1.0, "size": 64,
                           "scheduler": "euler", "seed": 3, "seeds_per_prompt": 2}}
    base_model = {"pretrained": "builtin:tiny", "motion_adapter": "builtin:tiny",
                  "tiny_model_dir": str(project / "data/06_models/tiny-sd")}
    clips, record = generate_evaluation_clips(prompts, None, None, base_model, params)
    assert sorted(clips) == ["base__turn__seed3", "base__turn__seed4"]
    assert not np.array_equal(clips["base__turn__seed3"], clips["base__turn__seed4"])
    assert record["variants"] == ["base"] and set(record["skipped_variants"]) == {"image", "motion", "both"}
    assert record["skipped_variants"]["both"] == "no trained image and motion LoRA"


def test_prompt_table_and_process_recognition():
    processes = {"milling": ["mill", "milling", "end mill"], "turning": ["lathe", "turning", "chuck"]}
    assert process_of("mtv slot milling on a milling machine, spinning end mill", processes) == "milling"
    assert process_of("turn the bar on a lathe, bar spinning in the chuck", processes) == "turning"
    assert process_of("a video of a workshop", processes) is None
    good = {"id": "a", "text": "mtv milling", "process": "milling", "split": "seen"}
    for bad, message in (({"split": "train"}, "split must be one of"), ({"process": "drilling"}, "process must be"),
                         ({"text": " "}, "text is empty"), ({"id": "a/b"}, "id must be")):
        with pytest.raises(ValueError, match=message):
            build_prompt_table({"prompts": [{**good, **bad}], "processes": processes})
    with pytest.raises(ValueError, match="duplicate ids"):
        build_prompt_table({"prompts": [good, good], "processes": processes})
