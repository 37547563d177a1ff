"""motion_ft end to end on the tiny model: temporal LoRA, file layouts, dual path, resume, bad input."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError
from safetensors.torch import load_file

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.kedro_glue.datasets import ClipStripDataset
from machining_t2v.kedro_glue.model_datasets import BaseModelDataset, MotionAdapterDataset
from machining_t2v.lora.formats import from_animatediff_motion_lora
from machining_t2v.lora.injection import lora_scale
from machining_t2v.pipelines.motion_ft.nodes import train_motion_lora
from machining_t2v.training.finetune import collect_captioned_clips
from tests.conftest import run_in_new_project

SMALL_DATA = {"sample_data": {"num_clips": 4, "width": 64, "height": 64, "min_seconds": 3.0, "max_seconds": 3.0},
              "frames": {"num_frames": 6}}
SMALL_RUN = {
    **SMALL_DATA,
    "motion_ft": {
        "training": {"max_steps": 30, "batch_size": 2, "checkpoint_every": 15, "learning_rate": 3.0e-3,
                     "lr_warmup_steps": 3},
        "validation": {"every": 15, "batch_size": 4, "num_inference_steps": 2},
    },
}
PROMPT = "mtv turn the bar on a lathe"


@pytest.fixture(scope="module")
def motion_ft_run(tmp_path_factory):
    """One real `motion_ft` run (sample data -> frames -> captions -> motion LoRA) in a throw-away project."""
    return run_in_new_project(tmp_path_factory.mktemp("motion_ft") / "project", "motion_ft", SMALL_RUN)


def _pipe(root):
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    tiny = root / "data/06_models/tiny-sd"
    adapter = MotionAdapter.from_pretrained(tiny / "motion_adapter")
    pipe = AnimateDiffPipeline.from_pretrained(tiny, motion_adapter=adapter)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_frames=6, num_inference_steps=2, height=64, width=64, generator=generator,
                output_type="np").frames[0]


def test_motion_lora_touches_only_temporal_attention(motion_ft_run):
    folder = motion_ft_run / "data/06_models/motion_lora"
    weights = load_file(folder / "pytorch_lora_weights.safetensors")
    assert weights and all("motion_modules" in key for key in weights)
    assert {"to_q", "to_k", "to_v", "to_out"} <= {key.split(".lora")[0].split(".")[-2 if key.split(".lora")[0].endswith(".0") else -1] for key in weights}
    original = load_file(folder / "motion_lora_animatediff.safetensors")
    assert len(original) == len(weights)
    assert all(".temporal_transformer." in key and ".processor." in key and not key.startswith("unet.")
               for key in original)
    info = json.loads((folder / "lora_info.json").read_text())
    assert info["kind"] == "motion" and info["mode"] == "temporal" and info["num_frames"] == 6


def test_training_loss_falls_and_videos_are_written(motion_ft_run):
    summary = json.loads((motion_ft_run / "data/08_reporting/motion_ft_summary.json").read_text())
    losses = {int(step): loss for step, loss in summary["validation_loss"].items()}
    assert sorted(losses) == [0, 15, 30]
    assert losses[30] < losses[0], losses
    assert summary["image_lora_merged"] is False  # no image_ft ran in this project
    samples = sorted(p.name for p in (motion_ft_run / "data/08_reporting/motion_ft_samples").iterdir())
    assert "step_000030_prompt0.gif" in samples and "step_000030_prompt0.mp4" in samples
    from machining_t2v.data.video_io import probe_video

    info = probe_video(motion_ft_run / "data/08_reporting/motion_ft_samples/step_000030_prompt0.mp4")
    assert info.num_frames == 6 and info.width > info.height  # base and LoRA side by side


def test_saved_lora_reloads_in_animatediff_and_changes_frames(motion_ft_run):
    pipe = _pipe(motion_ft_run)
    base = _frames(pipe)
    pipe.load_lora_weights(motion_ft_run / "data/06_models/motion_lora", adapter_name="motion")
    with_lora = _frames(pipe)
    assert np.abs(with_lora - base).mean() > 1e-3
    # The original AnimateDiff layout (alpha folded in) reloads to the same frames.
    pipe.delete_adapters("motion")
    original = load_file(motion_ft_run / "data/06_models/motion_lora/motion_lora_animatediff.safetensors")
    converted = {f"unet.{key}": value for key, value in from_animatediff_motion_lora(original).items()}
    pipe.load_lora_weights(converted, adapter_name="animatediff_layout")
    assert np.allclose(_frames(pipe), with_lora, atol=1e-4)


def test_mlflow_run_holds_motion_metrics_and_files(motion_ft_run):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{motion_ft_run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("machining_t2v").experiment_id])
    assert [run.info.run_name for run in runs] == ["motion_ft"]
    run = runs[0]
    history = client.get_metric_history(run.info.run_id, "motion_ft.loss")
    assert [m.step for m in history] == [10, 20, 30]  # motion_ft.training.log_every: 10
    assert run.data.tags["motion_ft.mode"] == "temporal"
    # The schedule the LoRA trained under: the video sampler's linear betas, not the tiny model's scaled_linear.
    assert run.data.params["motion_ft.beta_schedule"] == "linear"
    assert run.data.params["motion_ft.prediction_type"] == "epsilon"
    info = json.loads((motion_ft_run / "data/06_models/motion_lora/lora_info.json").read_text())
    assert (info["beta_schedule"], info["prediction_type"]) == ("linear", "epsilon")
    files = {a.path for a in client.list_artifacts(run.info.run_id, "motion_lora")}
    assert "motion_lora/motion_lora_animatediff.safetensors" in files
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "motion_ft_samples")}
    assert "motion_ft_samples/step_000030_prompt1.mp4" in samples


def _inputs(root):
    from kedro_datasets.partitions import PartitionedDataset

    clips = PartitionedDataset(path=str(root / "data/05_model_input/clips"),
                               dataset="machining_t2v.kedro_glue.datasets.ClipStripDataset", filename_suffix=".png").load()
    stills = PartitionedDataset(path=str(root / "data/05_model_input/stills"), dataset="pillow.ImageDataset",
                                filename_suffix=".png").load()
    return clips, stills, pd.read_csv(root / "data/05_model_input/captions.csv")


def _params(tmp_path, mode="temporal", **training):
    return {
        "mode": mode, "num_frames": None, "image_lora_scale": 0.0,
        "lora": {"rank": 4, "alpha": 4},
        "dual": {"spatial_rank": 4, "spatial_alpha": 4, "spatial_learning_rate": 1e-3, "spatial_dropout": 0.5,
                 "appearance_debias": 1.0},
        "loss": {"caption_dropout": 0.1},
        "training": {"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3, "lr_scheduler": "constant",
                     "checkpoint_every": 2, **training},
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "validation": {"every": 0, "batch_size": 2, "prompts": [PROMPT], "num_inference_steps": 1,
                       "guidance_scale": 1.0, "seed": 0},
    }


def _base_model(root):
    return {"pretrained": "builtin:tiny", "motion_adapter": "builtin:tiny",
            "tiny_model_dir": str(root / "data/06_models/tiny-sd")}


def _models(base_model):
    """The node's model inputs as a run's catalog gives them: freshly loaded, then ``base_model`` itself."""
    return (BaseModelDataset(base_model=base_model).load(), MotionAdapterDataset(base_model=base_model).load(),
            base_model)


def test_resume_gives_bit_identical_motion_lora(motion_ft_run, tmp_path):
    clips, stills, captions = _inputs(motion_ft_run)
    base_model = _base_model(motion_ft_run)
    whole, _, _, _ = train_motion_lora(clips, stills, captions, None, *_models(base_model), _params(tmp_path / "a"))
    train_motion_lora(clips, stills, captions, None, *_models(base_model), _params(tmp_path / "b", max_steps=2))
    resumed, _, _, summary = train_motion_lora(clips, stills, captions, None, *_models(base_model),
                                               _params(tmp_path / "b", resume="latest"))
    assert summary["resumed_from"].endswith("checkpoint-2")
    for key, value in whole.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_dual_path_trains_spatial_and_temporal_loras(motion_ft_run, tmp_path):
    clips, stills, captions = _inputs(motion_ft_run)
    motion, spatial, _, summary = train_motion_lora(clips, stills, captions, None, *_models(_base_model(motion_ft_run)),
                                                    _params(tmp_path, mode="dual"))
    assert summary["mode"] == "dual"
    assert motion.state_dict and all("motion_modules" in key for key in motion.state_dict)
    assert spatial.state_dict and not any("motion_modules" in key for key in spatial.state_dict)
    # Both LoRAs moved away from their initialisation: lora_B starts at zero.
    assert any(value.abs().sum() > 0 for key, value in motion.state_dict.items() if "lora_B" in key)
    assert any(value.abs().sum() > 0 for key, value in spatial.state_dict.items() if "lora_B" in key)


def test_dual_path_with_image_lora_merged(motion_ft_run, tmp_path):
    """The image LoRA of image_ft is merged at its scale: the motion UNet output changes."""
    from machining_t2v.kedro_glue.datasets import TrainedLora
    from machining_t2v.lora.injection import (
        IMAGE_LORA_TARGETS,
        add_lora,
        lora_state_dict,
        merge_lora,
    )
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

    base = load_base_model(tiny_model_source("builtin:tiny", motion_ft_run / "data/06_models/tiny-sd"))
    config = add_lora(base.unet, rank=4, alpha=8, target_modules=IMAGE_LORA_TARGETS, init_lora_weights=False)
    with torch.no_grad():
        for name, parameter in base.unet.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    sample = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 77, 32)
    expected = base.unet(sample, 10, encoder_hidden_states=text).sample
    image_lora = TrainedLora(state_dict=lora_state_dict(base.unet), lora_config=config.to_dict(), kind="image")
    fresh = load_base_model(tiny_model_source("builtin:tiny", motion_ft_run / "data/06_models/tiny-sd"))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", motion_ft_run / "data/06_models/tiny-sd",
                                                    motion_adapter=True))
    merged_unet = fresh.unet
    assert merge_lora(merged_unet, image_lora.state_dict, image_lora.lora_config, scale=1.0) == len(
        image_lora.state_dict) // 2
    torch.testing.assert_close(merged_unet(sample, 10, encoder_hidden_states=text).sample, expected,
                               rtol=1e-4, atol=1e-4)
    motion_unet = build_motion_unet(merged_unet, adapter)
    assert motion_unet is not None


def test_dual_path_clip_loss_keeps_the_configured_loss_options(motion_ft_run):
    """motion_ft.loss applies to both paths of the dual mode: with every sample at the noisiest
    timesteps, the clips (not only the stills) are noised only there."""
    from diffusers import DDPMScheduler

    from machining_t2v.diffusion.caches import TrainingCache
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
    from machining_t2v.pipelines.motion_ft.nodes import _adapter_parameters, dual_path_loss
    from machining_t2v.training import LossRandomness

    class TimestepRecordingScheduler(DDPMScheduler):
        def add_noise(self, original_samples, noise, timesteps):
            self.noised.append((original_samples.shape[2], timesteps.clone()))  # frames per sample
            return super().add_noise(original_samples, noise, timesteps)

    tiny = motion_ft_run / "data/06_models/tiny-sd"
    unet = build_motion_unet(load_base_model(tiny_model_source("builtin:tiny", tiny)).unet,
                             load_motion_adapter(tiny_model_source("builtin:tiny", tiny, motion_adapter=True)))
    add_lora(unet, rank=2, alpha=2, target_modules=MOTION_LORA_TARGETS, adapter_name="motion")
    add_lora(unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS, adapter_name="spatial")
    unet.set_adapters(["motion", "spatial"])
    scheduler = TimestepRecordingScheduler(num_train_timesteps=1000)
    scheduler.noised = []
    generator = torch.Generator().manual_seed(0)
    clips = TrainingCache(torch.randn(4, 4, 3, 8, 8, generator=generator), torch.randn(4, 77, 32, generator=generator),
                          torch.zeros(1, 77, 32))
    stills = TrainingCache(torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 77, 32, generator=generator),
                           torch.zeros(1, 77, 32))
    config = LossConfig(top_timestep_share=1.0, top_timestep_window=100)
    compute_loss = dual_path_loss(clips, stills, scheduler, config, _adapter_parameters(unet, "motion"),
                                  _adapter_parameters(unet, "spatial"), debias=1.0, spatial_dropout=0.0, device="cpu")
    for step in range(1, 4):
        loss = compute_loss(unet, torch.arange(4), LossRandomness(0, step, 0, range(4)), lambda part: part.backward())
        assert torch.isfinite(loss)
    # Stills go through the motion UNet as one-frame clips.
    clip_timesteps = torch.cat([t for frames, t in scheduler.noised if frames == 3])
    still_timesteps = torch.cat([t for frames, t in scheduler.noised if frames == 1])
    assert len(clip_timesteps) == 12 and len(still_timesteps) == 12
    assert clip_timesteps.min() >= 900 and still_timesteps.min() >= 900


def _dual_setup(root, checkpointing=False):
    """A tiny motion UNet with a motion and a spatial LoRA (non-zero, so both change the output) and caches."""
    from machining_t2v.diffusion.caches import TrainingCache
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
    from machining_t2v.pipelines.motion_ft.nodes import _adapter_parameters
    from machining_t2v.training.finetune import enable_gradient_checkpointing, seeded_lora_init

    tiny = root / "data/06_models/tiny-sd"
    unet = build_motion_unet(load_base_model(tiny_model_source("builtin:tiny", tiny)).unet,
                             load_motion_adapter(tiny_model_source("builtin:tiny", tiny, motion_adapter=True)))
    unet.requires_grad_(False)
    with seeded_lora_init(0):
        add_lora(unet, rank=2, alpha=2, target_modules=MOTION_LORA_TARGETS, adapter_name="motion",
                 init_lora_weights=False)
        add_lora(unet, rank=2, alpha=2, target_modules=IMAGE_LORA_TARGETS, adapter_name="spatial",
                 init_lora_weights=False)
    unet.set_adapters(["motion", "spatial"])
    motion, spatial = _adapter_parameters(unet, "motion"), _adapter_parameters(unet, "spatial")
    for parameter in motion + spatial:
        parameter.requires_grad_(True)
    if checkpointing:
        assert enable_gradient_checkpointing(unet) > 0
    unet.train()
    generator = torch.Generator().manual_seed(0)
    clips = TrainingCache(torch.randn(2, 4, 3, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator),
                          torch.zeros(1, 77, 32))
    stills = TrainingCache(torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 77, 32, generator=generator),
                           torch.zeros(1, 77, 32))
    return unet, motion, spatial, clips, stills


def _dual_gradients(root, spatial_dropout, checkpointing=False, only=None):
    """Gradients of one dual step; ``only`` = "spatial" | "temporal" keeps just that path's backward."""
    from diffusers import DDPMScheduler

    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.pipelines.motion_ft.nodes import dual_path_loss
    from machining_t2v.training import LossRandomness

    unet, motion, spatial, clips, stills = _dual_setup(root, checkpointing)
    order = ["spatial", "temporal"] if spatial_dropout < 1 else ["temporal"]
    calls = []

    def backward(part):
        name = order[len(calls)]
        calls.append(name)
        if only in (None, name):
            part.backward()

    compute_loss = dual_path_loss(clips, stills, DDPMScheduler(num_train_timesteps=1000), LossConfig(), motion,
                                  spatial, debias=1.0, spatial_dropout=spatial_dropout, device="cpu")
    compute_loss(unet, torch.arange(2), LossRandomness(0, 1, 0, range(2)), backward)
    return ([None if p.grad is None else p.grad.clone() for p in motion],
            [None if p.grad is None else p.grad.clone() for p in spatial], len(calls))


