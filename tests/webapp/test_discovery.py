"""Trained LoRAs found for the page: folders in data/06_models and LoRAs logged by real MLflow runs (SQLite)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow

from machining_t2v.webapp.discovery import find_trained_loras, local_artifact_folder, lora_kind
from tests.webapp.conftest import copy_loras


def test_the_lora_folders_in_the_models_folder_are_found_by_kind(trained_loras, tiny_dir, tmp_path):
    models = tmp_path / "06_models"
    copied = copy_loras(trained_loras, models)
    # What LoraFolderDataset writes beside the weights; a mislabelled folder name does not matter.
    (copied["motion"] / "lora_info.json").write_text(json.dumps({"kind": "motion", "steps": 300}))
    copied["motion"] = copied["motion"].rename(models / "my_lora")
    shutil.copytree(tiny_dir, models / "tiny-sd")  # a model folder, not a LoRA: not offered
    found = find_trained_loras(models, tmp_path / "mlflow.db")  # no mlflow.db: only the folders
    assert [(c.kind, c.path) for c in found.choices] == [("image", copied["image"]), ("motion", copied["motion"])]
    assert found.of_kind("motion")[0].label == f"my_lora ({models}, 300 steps)"
    assert found.notes == []


def test_each_motion_concepts_lora_is_found_under_its_name(trained_loras, tmp_path):
    models = tmp_path / "06_models"
    copy_loras(trained_loras, models)
    for concept in ("turn_towards_chuck", "mill_feed_right"):  # where motion_ft writes them
        shutil.copytree(trained_loras["motion"], models / "motion_concepts" / concept / "motion_lora")
    (models / "motion_concepts" / "empty").mkdir()  # a concept not trained yet: nothing offered
    motion = find_trained_loras(models).of_kind("motion")
    assert [(c.path.relative_to(models), c.concept) for c in motion] == [
        (Path("motion_lora"), None), (Path("motion_concepts/mill_feed_right/motion_lora"), "mill_feed_right"),
        (Path("motion_concepts/turn_towards_chuck/motion_lora"), "turn_towards_chuck")]
    assert motion[1].label == f"motion_lora of motion concept mill_feed_right ({models})"


def test_without_lora_info_the_kind_comes_from_the_layer_names(trained_loras, tmp_path):
    copied = copy_loras(trained_loras, tmp_path)
    assert not (copied["image"] / "lora_info.json").exists()
    assert (lora_kind(copied["image"]), lora_kind(copied["motion"])) == ("image", "motion")
    (copied["image"] / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    assert lora_kind(copied["image"]) is None
    assert [c.kind for c in find_trained_loras(tmp_path).choices] == ["motion"]  # the unreadable one is left out


def test_loras_logged_by_finished_mlflow_runs_are_offered_newest_first(trained_loras, tmp_path):
    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.create_experiment("machining_t2v", artifact_location=(tmp_path / "mlruns").as_uri())
    runs = []
    for name, status in (("image_ft", "FINISHED"), ("motion_ft", "FINISHED"), ("crashed", "FAILED")):
        run = client.create_run(experiment, run_name=name)
        for folder in trained_loras.values():
            client.log_artifacts(run.info.run_id, str(folder), artifact_path=folder.name)
        client.set_terminated(run.info.run_id, status=status)
        runs.append(run)
    found = find_trained_loras(tmp_path / "06_models", db)
    sources = [choice.source.split(",")[0] for choice in found.of_kind("image")]
    assert sources == ["MLflow run motion_ft", "MLflow run image_ft"]  # the failed run's LoRAs are not offered
    newest = found.of_kind("image")[0]
    assert newest.path == tmp_path / "mlruns" / runs[1].info.run_id / "artifacts" / "image_lora"
    assert (newest.path / "pytorch_lora_weights.safetensors").is_file()


def test_an_unreadable_tracking_store_is_a_note_not_a_failure(trained_loras, tmp_path):
    copy_loras(trained_loras, tmp_path / "06_models")
    (tmp_path / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    found = find_trained_loras(tmp_path / "06_models", tmp_path / "mlflow.db")
    assert len(found.choices) == 2
    assert found.notes and found.notes[0].startswith(f"The MLflow runs in {tmp_path / 'mlflow.db'} could not be read")


def test_artifact_locations_on_this_machine_are_folders(tmp_path):
    assert local_artifact_folder((tmp_path / "a b").as_uri(), Path("/project")) == tmp_path / "a b"
    assert local_artifact_folder("mlruns/1/abc/artifacts", Path("/project")) == Path("/project/mlruns/1/abc/artifacts")
    assert local_artifact_folder("s3://bucket/mlruns/1", Path("/project")) is None
