"""The notebook in notebooks/ runs from top to bottom in a real kernel (nbclient) in a project copy
that holds trained LoRAs, so it cannot rot; and it is committed without outputs."""

from __future__ import annotations

import base64
import io
import shutil

import nbformat
from nbclient import NotebookClient
from PIL import Image

from machining_t2v.fixtures.tiny_model import tiny_model_source
from machining_t2v.kedro_glue.datasets import LoraFolderDataset, TrainedLora
from machining_t2v.lora.injection import (
    IMAGE_LORA_TARGETS,
    MOTION_LORA_TARGETS,
    add_lora,
    lora_state_dict,
)
from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter

from ..conftest import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "notebooks" / "instruction_to_video.ipynb"


def save_trained_loras(tiny_dir, models_dir) -> None:
    """An image and a motion LoRA for the tiny model, written by the catalog's LoRA dataset as the
    training pipelines write theirs (every export format and lora_info.json)."""
    base = load_base_model(tiny_model_source("builtin:tiny", tiny_dir))
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tiny_dir, motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    for kind, targets in (("image", IMAGE_LORA_TARGETS), ("motion", MOTION_LORA_TARGETS)):
        config = add_lora(unet, rank=4, alpha=4.0, target_modules=targets, adapter_name=kind)
        LoraFolderDataset(path=str(models_dir / f"{kind}_lora"), kind=kind).save(TrainedLora(
            state_dict=lora_state_dict(unet, kind), lora_config=config.to_dict(), kind=kind,
            info={"base_model": "builtin:tiny", "steps": 7}))


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "%load_ext kedro.ipython" in code[0].source


def test_the_notebook_turns_an_instruction_into_a_clip_with_the_trained_loras(project, tiny_dir):
    shutil.copytree(tiny_dir, project / "data/06_models/tiny-sd")
    save_trained_loras(tiny_dir, project / "data/06_models")
    (project / "notebooks").mkdir()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs if output.output_type == "stream")
    for kind in ("image", "motion"):
        assert f"{kind} LoRA: {project / 'data/06_models' / f'{kind}_lora'}, 7 steps on builtin:tiny" in printed
    assert "mtv slot milling along X on a milling machine, aluminium workpiece" in printed
    (shown,) = [output for output in notebook.cells[-1].outputs if "image/gif" in output.get("data", {})]
    with Image.open(io.BytesIO(base64.b64decode(shown["data"]["image/gif"]))) as gif:
        assert (gif.n_frames, gif.size) == (8, (64, 64))  # generate.num_frames of conf/base, the tiny model's size