def test_dual_path_routes_each_loss_to_its_own_lora(motion_ft_run):
    """MotionDirector: the spatial LoRA learns from the still loss only, the temporal LoRA from the clip loss only."""
    motion, spatial, parts = _dual_gradients(motion_ft_run, spatial_dropout=0.0)
    assert parts == 2
    motion_from_stills, spatial_from_stills, _ = _dual_gradients(motion_ft_run, 0.0, only="spatial")
    motion_from_clips, spatial_from_clips, _ = _dual_gradients(motion_ft_run, 0.0, only="temporal")
    # The clip loss reaches no spatial weight, the still loss no temporal weight.
    assert all(grad is None or not grad.any() for grad in spatial_from_clips)
    assert all(grad is None or not grad.any() for grad in motion_from_stills)
    for grad, expected in zip(spatial, spatial_from_stills, strict=True):
        torch.testing.assert_close(grad, expected)
    for grad, expected in zip(motion, motion_from_clips, strict=True):
        torch.testing.assert_close(grad, expected)
    assert any(grad.abs().sum() > 0 for grad in spatial) and any(grad.abs().sum() > 0 for grad in motion)


def test_dual_path_skips_the_still_loss_when_the_spatial_lora_is_dropped(motion_ft_run):
    motion, spatial, parts = _dual_gradients(motion_ft_run, spatial_dropout=1.0)
    assert parts == 1  # the clip loss only
    assert all(grad is None for grad in spatial)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in motion)


