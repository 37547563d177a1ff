"""Model cards: the facts of a LoRA, its evaluation figures and sample, written beside it (and cleared
when the LoRA is gone) by the catalog's ModelCardDataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from machining_t2v.evaluation.inworld_scoring import INWORLD_COLUMNS
from machining_t2v.evaluation.scoring import METRICS
from machining_t2v.evaluation.variants import clip_key
from machining_t2v.kedro_glue.card_datasets import ModelCardDataset
from machining_t2v.publishing.model_card import CardFacts, ModelCard, model_card_text, sample_clips

VARIANTS = ["base", "image", "motion", "both", "reference"]
EVALUATION = {
    "base_model": "models/starter", "base_model_source": "models/starter", "base_model_note": "",
    "motion_adapter": "models/starter/motion_adapter", "scheduler": "ddim", "created_utc": "2026-12-04 22:00:00",
    "sampling": {"num_frames": 8, "num_inference_steps": 20, "guidance_scale": 4.0, "size": 64, "seeds": [0, 1]},
    "clip_model": {"is_standin": True, "note": "the stand-in CLIP has random weights: its scores mean nothing"},
}
INFO = {"base_model": "models/starter", "steps": 900, "num_samples": 48, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "trigger_captions": ["mtv slot milling on a milling machine, aluminium workpiece"]}
CONFIG = {"r": 8, "lora_alpha": 8, "target_modules": "^(?!.*motion_modules).*attn.*(to_q|to_k|to_v|to_out.0)$"}


def summary() -> pd.DataFrame:
    """evaluation_summary.csv's shape: one row per variant and split, a column per metric (distinct values)."""
    rows = [{"variant": variant, "split": split, "n_clips": 8 if split == "all" else 4,
             **{metric: (v + 1) / 10 + m / 1000 + (0.5 if split == "seen" else 0) for m, metric in enumerate(METRICS)}}
            for v, variant in enumerate(VARIANTS) for split in ("all", "seen")]
    return pd.DataFrame(rows, columns=["variant", "split", "n_clips", *METRICS])


def facts(kind="image", **overrides) -> CardFacts:
    values = {"kind": kind, "info": INFO, "lora_config": CONFIG, "num_layers": 32, "trigger": "mtv", "scale": 0.8,
              "evaluation": EVALUATION, "summary": summary(), "inworld": pd.DataFrame(columns=INWORLD_COLUMNS),
              "sample_prompt": "mtv slot milling along X", "sample_seed": 0, "sample_variants": ["base", kind]}
    return CardFacts(**{**values, **overrides})


def test_the_card_states_base_adapter_trigger_training_and_scale():
    text = model_card_text(facts())
    assert text.startswith("---\ntags:\n- lora\n") and "library_name: diffusers" in text
    assert "| Adapter | LoRA rank 8, alpha 8, 32 layers (`^(?!.*motion_modules).*attn.*(to_q\\|to_k\\|to_v" in text
    for expected in ("| Base model | `models/starter` |", "LoRA rank 8, alpha 8, 32 layers",
                     "| Trigger word | `mtv` (start prompts with it) |", "48 stills of the project's videos",
                     "\"mtv slot milling on a milling machine, aluminium workpiece\"", "| Steps | 900 |",
                     "scaled_linear betas, epsilon prediction", "| Scale | 0.8 in the evaluation below |",
                     "`image_lora_kohya.safetensors`", "![sample](sample.gif)", "left to right: base, +image LoRA",
                     "--image-lora data/06_models/image_lora --scale-image 0.8"):
        assert expected in text, expected
    assert "- `comfyui_workflow.json`" not in text and "motion_lora_animatediff" not in text
    assert "(`../motion_lora/comfyui_workflow.json`)" in text


def test_the_card_shows_the_evaluation_figures_of_its_variants_with_the_standin_note():
    text = model_card_text(facts("motion", with_workflow=True,
                                 workflow_models={"checkpoint": "sd15.safetensors", "motion_module": "mm.safetensors"}))
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert header == "| metric | base | +motion LoRA | +image +motion LoRA | reference clips (ceiling) |"
    table = summary()[summary()["split"] == "all"].set_index("variant")
    row = next(line for line in text.splitlines() if line.startswith("| flicker |"))
    expected = [f"{table.loc[v, 'flicker']:.3f}" for v in ("base", "motion", "both", "reference")]
    assert row == "| flicker | " + " | ".join(expected) + " |"
    assert "| clip_t (stand-in CLIP) |" in text and "Note: the stand-in CLIP has random weights" in text
    assert "Means over 8 clips per variant" in text
    for expected in ("`comfyui_workflow.json`", "`sd15.safetensors` in `checkpoints/`",
                     "`mm.safetensors` in `animatediff_models/`", "`motion_lora_animatediff.safetensors` (this folder)"):
        assert expected in text, expected


