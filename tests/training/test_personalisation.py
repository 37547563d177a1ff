"""The image_ft methods on the tiny model: textual inversion, DreamBooth-LoRA with prior preservation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from machining_t2v.diffusion.loss import _per_sample_mse, prior_preservation_loss
from machining_t2v.kedro_glue.datasets import NOT_TRAINED, EmbeddingDataset, LoraFolderDataset
from machining_t2v.models.loading import load_base_model
from machining_t2v.pipelines.image_ft.nodes import train_image_lora
from machining_t2v.training import textual_inversion as ti
from machining_t2v.training.dreambooth import class_prior_images

TOKEN = "<mtv-machine>"


def _stills_and_captions(count: int = 4, size: int = 32):
    rng = np.random.default_rng(0)
    pixels = {f"s{i}": rng.integers(0, 256, (size, size, 3), np.uint8) for i in range(count)}
    stills = {key: (lambda value=value: Image.fromarray(value)) for key, value in pixels.items()}
    captions = pd.DataFrame({"sample_id": list(pixels), "caption": [f"mtv milling still {i % 2}" for i in range(count)]})
    return stills, captions


def _params(tmp_path, method: str, **overrides):
    params = {
        "method": method,
        "lora": {"rank": 4, "alpha": 4, "dropout": 0.0, "target_modules": "default"},
        "loss": {"caption_dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 2, "learning_rate": 5e-2, "lr_scheduler": "constant",
                     "checkpoint_every": 2, "seed": 0},
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "validation": {"every": 0, "batch_size": 2, "prompts": ["mtv milling"], "num_inference_steps": 1,
                       "guidance_scale": 1.0, "seed": 0},
        "dreambooth": {"class_prompt": "a machine", "num_class_images": 2, "prior_loss_weight": 1.0,
                       "guidance_scale": 1.0, "num_inference_steps": 1, "seed": 0,
                       "class_data_dir": str(tmp_path / "class_images")},
        "textual_inversion": {"placeholder_token": TOKEN, "initializer_token": "machine"},
    }
    for key, value in overrides.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    return params


def _run(tiny_dir, tmp_path, method, **overrides):
    stills, captions = _stills_and_captions()
    base = load_base_model(str(tiny_dir))
    outputs = train_image_lora(stills, captions, base, {"clip_skip": 1}, _params(tmp_path, method, **overrides),
                               trigger="mtv")
    return base, outputs


# --------------------------------------------------------------------------- textual inversion


def test_a_placeholder_token_the_tokenizer_knows_is_refused(tiny_dir):
    base = load_base_model(str(tiny_dir))
    for known in ("machine", "<|endoftext|>"):
        with pytest.raises(ValueError, match=rf"placeholder_token '{known}' is already in the tokenizer's vocabulary"):
            ti.add_placeholder_token(base.tokenizer, base.text_encoder, known, "machine")
    with pytest.raises(ValueError, match="initializer_token 'milling machine' is 2 tokens"):
        ti.add_placeholder_token(base.tokenizer, base.text_encoder, TOKEN, "milling machine")


def test_textual_inversion_trains_only_the_new_embedding(tiny_dir, tmp_path):
    before = load_base_model(str(tiny_dir))
    base, (lora, grids, summary, dreambooth, embedding) = _run(tiny_dir, tmp_path, "textual_inversion")
    assert lora is NOT_TRAINED and dreambooth is NOT_TRAINED
    assert embedding.token == TOKEN and embedding.replaces == "mtv" and embedding.vector.shape == (before.text_encoder.config.hidden_size,)
    initial = before.text_encoder.get_input_embeddings().weight[before.tokenizer.encode("machine",
                                                                                        add_special_tokens=False)[0]]
    assert not torch.allclose(embedding.vector, initial)  # it learned
    assert summary["method"] == "textual_inversion" and summary["steps"] == 4
    # Everything else is as it was.
    table = base.text_encoder.get_input_embeddings()
    assert torch.equal(table.frozen.weight, before.text_encoder.get_input_embeddings().weight)
    for (name, value), (_, old) in zip(base.unet.state_dict().items(), before.unet.state_dict().items(), strict=True):
        assert torch.equal(value, old), name
    assert list(grids) == ["step_000004"]
    assert embedding.prompt("mtv turning on a lathe") == f"{TOKEN} turning on a lathe"


def test_textual_inversion_resumes_bit_identically(tiny_dir, tmp_path):
    _, (*_, whole) = _run(tiny_dir, tmp_path / "whole", "textual_inversion")
    _run(tiny_dir, tmp_path / "cut", "textual_inversion", training={"max_steps": 2})
    _, (_, _, summary, _, resumed) = _run(tiny_dir, tmp_path / "cut", "textual_inversion",
                                          training={"resume": "latest"})
    assert summary["resumed_from"].endswith("checkpoint-2") and torch.equal(whole.vector, resumed.vector)


def test_the_embedding_changes_only_prompts_holding_the_token_and_round_trips_through_diffusers(tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    width = load_base_model(str(tiny_dir)).text_encoder.config.hidden_size
    vector = torch.randn(width, generator=torch.Generator().manual_seed(0))
    dataset = EmbeddingDataset(str(tmp_path / "embedding"))
    from machining_t2v.kedro_glue.datasets import TrainedEmbedding

    dataset.save(TrainedEmbedding(token=TOKEN, vector=vector, replaces="mtv", info={"steps": 4}))
    loaded = dataset.load()
    assert loaded.token == TOKEN and torch.equal(loaded.vector, vector) and loaded.replaces == "mtv"
    a1111 = tmp_path / "embedding" / "mtv-machine.safetensors"
    from safetensors.torch import load_file

    assert torch.equal(load_file(a1111)["emb_params"], vector[None])

    def render(pipe, prompt):
        return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    plain = render(pipe, "mtv milling on a machine")
    pipe.load_textual_inversion(str(loaded.path), token=TOKEN)
    token_id = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)
    assert np.array_equal(render(pipe, "mtv milling on a machine"), plain)
    with_token = render(pipe, f"{TOKEN} milling on a machine")
    assert not np.allclose(with_token, plain, atol=1e-3)
    # The A1111 copy loads the same way, under the token it is given.
    other = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    other.set_progress_bar_config(disable=True)
    other.load_textual_inversion(str(a1111), token=TOKEN)
    assert np.array_equal(render(other, f"{TOKEN} milling on a machine"), with_token)


# --------------------------------------------------------------------------- DreamBooth-LoRA


def test_the_prior_preservation_loss_matches_a_hand_computation():
    instance_prediction = torch.tensor([[[1.0, 2.0]], [[0.0, 0.0]]])
    instance_target = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])
    prior_prediction = torch.tensor([[[3.0, 1.0]], [[2.0, 2.0]]])
    prior_target = torch.tensor([[[1.0, 1.0]], [[2.0, 0.0]]])
    loss = prior_preservation_loss(_per_sample_mse(instance_prediction, instance_target),
                                   _per_sample_mse(prior_prediction, prior_target), 0.5)
    # instance: squared errors 1, 4, 1, 1 -> mean 7/4; prior: 4, 0, 0, 4 -> mean 2; 7/4 + 0.5 * 2 = 2.75.
    assert loss.item() == pytest.approx(2.75, abs=1e-7)


def test_class_prior_images_are_drawn_once_and_drawn_again_when_a_setting_changes(tmp_path):
    calls = []

    def sample(prompts):
        calls.append(len(prompts))
        return [np.full((8, 8, 3), len(calls) * 10, np.uint8) for _ in prompts]

    settings = {"class_prompt": "a lathe", "num_class_images": 3, "guidance_scale": 4.0, "base_model": "m"}
    first, generated = class_prior_images(sample, tmp_path, settings)
    again, generated_again = class_prior_images(sample, tmp_path, settings)
    assert (generated, generated_again, calls) == (3, 0, [3]) and np.array_equal(first, again)
    _, changed = class_prior_images(sample, tmp_path, {**settings, "guidance_scale": 7.5})
    assert changed == 3 and calls == [3, 3]


def test_dreambooth_lora_trains_with_prior_images_generated_once(tiny_dir, tmp_path):
    _, (lora, _, summary, dreambooth, embedding) = _run(tiny_dir, tmp_path, "dreambooth_lora")
    assert lora is NOT_TRAINED and embedding is NOT_TRAINED and dreambooth.state_dict
    assert summary["class_images_generated"] == 2 and summary["method"] == "dreambooth_lora"
    [folder] = list((tmp_path / "class_images").iterdir())
    assert sorted(p.name for p in folder.glob("*.png")) == ["class_0000.png", "class_0001.png"]
    assert json.loads((folder / "settings.json").read_text())["class_prompt"] == "a machine"
    # A rerun (fresh checkpoints) reuses them and trains the same LoRA.
    _, (_, _, summary_again, dreambooth_again, _) = _run(tiny_dir, tmp_path, "dreambooth_lora",
                                                         checkpoint_dir=str(tmp_path / "again"))
    assert summary_again["class_images_generated"] == 0
    for key, value in dreambooth.state_dict.items():
        assert torch.equal(value, dreambooth_again.state_dict[key]), key
    # Saving NOT_TRAINED leaves an earlier LoRA in its folder.
    folder = LoraFolderDataset(str(tmp_path / "lora"), kind="image", allow_missing=True)
    folder.save(dreambooth)
    folder.save(NOT_TRAINED)
    assert folder.load() is not None


@pytest.mark.parametrize(("dreambooth", "message"), [
    ({"class_prompt": "  "}, "class_prompt is empty but image_ft.method is dreambooth_lora"),
    ({"num_class_images": 0}, "num_class_images is 0 but prior_loss_weight is 1.0"),
])
def test_unusable_dreambooth_settings_are_refused_before_training(tiny_dir, tmp_path, dreambooth, message):
    with pytest.raises(ValueError, match=message):
        _run(tiny_dir, tmp_path, "dreambooth_lora", dreambooth=dreambooth)
    assert not (tmp_path / "checkpoints-dreambooth_lora").exists()


# --------------------------------------------------------------------------- the evaluation's method variants


def test_the_evaluation_runs_the_textual_inversion_variant_with_the_token_in_its_prompts(tiny_dir, tmp_path):
    from machining_t2v.fixtures.tiny_model import tiny_model_source
    from machining_t2v.kedro_glue.datasets import TrainedEmbedding
    from machining_t2v.models.loading import load_motion_adapter
    from machining_t2v.pipelines.evaluation.nodes import (
        build_prompt_table,
        generate_evaluation_clips,
    )

    width = load_base_model(str(tiny_dir)).text_encoder.config.hidden_size
    dataset = EmbeddingDataset(str(tmp_path / "embedding"))
    dataset.save(TrainedEmbedding(token=TOKEN, vector=3 * torch.randn(width, generator=torch.Generator().manual_seed(1)),
                                  replaces="mtv"))
    prompts = build_prompt_table({"prompts": [{"id": "turn", "text": "mtv turning on a lathe", "process": "turning",
                                               "split": "seen"}], "processes": {"turning": ["lathe"]}})
    params = {"variants": ["base", "dreambooth", "textual_inversion"], "lora_scales": {"image": 1.0, "motion": 1.0},
              "cpu_threads": 1, "sampling": {"num_frames": 2, "num_inference_steps": 2, "guidance_scale": 1.0,
                                             "size": 32, "scheduler": "ddim", "seed": 0, "seeds_per_prompt": 1}}
    base_model = {"pretrained": "builtin:tiny", "motion_adapter": "builtin:tiny", "clip_skip": 1}
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tiny_dir, motion_adapter=True))
    clips, record = generate_evaluation_clips(prompts, None, None, load_base_model(str(tiny_dir)), adapter, base_model,
                                              params, dreambooth_lora=None, image_embedding=dataset.load())
    assert record["variants"] == ["base", "textual_inversion"]
    assert record["skipped_variants"] == {"dreambooth": "no trained dreambooth LoRA"}
    assert record["embeddings"] == {TOKEN: str(tmp_path / "embedding" / ti.DIFFUSERS_FILENAME)}
    assert not np.array_equal(clips["base__turn__seed0"], clips["textual_inversion__turn__seed0"])