def test_dual_path_gradients_are_the_same_under_gradient_checkpointing(motion_ft_run):
    """Checkpointing recomputes each block in backward with the LoRA scales its forward used."""
    plain_motion, plain_spatial, _ = _dual_gradients(motion_ft_run, spatial_dropout=0.0)
    ckpt_motion, ckpt_spatial, _ = _dual_gradients(motion_ft_run, spatial_dropout=0.0, checkpointing=True)
    for grad, expected in zip(ckpt_motion + ckpt_spatial, plain_motion + plain_spatial, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_motion_lora_trains_under_the_video_samplers_schedule(motion_ft_run, tmp_path):
    """The tiny model's own config is scaled_linear (as SD1.5's); the motion LoRA trains and records linear."""
    from diffusers import DDPMScheduler

    assert DDPMScheduler.from_pretrained(motion_ft_run / "data/06_models/tiny-sd", subfolder="scheduler").config[
        "beta_schedule"] == "scaled_linear"
    clips, stills, captions = _inputs(motion_ft_run)
    params = _params(tmp_path)
    params["training"]["max_steps"] = 1
    motion, _, _, summary = train_motion_lora(clips, stills, captions, None, *_models(_base_model(motion_ft_run)), params)
    assert motion.info["beta_schedule"] == "linear" and summary["beta_schedule"] == "linear"
    assert motion.info["prediction_type"] == "epsilon"


def test_lora_scale_switches_an_adapter_off_and_restores_it(motion_ft_run):
    from machining_t2v.lora.injection import MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

    tiny = motion_ft_run / "data/06_models/tiny-sd"
    unet = build_motion_unet(load_base_model(tiny_model_source("builtin:tiny", tiny)).unet,
                             load_motion_adapter(tiny_model_source("builtin:tiny", tiny, motion_adapter=True)))
    add_lora(unet, rank=4, alpha=4, target_modules=MOTION_LORA_TARGETS, adapter_name="motion",
             init_lora_weights=False)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    latents, text = torch.randn(1, 4, 4, 8, 8), torch.randn(4, 77, 32)
    with_lora = unet(latents, 10, encoder_hidden_states=text).sample
    with lora_scale(unet, "motion", 0.0):
        without = unet(latents, 10, encoder_hidden_states=text).sample
    unet.disable_adapters()
    base = unet(latents, 10, encoder_hidden_states=text).sample
    unet.enable_adapters()
    torch.testing.assert_close(without, base)
    torch.testing.assert_close(unet(latents, 10, encoder_hidden_states=text).sample, with_lora)
    assert not torch.allclose(with_lora, base)


def test_clips_shorter_than_num_frames_are_refused(tmp_path):
    clip = np.zeros((4, 8, 8, 3), np.uint8)
    ClipStripDataset(filepath=str(tmp_path / "a.png")).save(clip)
    clips = {"a_clip000": lambda: clip}
    captions = pd.DataFrame({"sample_id": ["a_clip000"], "caption": ["mtv milling"]})
    with pytest.raises(ValueError, match=r"num_frames is 8 but 1 clips .* shorter"):
        collect_captioned_clips(clips, captions, num_frames=8)
    frames, texts = collect_captioned_clips(clips, captions, num_frames=3)
    assert frames.shape == (1, 3, 8, 8, 3) and len(frames) == 1 and texts == ["mtv milling"]
    np.testing.assert_array_equal(np.stack(list(frames)), clip[None, :3])


def test_clips_of_different_frame_sizes_are_refused():
    clips = {"a_clip000": lambda: np.zeros((4, 8, 8, 3), np.uint8),
             "b_clip000": lambda: np.zeros((4, 16, 16, 3), np.uint8)}
    captions = pd.DataFrame({"sample_id": ["a_clip000", "b_clip000"], "caption": ["x", "y"]})
    with pytest.raises(ValueError, match=r"'clips' dataset mixes frame sizes .*a_clip000 \(8, 8, 3\).*b_clip000"):
        collect_captioned_clips(clips, captions, num_frames=4)


def test_num_frames_above_the_adapter_limit_is_refused(motion_ft_run, tmp_path):
    clip = np.zeros((40, 64, 64, 3), np.uint8)
    captions = pd.DataFrame({"sample_id": ["a_clip000"], "caption": ["mtv milling"]})
    with pytest.raises(ValueError, match="motion_max_seq_length=32"):
        train_motion_lora({"a_clip000": lambda: clip}, {}, captions, None, *_models(_base_model(motion_ft_run)),
                          _params(tmp_path))


def test_dual_path_without_stills_is_refused(motion_ft_run, tmp_path):
    clips, _, captions = _inputs(motion_ft_run)
    with pytest.raises(ValueError, match="'dual' but the 'stills' dataset is empty"):
        train_motion_lora(clips, {}, captions, None, *_models(_base_model(motion_ft_run)), _params(tmp_path, mode="dual"))


def test_missing_motion_adapter_names_the_path(motion_ft_run, tmp_path):
    clips, stills, captions = _inputs(motion_ft_run)
    base_model = {**_base_model(motion_ft_run), "motion_adapter": str(tmp_path / "no-adapter")}
    # The catalog's dataset loads the adapter; Kedro hands the loader's error on as a DatasetError.
    with pytest.raises(DatasetError, match="no-adapter") as failed:
        train_motion_lora(clips, stills, captions, None, *_models(base_model), _params(tmp_path))
    assert isinstance(failed.value.__cause__, FileNotFoundError)