def test_in_world_accuracies_appear_when_there_are_any():
    inworld = pd.DataFrame([{"variant": v, "split": "all", "n_clips": 8, "style_accuracy": a, "scene_accuracy": 0.25,
                             "motion_accuracy": 0.5} for v, a in (("base", 0.0), ("image", 1.0))], columns=INWORLD_COLUMNS)
    text = model_card_text(facts(inworld=inworld))
    assert "| style | 0.000 | 1.000 |" in text and "| accuracy | base | +image LoRA |" in text


def test_a_motion_concepts_card_shows_its_own_variants_and_folder():
    concept_variants = ["base", "motion:mill_feed_right", "both:mill_feed_right", "motion", "reference"]
    table = summary().assign(variant=lambda t: t["variant"].map(dict(zip(VARIANTS, concept_variants, strict=True))))
    text = model_card_text(facts("motion", summary=table, concept="mill_feed_right",
                                 folder="data/06_models/motion_concepts/mill_feed_right/motion_lora",
                                 sample_variants=["base", "motion:mill_feed_right"]))
    assert "# Motion LoRA `mill_feed_right` for machine-tool process videos" in text
    assert "one motion concept, `mill_feed_right`" in text
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert header == ("| metric | base | +motion LoRA (mill_feed_right) | +image +motion LoRA (mill_feed_right) | "
                      "reference clips (ceiling) |")  # not the plain motion LoRA's column
    row = next(line for line in text.splitlines() if line.startswith("| flicker |"))
    expected = [f"{table.set_index(['variant', 'split']).loc[(v, 'all'), 'flicker']:.3f}"
                for v in ("base", "motion:mill_feed_right", "both:mill_feed_right", "reference")]
    assert row == "| flicker | " + " | ".join(expected) + " |"
    assert "left to right: base, +motion LoRA (mill_feed_right)" in text
    assert "--motion-lora data/06_models/motion_concepts/mill_feed_right/motion_lora --scale-motion 0.8" in text
    assert "`generate.motion_concept: mill_feed_right`" in text


def test_a_lora_left_out_of_the_evaluation_says_so_and_has_no_sample():
    table = summary()[summary()["variant"].isin(["base", "reference"])]
    text = model_card_text(facts(summary=table, sample_seed=None, sample_variants=[]))
    assert "This LoRA was not part of the last evaluation." in text
    assert "sample.gif" not in text and "| metric |" not in text


def test_the_sample_is_the_first_prompt_and_seed_of_the_variant_beside_the_base():
    frames = {clip_key(v, p, s): np.full((2, 4, 4, 3), i, np.uint8)
              for i, (v, p, s) in enumerate((v, p, s) for v in ("base", "motion") for p in ("mill", "turn") for s in (5, 6))}
    prompt_id, seed, clips = sample_clips(frames, "motion")
    assert (prompt_id, seed, list(clips)) == ("mill", 5, ["base", "motion"])
    assert clips["motion"][0, 0, 0, 0] == 4 and clips["base"][0, 0, 0, 0] == 0
    with pytest.raises(ValueError, match="no evaluation clip of variant 'image'"):
        sample_clips(frames, "image")


def test_the_dataset_writes_the_card_beside_the_lora_and_clears_it_when_the_lora_is_gone(tmp_path):
    folder = tmp_path / "motion_lora"
    folder.mkdir()
    (folder / "motion_lora_animatediff.safetensors").write_bytes(b"weights")  # the LoRA stays untouched
    sample = np.random.default_rng(0).integers(0, 255, (5, 16, 34, 3), dtype=np.uint8)
    dataset = ModelCardDataset(path=str(folder), fps=8)
    assert not dataset.exists()
    dataset.save(ModelCard(readme="# card\n", sample=sample, workflow={"1": {"class_type": "KSampler", "inputs": {}}}))
    assert (folder / "README.md").read_text() == "# card\n"
    assert json.loads((folder / "comfyui_workflow.json").read_text())["1"]["class_type"] == "KSampler"
    with Image.open(folder / "sample.gif") as gif:
        # 8 fps = 125 ms a frame, which GIF stores in hundredths of a second
        assert (gif.n_frames, gif.size, gif.info["loop"], gif.info["duration"]) == (5, (34, 16), 0, 120)
    loaded = dataset.load()
    assert loaded.readme == "# card\n" and loaded.sample.shape == (5, 16, 34, 3)
    dataset.save(ModelCard(readme="# card without workflow\n", sample=sample))
    assert not (folder / "comfyui_workflow.json").exists() and (folder / "sample.gif").is_file()
    dataset.save(ModelCard())
    assert sorted(p.name for p in folder.iterdir()) == ["motion_lora_animatediff.safetensors"]
    with pytest.raises(Exception, match="README.md does not exist: run the evaluation pipeline"):
        dataset.load()
