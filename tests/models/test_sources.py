"""Checking where a base model and motion adapter come from, before a run loads anything."""

from __future__ import annotations

import pytest

from machining_t2v.models.loading import load_base_model
from machining_t2v.models.sources import TINY_MODEL, check_model_sources


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
            load_base_model(spec)
        assert str(checked.value) == str(loaded.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(ValueError) as checked:
        check_model_sources(sources(str(broken)))
    with pytest.raises(ValueError) as loaded:
        load_base_model(str(broken))
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
