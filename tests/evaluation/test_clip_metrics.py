"""CLIP-T / CLIP-F with the offline stand-in CLIP (random weights: checks the computation,
not any quality)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPModel

from machining_t2v.evaluation.clip_metrics import (
    STANDIN_CLIP,
    ClipScorer,
    check_clip_source,
    clip_f,
    clip_t,
    load_clip_scorer,
)
from machining_t2v.fixtures.standin_clip import build_standin_clip, standin_clip_exists


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clip") / "standin"


@pytest.fixture(scope="module")
def scorer(standin_dir) -> ClipScorer:
    return load_clip_scorer(STANDIN_CLIP, standin_dir)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Eight varied frames: noise, flat colours, gradients, so cosines to a prompt differ."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(8, 48, 80, 3), dtype=np.uint8)
    clip[2] = (30, 200, 90)
    clip[3] = 255
    clip[4] = np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None]
    clip[5] //= 5
    return clip


def test_standin_is_built_once_and_loads_through_from_pretrained(standin_dir, scorer):
    assert scorer.is_standin and scorer.source == STANDIN_CLIP
    assert "measure nothing" in scorer.label
    assert standin_clip_exists(standin_dir, seed=0)
    weights = standin_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_standin_clip(standin_dir) == standin_dir
    assert weights.stat().st_mtime_ns == stamp  # not rebuilt
    # The same folder loads as a plain local model, and is still recognised as the stand-in.
    by_path = load_clip_scorer(str(standin_dir))
    assert by_path.is_standin and by_path.source == str(standin_dir)
    reloaded = CLIPModel.from_pretrained(standin_dir, use_safetensors=True)
    for (name, a), (_, b) in zip(
        scorer.model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_missing_or_foreign_folders_are_refused(tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(FileNotFoundError, match="no_such_clip"):
        load_clip_scorer(str(missing))
    with pytest.raises(ValueError, match="standin_dir"):
        load_clip_scorer(STANDIN_CLIP)


def test_a_named_clip_that_cannot_be_loaded_is_an_error_naming_it_never_the_standin(
    tmp_path, standin_dir, scorer, monkeypatch
):
    # The network to the Hub is down here; offline mode makes the hub id fail at once
    # (huggingface_hub reads the variable when imported, so its constant is set too).
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_id = "openai/clip-vit-base-patch32-not-cached"
    for check in (check_clip_source, load_clip_scorer):
        with pytest.raises(OSError, match=f"could not load CLIP model '{hub_id}'.*evaluation.clip_model"):
            check(hub_id)
        with pytest.raises(FileNotFoundError, match="CLIP model folder not found: .*no_such_clip"):
            check(str(tmp_path / "no_such_clip"))
    # A folder that is not a whole CLIP: an empty one, a text encoder alone (whose weights would
    # otherwise load into a CLIPModel with a random vision tower) and weights that lack tensors.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"CLIP model {empty} cannot be loaded: no config.json"):
        load_clip_scorer(str(empty))
    text_only = tmp_path / "text_only"
    scorer.model.text_model.save_pretrained(text_only)
    with pytest.raises(ValueError, match="text_only cannot be loaded: config.json has model_type"):
        check_clip_source(str(text_only))
    partial = tmp_path / "partial"
    shutil.copytree(standin_dir, partial)
    (partial / "standin_clip.json").unlink()
    weights = load_file(partial / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")},
              partial / "model.safetensors")
    assert check_clip_source(str(partial)) == f"CLIP folder {partial}"  # the layout is whole
    with pytest.raises(ValueError, match=r"partial cannot be loaded: its weights lack \d+ of the model's"):
        load_clip_scorer(str(partial))
    assert "built when first loaded" in check_clip_source(STANDIN_CLIP)


def test_embeddings_are_unit_vectors(scorer, frames):
    images = scorer.image_embeddings(frames)
    texts = scorer.text_embeddings(["an end mill milling a block", "lathe turning a bar"])
    assert images.shape == (8, 32) and texts.shape == (2, 32)
    assert images.dtype == torch.float32
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    assert scorer.image_embeddings(frames[0]).shape == (1, 32)


def _hand_cosines(scorer: ClipScorer, frames: np.ndarray, prompt: str) -> torch.Tensor:
    """Cosines from the raw model forward, independent of ClipScorer's embedding methods."""
    tokens = scorer.tokenizer([prompt], return_tensors="pt")
    pixels = scorer.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = scorer.model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels,
        )
        # Second route: the feature methods plus manual normalisation.
        text = scorer.model.get_text_features(**tokens).pooler_output
        image = scorer.model.get_image_features(pixel_values=pixels).pooler_output
    manual = (image / image.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    forward = out.image_embeds @ out.text_embeds.T  # CLIPModel.forward normalises these
    torch.testing.assert_close(manual, forward, atol=1e-6, rtol=0)
    return forward[:, 0].double()


def test_clip_t_matches_hand_computation(scorer, frames):
    prompts = ["an end mill milling a steel block", "chuck", "x", "lathe turning a bar"]
    expected = {}
    for prompt in prompts:
        cosines = _hand_cosines(scorer, frames, prompt)
        expected[prompt] = float(100 * cosines.clamp(min=0).mean())
        assert clip_t(scorer, frames, prompt) == pytest.approx(expected[prompt], abs=1e-5)
        # The clamp matters: a plain mean would differ whenever some cosine is negative.
        if (cosines < 0).any():
            assert expected[prompt] > 100 * float(cosines.mean())
    # With random weights some prompt must have at least one positive cosine, or the check
    # above would only ever compare zeros.
    assert max(expected.values()) > 0
    # Several prompts: the mean over all (prompt, frame) pairs.
    assert clip_t(scorer, frames, prompts) == pytest.approx(
        float(np.mean(list(expected.values()))), abs=1e-5
    )


def test_clip_f(scorer, frames):
    same = np.repeat(frames[:1], 6, axis=0)
    assert clip_f(scorer, same) == pytest.approx(1.0, abs=1e-6)
    images = scorer.image_embeddings(frames).double()
    expected = float((images[:-1] * images[1:]).sum(-1).mean())
    assert clip_f(scorer, frames) == pytest.approx(expected, abs=1e-6)
    assert clip_f(scorer, frames) < 1.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_f(scorer, frames[:1])


def test_metric_modules_do_not_import_kedro():
    code = (
        "import sys, machining_t2v.evaluation.metrics, machining_t2v.evaluation.clip_metrics; "
        "sys.exit('kedro' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
