"""evaluation and generate pipelines end to end on the tiny model, after a short image_ft + motion_ft run."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from machining_t2v.data.video_io import probe_video
from machining_t2v.evaluation.inworld import InWorldEvaluator, accuracy
from machining_t2v.evaluation.inworld_scoring import INWORLD_COLUMNS, INWORLD_FOLDER
from machining_t2v.evaluation.scoring import METRICS
from machining_t2v.evaluation.variants import clip_key
from machining_t2v.generation.generator import cpu_threads
from machining_t2v.kedro_glue.model_datasets import BaseModelDataset, MotionAdapterDataset
from machining_t2v.pipelines.evaluation.nodes import (
    build_prompt_table,
    build_report,
    generate_evaluation_clips,
    score_in_world,
)
from machining_t2v_starter import world as starter_world
from machining_t2v_starter.evaluator_training import train_evaluator
from tests.conftest import make_project, run_pipeline
from tests.publishing.comfyui_checks import missing_files, referenced_files, workflow_problems

VARIANTS = ["base", "image", "motion", "both"]
PROMPT_IDS = ["mill_x_aluminium", "turn_brass", "mill_circle_titanium", "face_cast_iron"]
SMALL_RUN = {
    "sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 2.0, "max_seconds": 2.0},
    "image_ft": {"training": {"max_steps": 4, "batch_size": 4, "lr_warmup_steps": 1, "checkpoint_every": 4},
                 "validation": {"every": 4, "num_inference_steps": 2}},
    "motion_ft": {"training": {"max_steps": 4, "lr_warmup_steps": 1, "checkpoint_every": 4},
                  "validation": {"every": 4, "num_inference_steps": 2}},
    "evaluation": {"sampling": {"num_frames": 6, "num_inference_steps": 3, "seeds_per_prompt": 1}},
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


def test_summary_reads_the_reference_clips_direction(project):
    summary = pd.read_csv(project / "data/08_reporting/evaluation_summary.csv").set_index(["variant", "split"])
    # The sample metadata.csv names every clip's direction: the reference row is a share, never empty.
    assert 0.0 <= summary.loc[("reference", "all"), "direction_agreement"] <= 1.0
    assert summary["direction_agreement"].between(0, 1).all()


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
    # The model cards are logged beside the LoRAs' files: the training run holds both, the
    # evaluation-only run the cards alone (the LoRA folder is not logged again).
    for name, run in runs.items():
        for kind, card_files in (("image", {"README.md", "sample.gif"}),
                                 ("motion", {"README.md", "sample.gif", "comfyui_workflow.json"})):
            logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, f"{kind}_lora")}
            lora_files = {"pytorch_lora_weights.safetensors", "lora_info.json"} if name == "__default__" else set()
            assert card_files | lora_files <= logged and (name == "__default__" or logged == card_files), (name, logged)


def test_model_cards_and_the_comfyui_workflow_lie_beside_the_loras(project):
    models = project / "data/06_models"
    overall = pd.read_csv(project / "data/08_reporting/evaluation_summary.csv").query("split == 'all'")
    flicker = overall.set_index("variant")["flicker"]
    for kind in ("image", "motion"):
        card = (models / f"{kind}_lora/README.md").read_text()
        assert "| Steps | 4 |" in card and "| Trigger word | `mtv`" in card and "tiny-sd" in card
        assert int(re.search(r"LoRA rank 8, alpha 8.0, (\d+) layers", card).group(1)) > 0
        row = next(line for line in card.splitlines() if line.startswith("| flicker |"))
        assert row == "| flicker | " + " | ".join(f"{flicker[v]:.3f}" for v in ("base", kind, "both", "reference")) + " |"
        assert "stand-in CLIP" in card and "random weights (untrained)" in card
        assert f"--{kind}-lora data/06_models/{kind}_lora --scale-{kind} 1" in card  # relative to the project
        with Image.open(models / f"{kind}_lora/sample.gif") as gif:
            assert (gif.n_frames, gif.size) == (6, (2 * 64 + 2, 64))  # base | +LoRA
    assert not (models / "image_lora/comfyui_workflow.json").exists()
    workflow = json.loads((models / "motion_lora/comfyui_workflow.json").read_text())
    assert workflow_problems(workflow) == []
    assert set(referenced_files(workflow)) == {"image_lora_kohya.safetensors", "motion_lora_animatediff.safetensors"}
    assert missing_files(workflow, {"loras": models / "image_lora", "animatediff_motion_lora": models / "motion_lora"}) == []
    texts = [node["inputs"]["text"] for node in workflow.values() if node["class_type"] == "CLIPTextEncode"]
    assert texts[0].startswith("mtv slot milling along X") and texts[1] == ""
    sampler = next(node["inputs"] for node in workflow.values() if node["class_type"] == "KSampler")
    assert (sampler["steps"], sampler["cfg"], sampler["seed"]) == (3, 4.0, 0)


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
    base, adapter = BaseModelDataset(base_model=base_model).load(), MotionAdapterDataset(base_model=base_model).load()
    clips, record = generate_evaluation_clips(prompts, None, None, base, adapter, base_model, params)
    assert sorted(clips) == ["base__turn__seed3", "base__turn__seed4"]
    assert not np.array_equal(clips["base__turn__seed3"], clips["base__turn__seed4"])
    assert record["variants"] == ["base"] and set(record["skipped_variants"]) == {"image", "motion", "both"}
    assert record["skipped_variants"]["both"] == "no trained image and motion LoRA"


# --------------------------------------------------------------------------- in-world metrics


def test_in_world_metrics_are_empty_without_an_evaluator(project, caplog):
    reporting = project / "data/08_reporting"
    for name in ("evaluation_inworld", "evaluation_inworld_predictions"):
        assert pd.read_csv(reporting / f"{name}.csv").empty
    assert list(pd.read_csv(reporting / "evaluation_inworld.csv").columns) == INWORLD_COLUMNS
    for report in ("evaluation_report.md", "evaluation_report.html"):
        assert "In-world metrics" not in (reporting / report).read_text()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    for run in client.search_runs([experiment.experiment_id]):
        assert not [key for key in run.data.metrics if ".inworld." in key]
    with caplog.at_level(logging.INFO, logger="machining_t2v.pipelines.evaluation.nodes"):
        table, _ = score_in_world({}, pd.DataFrame(), {}, pd.DataFrame(),
                                  {"base_model_source": str(project / "data/06_models/tiny-sd")})
    assert table.empty and list(table.columns) == INWORLD_COLUMNS
    assert [r.message for r in caplog.records if "No in-world metrics" in r.message] == [
        f"No in-world metrics: base model {project / 'data/06_models/tiny-sd'} has no inworld_evaluator/ folder "
        "(only the starter model carries one)"]


@pytest.fixture(scope="module")
def starter_like_model(project, tmp_path_factory):
    """A copy of the tiny model folder with a small in-world evaluator in it, as the starter model carries."""
    folder = tmp_path_factory.mktemp("starter") / "tiny-sd"
    shutil.copytree(project / "data/06_models/tiny-sd", folder)
    clips = (starter_world.render_machine_clips(12, 0, shop=True) + starter_world.render_machine_clips(12, 1, shop=False)
             + starter_world.render_shape_clips(12, 2))
    frames, _, labels = starter_world.stack_clips(clips)
    # 20 epochs (~15 s) separate the shop look from grey on unseen renders; 4 do not.
    train_evaluator(frames, labels, seed=0, epochs=20, progress=False).save(folder / INWORLD_FOLDER)
    return folder


@pytest.fixture(scope="module")
def in_world(starter_like_model):
    """score_in_world on renders the evaluator never saw: shop renders as the +image clips, the same renders
    in grey as the base clips, for the renders' own captions (which ask for the shop's look); grey renders
    with grey captions (no style, no direction) as reference clips."""
    renders = starter_world.render_machine_clips(4, 7, shop=True)
    prompts = pd.DataFrame([{"prompt_id": f"p{i}", "prompt": clip.caption, "process": clip.scene,
                             "split": ("seen", "held_out")[i % 2]} for i, clip in enumerate(renders)])
    shop = [clip.frames for clip in renders]
    grey = [starter_world.neutral_look(clip.frames) for clip in renders]
    generated = {clip_key(variant, f"p{i}", 0): frames[i]
                 for variant, frames in (("image", shop), ("base", grey)) for i in range(len(renders))}
    references = starter_world.render_machine_clips(2, 8, shop=False)
    reference_table = pd.DataFrame([{"sample_id": f"ref{i}", "video": "", "caption": clip.caption,
                                     "process": clip.scene} for i, clip in enumerate(references)])
    table, predictions = score_in_world(generated, prompts, {f"ref{i}": c.frames for i, c in enumerate(references)},
                                        reference_table, {"base_model_source": str(starter_like_model)})
    return {"table": table, "predictions": predictions, "renders": renders, "shop": np.stack(shop),
            "grey": np.stack(grey), "references": references}


def test_in_world_accuracies_are_the_evaluators_own(starter_like_model, in_world):
    table, renders = in_world["table"].set_index(["variant", "split"]), in_world["renders"]
    assert list(table.index) == [("base", "all"), ("base", "seen"), ("base", "held_out"), ("image", "all"),
                                 ("image", "seen"), ("image", "held_out"), ("reference", "all")]
    assert list(table["n_clips"]) == [4, 2, 2, 4, 2, 2, 2]
    evaluator = InWorldEvaluator.load(starter_like_model / INWORLD_FOLDER)
    expected = [starter_world.expected_labels(clip.caption) for clip in renders]
    assert {e["style"] for e in expected} == {"shop"} and all(e["motion"] for e in expected)
    for variant, clips in (("image", in_world["shop"]), ("base", in_world["grey"])):
        predicted = [starter_world.apply_world_rules(p) for p in evaluator.predict(clips)]
        for key in ("style", "scene", "motion"):
            assert table.loc[(variant, "all"), f"{key}_accuracy"] == accuracy(predicted, expected, key)
            assert table.loc[(variant, "seen"), f"{key}_accuracy"] == accuracy(predicted[::2], expected[::2], key)
            assert table.loc[(variant, "held_out"), f"{key}_accuracy"] == accuracy(predicted[1::2], expected[1::2],
                                                                                   key)
    # The shop renders look like the shop, their grey copies do not.
    assert table.loc[("image", "all"), "style_accuracy"] >= 0.75
    assert table.loc[("image", "all"), "style_accuracy"] > table.loc[("base", "all"), "style_accuracy"]
    # Grey captions name the process only: no style or motion to score.
    reference = table.loc[("reference", "all")]
    assert np.isnan(reference["style_accuracy"]) and np.isnan(reference["motion_accuracy"])
    assert reference["scene_accuracy"] == accuracy(
        evaluator.predict(np.stack([c.frames for c in in_world["references"]])),
        [starter_world.expected_labels(c.caption) for c in in_world["references"]], "scene")
    predictions = in_world["predictions"].set_index(["variant", "prompt_id"])
    assert len(predictions) == 10
    assert predictions.loc[("image", "p1"), "expected_motion"] == expected[1]["motion"]
    assert pd.isna(predictions.loc[("reference", "ref0"), "expected_style"])


def test_report_has_the_in_world_section_after_the_results(project, in_world, tmp_path):
    reporting = project / "data/08_reporting"
    summary = pd.read_csv(reporting / "evaluation_summary.csv")
    metrics = pd.read_csv(reporting / "evaluation_metrics.csv")
    models = json.loads((reporting / "evaluation_models.json").read_text())
    prompts = build_prompt_table({"prompts": [{"id": p, "text": p, "process": "milling", "split": "seen"}
                                              for p in PROMPT_IDS], "processes": {"milling": ["mill"]}})
    # As the catalog hands them over: written to CSV and read back (None labels come back as NaN).
    tables = {}
    for name in ("table", "predictions"):
        in_world[name].to_csv(tmp_path / f"{name}.csv", index=False)
        tables[name] = pd.read_csv(tmp_path / f"{name}.csv")
    report, page = build_report(summary, metrics, prompts, models, {}, {}, tables["table"], tables["predictions"],
                                {})
    assert report.index("## Results") < report.index("## In-world metrics") < report.index("## Seen vs held-out")
    image = in_world["table"].set_index(["variant", "split"]).loc[("image", "all")]
    row = "| +image LoRA | all | 4 | " + " | ".join(f"{100 * image[f'{k}_accuracy']:.0f}%"
                                                     for k in ("style", "scene", "motion")) + " |"
    assert row in report
    assert "| reference clips (ceiling) | all | 2 | – | " in report  # grey captions: no style to score
    first = in_world["predictions"].iloc[0]  # p0's grey clip; its caption states scene, style and motion
    assert (first["variant"], first["prompt_id"]) == ("base", "p0")
    cells = [f"{first[f'predicted_{k}']} ✓" if first[f"predicted_{k}"] == first[f"expected_{k}"]
             else f"{first[f'predicted_{k}']} ✗ (expected {first[f'expected_{k}']})" for k in ("scene", "style", "motion")]
    assert "| p0 | base | 0 | " + " | ".join(cells) + " |" in report
    for text in (report, page):
        assert "reported alongside, not instead of, CLIP-T and CLIP-F" in text
        assert "In-world labels per prompt" in text
    assert f"<td>{100 * image['style_accuracy']:.0f}%</td>" in page
