"""Tests for machining_t2v.models.loading on the real tiny model (no mocks)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from machining_t2v.models import loading
from machining_t2v.models.loading import (
    TINY_MODEL,
    build_motion_unet,
    build_tiny_model,
    check_model_sources,
    load_base_model,
    load_motion_adapter,
    tiny_model_exists,
    warn_if_low_resolution,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny_model")


@pytest.fixture(scope="module")
def base(tiny_dir):
    return load_base_model(TINY_MODEL, tiny_dir)


def test_tiny_model_loads_as_real_diffusers_classes(base, tiny_dir):
    assert isinstance(base.tokenizer, CLIPTokenizer)
    assert isinstance(base.text_encoder, CLIPTextModel)
    assert isinstance(base.vae, AutoencoderKL)
    assert isinstance(base.unet, UNet2DConditionModel)
    assert isinstance(base.noise_scheduler, DDPMScheduler)
    assert base.source == str(tiny_dir)
    cfg = base.noise_scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (cfg.num_train_timesteps, cfg.prediction_type) == (1000, "epsilon")
    assert base.vae.config.scaling_factor == 0.18215
    assert base.unet.config.cross_attention_dim == base.text_encoder.config.hidden_size


def test_tiny_folder_is_a_complete_diffusers_pipeline(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "motion_adapter"):
        assert (tiny_dir / sub).is_dir(), sub
    assert list(tiny_dir.rglob("*.safetensors"))
    assert not list(tiny_dir.rglob("*.bin"))
    assert tiny_model_exists(tiny_dir)


def test_second_build_and_load_do_not_rebuild(tiny_dir):
    weights = tiny_dir / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_dir) == tiny_dir
    load_base_model(TINY_MODEL, tiny_dir)
    assert weights.stat().st_mtime_ns == before


def test_build_is_deterministic(tmp_path, base):
    other = load_base_model(TINY_MODEL, tmp_path / "again")
    for a, b in zip(base.unet.state_dict().values(), other.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_stale_tiny_model_is_rebuilt(tmp_path):
    folder = build_tiny_model(tmp_path / "tiny")
    marker = folder / loading._TINY_MARKER
    marker.write_text(json.dumps({"builder_version": -1, "seed": 0}))
    assert not tiny_model_exists(folder)
    build_tiny_model(folder)
    assert tiny_model_exists(folder)


def test_build_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to overwrite") as err:
        build_tiny_model(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_stable_diffusion_pipeline_runs_from_the_folder(tiny_dir):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_dir))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "face the steel bar on the lathe",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3)


def test_vae_downsamples_by_eight(base):
    with torch.no_grad():
        latents = base.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_tokenizer_round_trips_and_has_whole_word_tokens(base, tiny_dir):
    reloaded = CLIPTokenizer.from_pretrained(str(tiny_dir), subfolder="tokenizer")
    text = "face the steel bar on the lathe"
    ids = base.tokenizer(text).input_ids
    assert reloaded(text).input_ids == ids
    tokens = base.tokenizer.convert_ids_to_tokens(ids)
    words = text.split()
    assert tokens == ["<|startoftext|>", *[w + "</w>" for w in words], "<|endoftext|>"]
    # Unknown words still tokenise (into byte-level pieces), never to <unk>.
    odd = base.tokenizer("xyzzy widget").input_ids
    assert len(odd) > 4
    padded = base.tokenizer(text, padding="max_length", max_length=77, truncation=True)
    assert len(padded.input_ids) == 77
    assert base.tokenizer.model_max_length == 77
    with torch.no_grad():
        states = base.text_encoder(torch.tensor([padded.input_ids])).last_hidden_state
    assert states.shape == (1, 77, 32)


def test_missing_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_base_model(str(missing), tmp_path / "tiny")
    with pytest.raises(FileNotFoundError, match="no_such_dir/models/sd15"):
        load_base_model("no_such_dir/models/sd15", tmp_path / "tiny")


def test_non_diffusers_folder_raises_value_error(tmp_path):
    folder = tmp_path / "just_a_folder"
    folder.mkdir()
    (folder / "model.ckpt").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_base_model(str(folder), tmp_path / "tiny")
    message = str(err.value)
    assert str(folder) in message
    assert "model_index.json" in message and "unet/" in message
    assert "missing: model_index.json, unet/config.json" in message


def test_load_real_style_local_folder(tiny_dir):
    # A local diffusers folder given by path goes through the same loader as TINY_MODEL.
    loaded = load_base_model(str(tiny_dir), "/nonexistent/unused", torch_dtype=torch.float32)
    assert loaded.source == str(tiny_dir)
    assert loaded.unet.dtype == torch.float32


def test_motion_adapter_and_motion_unet(base, tiny_dir):
    adapter = load_motion_adapter(TINY_MODEL, tiny_dir)
    assert isinstance(adapter, MotionAdapter)
    assert tuple(adapter.config.block_out_channels) == tuple(base.unet.config.block_out_channels)
    assert adapter.config.motion_max_seq_length == 32
    motion_unet = build_motion_unet(base.unet, adapter)
    assert isinstance(motion_unet, UNetMotionModel)
    frames = 4
    latents = torch.randn(1, 4, frames, 8, 8)
    text = torch.randn(1, 6, 32).repeat_interleave(frames, 0)
    with torch.no_grad():
        out = motion_unet(latents, torch.tensor([10]), text).sample
    assert out.shape == latents.shape


def test_mismatched_motion_adapter_names_both_channel_tuples(base):
    adapter = MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
    )
    with pytest.raises(ValueError) as err:
        build_motion_unet(base.unet, adapter)
    assert "(16, 32)" in str(err.value) and "(32, 64)" in str(err.value)


def test_motion_unet_refuses_a_unet_with_lora(tiny_dir):
    from peft import LoraConfig

    fresh = load_base_model(TINY_MODEL, tiny_dir)
    fresh.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
    adapter = load_motion_adapter(TINY_MODEL, tiny_dir)
    with pytest.raises(ValueError, match="LoRA"):
        build_motion_unet(fresh.unet, adapter)


def test_load_motion_adapter_missing_path(tmp_path):
    missing = tmp_path / "adapter_missing"
    with pytest.raises(FileNotFoundError, match="adapter_missing"):
        load_motion_adapter(str(missing), tmp_path / "tiny")


def test_unreachable_hub_id_fails_fast_naming_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline mode makes the hub lookup fail at once instead of retrying over the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="machining-t2v-tests/no-such-model"):
        load_base_model("machining-t2v-tests/no-such-model", tmp_path / "tiny")
    with pytest.raises(OSError, match="machining-t2v-tests/no-such-adapter"):
        load_motion_adapter("machining-t2v-tests/no-such-adapter", tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()  # the tiny model is only built for TINY_MODEL


def test_loader_reuses_a_tiny_model_built_with_another_seed(tmp_path):
    folder = build_tiny_model(tmp_path / "tiny", seed=7)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    load_base_model(TINY_MODEL, folder)
    load_motion_adapter(TINY_MODEL, folder)
    assert weights.stat().st_mtime_ns == before
    assert json.loads((folder / loading._TINY_MARKER).read_text())["seed"] == 7
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)


def test_model_sources_are_checked_with_the_loaders_errors_and_no_weights_loaded(tmp_path, tiny_dir, monkeypatch):
    import shutil

    import huggingface_hub.constants

    def sources(pretrained, adapter=TINY_MODEL):
        return {"pretrained": pretrained, "motion_adapter": adapter, "revision": None}

    found = check_model_sources(sources(str(tiny_dir), str(tiny_dir / "motion_adapter")))
    assert found == [f"base model folder {tiny_dir}", f"motion adapter folder {tiny_dir / 'motion_adapter'}"]
    assert "built when first loaded" in check_model_sources(sources(TINY_MODEL))[0]
    # The same errors, word for word, as load_base_model / load_motion_adapter give.
    for spec in (str(tmp_path / "no_such_model"), "no_such_dir/models/sd15"):
        with pytest.raises(FileNotFoundError) as checked:
            check_model_sources(sources(spec))
        with pytest.raises(FileNotFoundError) as loaded:
            load_base_model(spec, tmp_path / "tiny")
        assert str(checked.value) == str(loaded.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(ValueError) as checked:
        check_model_sources(sources(str(broken)))
    with pytest.raises(ValueError) as loaded:
        load_base_model(str(broken), tmp_path / "tiny")
    assert str(checked.value) == str(loaded.value) and "missing: unet/config.json" in str(checked.value)
    with pytest.raises(ValueError, match="adapter_folder: expected a diffusers MotionAdapter folder"):
        (tmp_path / "adapter_folder").mkdir()
        check_model_sources(sources(TINY_MODEL, str(tmp_path / "adapter_folder")))
    # A folder with every config but no weights.
    configs_only = tmp_path / "configs_only"
    shutil.copytree(tiny_dir, configs_only, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ValueError, match=r"configs_only: no safetensors weights in unet/, vae/, text_encoder/"):
        check_model_sources(sources(str(configs_only)))
    with pytest.raises(ValueError, match=r"configs_only/motion_adapter: no safetensors weights"):
        check_model_sources(sources(TINY_MODEL, str(configs_only / "motion_adapter")))
    # Hub ids: one small file is asked for; offline here, so they fail at once, naming the id.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load base model 'machining-t2v-tests/no-such-model'"):
        check_model_sources(sources("machining-t2v-tests/no-such-model"))
    with pytest.raises(OSError, match="could not load motion adapter 'machining-t2v-tests/no-such-adapter'"):
        check_model_sources(sources(TINY_MODEL, "machining-t2v-tests/no-such-adapter"))
    assert not (tmp_path / "tiny").exists()  # nothing was built


def test_training_under_half_the_native_resolution_warns_naming_both_numbers(caplog):
    # SD1.5's configs: a 64-latent UNet and a VAE with four blocks (three 2x downsamplings).
    unet_config = {"sample_size": 64}
    vae_config = {"block_out_channels": [128, 256, 512, 512]}
    assert loading.native_resolution(unet_config, vae_config) == 512
    with caplog.at_level("WARNING", logger="machining_t2v.models.loading"):
        assert warn_if_low_resolution(unet_config, vae_config, 128, "motion LoRA training")
    message = caplog.records[-1].getMessage()
    assert "motion LoRA training runs at 128 px, under half the base model's native 512 px" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="machining_t2v.models.loading"):
        assert not warn_if_low_resolution(unet_config, vae_config, 256, "motion LoRA training")
        assert not warn_if_low_resolution(unet_config, vae_config, 512, "image LoRA training")
    assert not caplog.records
    # The starter and the tiny model are native at 64 px: their 64 px default never warns.
    assert not warn_if_low_resolution({"sample_size": 8}, {"block_out_channels": [16, 32, 32, 32]}, 64, "x")


def test_a_broken_base_model_fails_the_run_before_any_data_is_prepared(project, tmp_path):
    import time

    from tests.conftest import run_pipeline, write_test_video

    write_test_video(project / "data/01_raw/videos/a.mp4", num_frames=30)
    broken = tmp_path / "my_sd15"
    (broken / "unet").mkdir(parents=True)
    (broken / "model_index.json").write_text("{}")
    (broken / "unet" / "config.json").write_text("{}")
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"{broken}: expected a diffusers folder .*missing: vae/config.json"):
        run_pipeline(project, "image_ft", {"base_model": {"pretrained": str(broken)}})
    assert time.monotonic() - start < 60
    # Not even the frames node ran.
    def written(*layers: str) -> list:
        return [path for layer in layers for path in (project / "data" / layer).rglob("*") if path.is_file()]

    assert written("02_intermediate", "03_primary", "05_model_input", "06_models", "08_reporting") == []
    # The failed run let go of the project lock: another process gets it at once.
    import subprocess
    import sys

    from machining_t2v.kedro_glue.hooks import lock_path

    grab = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)")
    assert subprocess.run([sys.executable, "-c", grab, str(lock_path(project))], timeout=60).returncode == 0

    # An evaluation CLIP that cannot be found stops a scoring pipeline the same way.
    missing_clip = tmp_path / "no_such_clip"
    with pytest.raises(FileNotFoundError, match=f"CLIP model folder not found: {missing_clip}"):
        run_pipeline(project, "evaluation", {"evaluation": {"clip_model": str(missing_clip)}})
    assert written("07_model_output", "08_reporting") == []
    # The frames pipeline does not load a model: nothing to check, it runs.
    run_pipeline(project, "frames", {"base_model": {"pretrained": str(broken)}})
    assert (project / "data/03_primary/frame_manifest.csv").is_file()
