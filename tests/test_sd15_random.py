"""The random full-size SD1.5 + AnimateDiff v1-5-3 fixture, checked on the meta device (nothing allocated).

The folder build and the end-to-end runs on it are in tests/system/test_real_model_path.py (slow).
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from machining_t2v.fixtures.sd15_random import (
    SPATIAL_ATTENTION_PROJECTIONS,
    TEMPORAL_ATTENTION_PROJECTIONS,
    build_sd15_random_components,
    build_sd15_random_folder,
)
from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
from machining_t2v.models.loading import build_motion_unet


def _lora_layers(model, adapter: str) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer) and adapter in module.lora_A]


def test_project_lora_targets_hit_sd15_and_v153_counts_on_meta_device():
    parts = build_sd15_random_components(device="meta", parts=("unet", "motion_adapter", "text_encoder"))
    assert parts["unet"].device.type == "meta"
    assert sum(p.numel() for p in parts["unet"].parameters()) == pytest.approx(859.5e6, rel=0.01)
    assert parts["text_encoder"].config.num_hidden_layers == 12
    assert len(parts["tokenizer"]) <= parts["text_encoder"].config.vocab_size == 49408
    assert parts["scheduler"].config.beta_schedule == "scaled_linear"
    assert parts["motion_adapter"].config.use_motion_mid_block is False
    with torch.device("meta"):  # from_unet2d builds a fresh model and copies weights into it
        unet = build_motion_unet(parts["unet"], parts["motion_adapter"])
    add_lora(unet, rank=4, alpha=4, target_modules=IMAGE_LORA_TARGETS, adapter_name="image")
    add_lora(unet, rank=4, alpha=4, target_modules=MOTION_LORA_TARGETS, adapter_name="motion")
    spatial, temporal = _lora_layers(unet, "image"), _lora_layers(unet, "motion")
    assert len(spatial) == SPATIAL_ATTENTION_PROJECTIONS == 128
    assert len(temporal) == TEMPORAL_ATTENTION_PROJECTIONS == 160
    assert not any("motion_modules" in name for name in spatial)
    assert all(".motion_modules." in name for name in temporal)
    assert not any(name.startswith("mid_block.motion_modules") for name in temporal)


def test_unknown_part_and_foreign_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown parts"):
        build_sd15_random_components(device="meta", parts=("unet", "safety_checker"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        build_sd15_random_folder(tmp_path / "mine")


def test_product_code_never_imports_the_fixtures():
    import ast
    from pathlib import Path

    import machining_t2v

    package = Path(machining_t2v.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if "fixtures" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.startswith("machining_t2v.fixtures") for name in names):
                offenders.append(str(path.relative_to(package)))
    assert not offenders
