"""image_ft end to end on the tiny model: training, file formats, resume, MLflow, bad input."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from machining_t2v.diffusion.caches import encode_frames
from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.kedro_glue.datasets import LoraFolderDataset
from machining_t2v.kedro_glue.model_datasets import BaseModelDataset
from machining_t2v.models.loading import load_base_model
from machining_t2v.pipelines.image_ft.nodes import train_image_lora
from machining_t2v.training.finetune import collect_captioned_stills
from tests.conftest import run_in_new_project

SMALL_RUN = {
    "sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 2.0, "max_seconds": 2.0},
    "image_ft": {
        "training": {"max_steps": 40, "batch_size": 4, "checkpoint_every": 20, "learning_rate": 2.0e-3,
                     "lr_warmup_steps": 5},
        "validation": {"every": 20, "batch_size": 8, "num_inference_steps": 2},
    },
}


@pytest.fixture(scope="module")
def image_ft_run(tmp_path_factory):
    """One real `image_ft` run (sample data -> frames -> captions -> LoRA) in a throw-away project."""
    return run_in_new_project(tmp_path_factory.mktemp("image_ft") / "project", "image_ft", SMALL_RUN)


def test_lora_files_in_both_formats(image_ft_run):
    folder = image_ft_run / "data/06_models/image_lora"
    diffusers_sd = load_file(folder / "pytorch_lora_weights.safetensors")
    kohya_sd = load_file(folder / "image_lora_kohya.safetensors")
    assert diffusers_sd and all(key.startswith("unet.") for key in diffusers_sd)
    assert not any("motion_modules" in key for key in diffusers_sd)
    # Every adapted module appears once per format: down, up (+ alpha for kohya).
    assert len(kohya_sd) == len(diffusers_sd) // 2 * 3
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya_sd[f"{key}.lora_down.weight"].shape[0] == 8
    assert float(kohya_sd[f"{key}.alpha"]) == 8.0
    with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["lora_adapter_metadata"])["unet.lora_alpha"] == 8
    info = json.loads((folder / "lora_info.json").read_text())
    assert info["kind"] == "image" and info["steps"] == 40 and info["base_model"].endswith("tiny-sd")


def test_fixed_batch_validation_loss_falls(image_ft_run):
    summary = json.loads((image_ft_run / "data/08_reporting/image_ft_summary.json").read_text())
    losses = {int(step): loss for step, loss in summary["validation_loss"].items()}
    assert sorted(losses) == [0, 20, 40]
    assert losses[40] < losses[0] * 0.95, losses
    assert summary["steps"] == 40 and summary["steps_per_second"] > 0 and summary["peak_memory_mb"] > 0
    grids = sorted(p.name for p in (image_ft_run / "data/08_reporting/image_ft_samples").glob("*.png"))
    assert grids == ["step_000020.png", "step_000040.png"]


def test_saved_lora_reloads_in_stable_diffusion_pipeline_and_changes_output(image_ft_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(image_ft_run / "data/06_models/tiny-sd", safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def render():
        generator = torch.Generator().manual_seed(0)
        return pipe("mtv turning on a lathe", num_inference_steps=3, height=64, width=64, generator=generator,
                    output_type="np").images[0]

    base = render()
    pipe.load_lora_weights(image_ft_run / "data/06_models/image_lora")
    with_lora = render()
    assert np.abs(with_lora - base).mean() > 1e-3
    # The LoRA the dataset loads back is the one that was saved.
    loaded = LoraFolderDataset(path=str(image_ft_run / "data/06_models/image_lora"), kind="image").load()
    assert loaded.lora_config["r"] == 8 and len(loaded.state_dict) > 0


def test_mlflow_run_holds_params_metrics_and_artifacts(image_ft_run):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{image_ft_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("machining_t2v")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_name for run in runs] == ["image_ft"]
    run = runs[0]
    assert run.data.params["image_ft.lora.rank"] == "8"
    assert run.data.params["image_ft.beta_schedule"] == "scaled_linear"  # the image model's own schedule
    assert run.data.tags["base_model"].endswith("tiny-sd")
    history = client.get_metric_history(run.info.run_id, "image_ft.loss")
    assert [m.step for m in history] == [10, 20, 30, 40]  # image_ft.training.log_every: 10
    for name in ("image_ft.validation_loss_start", "image_ft.validation_loss_end", "image_ft.steps_per_second",
                 "image_ft.peak_memory_mb"):
        assert name in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"image_lora", "image_ft_samples", "image_ft_summary.json"} <= artifacts
    lora_files = {a.path for a in client.list_artifacts(run.info.run_id, "image_lora")}
    assert {"image_lora/pytorch_lora_weights.safetensors", "image_lora/image_lora_kohya.safetensors"} <= lora_files


def _node_inputs(project_root):
    """The stills and captions a run wrote, loaded as the catalog loads them for the node."""
    from kedro_datasets.partitions import PartitionedDataset

    stills = PartitionedDataset(path=str(project_root / "data/05_model_input/stills"),
                                dataset="pillow.ImageDataset", filename_suffix=".png").load()
    return stills, pd.read_csv(project_root / "data/05_model_input/captions.csv")


def _params(tmp_path, **training):
    return {
        "lora": {"rank": 4, "alpha": 4, "dropout": 0.0, "target_modules": "default"},
        "loss": {"caption_dropout": 0.1},
        "training": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "lr_scheduler": "constant",
                     "checkpoint_every": 3, "seed": 0, **training},
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "validation": {"every": 0, "batch_size": 4, "prompts": ["mtv milling"], "num_inference_steps": 1,
                       "guidance_scale": 1.0, "seed": 0},
    }


def test_resume_gives_bit_identical_lora(image_ft_run, tmp_path):
    stills, captions = _node_inputs(image_ft_run)
    base_model = {"pretrained": "builtin:tiny", "tiny_model_dir": str(image_ft_run / "data/06_models/tiny-sd")}
    dataset = BaseModelDataset(base_model=base_model)  # a fresh base model on every load, as in a run
    uninterrupted, *_ = train_image_lora(stills, captions, dataset.load(), base_model, _params(tmp_path / "a"))
    # First half, then a fresh process-like start that resumes from the newest checkpoint.
    train_image_lora(stills, captions, dataset.load(), base_model, _params(tmp_path / "b", max_steps=3))
    resumed, _, summary, *_ = train_image_lora(stills, captions, dataset.load(), base_model,
                                           _params(tmp_path / "b", resume="latest"))
    assert summary["resumed_from"].endswith("checkpoint-3")
    assert uninterrupted.state_dict.keys() == resumed.state_dict.keys()
    for key, value in uninterrupted.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_missing_stills_or_captions_name_the_dataset():
    with pytest.raises(ValueError, match="'stills' dataset is empty"):
        collect_captioned_stills({}, pd.DataFrame({"sample_id": ["a"], "caption": ["x"]}))
    with pytest.raises(ValueError, match="'captions' dataset is empty"):
        collect_captioned_stills({"a": lambda: None}, pd.DataFrame(columns=["sample_id", "caption"]))


def test_base_model_path_errors_name_the_path(tmp_path):
    base_model = {"pretrained": str(tmp_path / "no-such-model"), "tiny_model_dir": str(tmp_path / "tiny")}
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_base_model(base_model["pretrained"])
    (tmp_path / "not-diffusers").mkdir()
    with pytest.raises(ValueError, match=r"not-diffusers.*model_index.json"):
        load_base_model(str(tmp_path / "not-diffusers"))


def test_resolution_not_divisible_by_vae_factor_is_refused(image_ft_run):
    base = load_base_model(tiny_model_source("builtin:tiny", image_ft_run / "data/06_models/tiny-sd"))
    with pytest.raises(ValueError, match="not divisible by the VAE scale factor 8"):
        encode_frames(base.vae, np.zeros((1, 60, 60, 3), np.uint8))
