"""The base model and motion adapter reach the nodes through the catalog
(machining_t2v.kedro_glue.model_datasets, bound by the ModelDatasetBinding hook)."""

from __future__ import annotations

import json

import pytest
from kedro.io import DatasetError

from machining_t2v.kedro_glue.model_datasets import BaseModelDataset, MotionAdapterDataset
from machining_t2v.models.loading import load_base_model, load_motion_adapter
from machining_t2v.models.sources import TINY_MODEL
from tests.conftest import run_pipeline


def test_a_run_loads_the_base_model_its_params_name(project, tiny_dir):
    params = {"base_model": {"pretrained": str(tiny_dir), "motion_adapter": str(tiny_dir / "motion_adapter")},
              "generate": {"num_frames": 2, "num_inference_steps": 1, "name": "clip", "size": 64}}
    run_pipeline(project, "generate", params)
    record = json.loads((project / "data/07_model_output/generated/generation.json").read_text())
    assert record["base_model"] == record["base_model_source"] == str(tiny_dir)
    assert record["motion_adapter"] == str(tiny_dir / "motion_adapter")
    # conf/base names builtin:tiny; the --params folder replaced it, so it was never built.
    assert not (project / "data/06_models/tiny-sd").exists()


def test_builtin_tiny_resolves_in_the_datasets_only(tiny_dir):
    settings = {"pretrained": TINY_MODEL, "motion_adapter": TINY_MODEL, "tiny_model_dir": str(tiny_dir)}
    assert BaseModelDataset(base_model=settings).load().source == str(tiny_dir)
    adapter = MotionAdapterDataset(base_model=settings).load()
    assert adapter.config.motion_max_seq_length > 0
    with pytest.raises(ValueError, match="tiny_model_source"):
        load_base_model(TINY_MODEL)
    with pytest.raises(ValueError, match="tiny_model_source"):
        load_motion_adapter(TINY_MODEL)


def test_an_unbound_or_saved_model_dataset_is_an_error():
    with pytest.raises(DatasetError, match="bind_model_datasets"):
        BaseModelDataset().load()
    with pytest.raises(DatasetError, match="read-only"):
        MotionAdapterDataset(base_model={"motion_adapter": TINY_MODEL}).save(object())
