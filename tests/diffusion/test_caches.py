"""The latent and text caches: streamed stills and clips give the cache of the stacked arrays, in bounded memory."""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from machining_t2v.diffusion.caches import build_cache, images_to_tensor
from machining_t2v.fixtures.tiny_model import build_tiny_model
from machining_t2v.models.loading import load_base_model
from machining_t2v.training.finetune import collect_captioned_clips, collect_captioned_stills


def test_stills_streamed_from_the_dataset_give_the_cache_of_the_stacked_stills(tmp_path):
    base = load_base_model(str(build_tiny_model(tmp_path / "tiny-sd")))
    rng = np.random.default_rng(0)
    pixels = {f"s{i:02d}": rng.integers(0, 256, (16, 16, 3), np.uint8) for i in range(20)}  # two VAE batches
    captions = pd.DataFrame({"sample_id": list(pixels), "caption": [f"mtv still {i % 3}" for i in range(20)]})
    stills, texts = collect_captioned_stills({k: (lambda v=v: Image.fromarray(v)) for k, v in pixels.items()},
                                             captions)
    assert stills.shape == (20, 16, 16, 3) and len(stills) == 20
    streamed = build_cache(base.tokenizer, base.text_encoder, base.vae, stills, texts)
    stacked = np.stack([pixels[sample_id] for sample_id in sorted(pixels)])
    in_memory = build_cache(base.tokenizer, base.text_encoder, base.vae, stacked, texts)
    assert torch.equal(streamed.latents, in_memory.latents)
    assert torch.equal(streamed.text_embeddings, in_memory.text_embeddings)
    mixed = {"a": lambda: Image.new("RGB", (16, 16)), "b": lambda: Image.new("RGB", (32, 32))}
    with pytest.raises(ValueError, match=r"'stills' dataset mixes frame sizes"):
        collect_captioned_stills(mixed, pd.DataFrame({"sample_id": ["a", "b"], "caption": ["x", "y"]}))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return load_base_model(str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd")))


def test_clips_streamed_from_the_dataset_give_the_cache_of_the_stacked_clips(tiny_base):
    rng = np.random.default_rng(0)
    pixels = {f"c{i}_clip000": rng.integers(0, 256, (6 + i % 3, 16, 16, 3), np.uint8) for i in range(7)}
    captions = pd.DataFrame({"sample_id": list(pixels), "caption": [f"mtv caption {i % 2}" for i in range(7)]})
    clips, texts = collect_captioned_clips({k: (lambda v=v: v) for k, v in pixels.items()}, captions, 6)
    streamed = build_cache(tiny_base.tokenizer, tiny_base.text_encoder, tiny_base.vae, clips, texts)
    stacked = np.stack([pixels[sample_id][:6] for sample_id in sorted(pixels)])
    in_memory = build_cache(tiny_base.tokenizer, tiny_base.text_encoder, tiny_base.vae, stacked, texts)
    # What the cache held before clips were streamed: all frames in one array, 16 per VAE batch
    # (so batches span clip boundaries here, as they did then).
    vae, flat = tiny_base.vae, stacked.reshape(-1, 16, 16, 3)
    with torch.no_grad():
        before = torch.cat([vae.encode(images_to_tensor(flat[start : start + 16])).latent_dist.mode()
                            * vae.config.scaling_factor for start in range(0, len(flat), 16)])
    before = before.reshape(7, 6, *before.shape[1:]).movedim(1, 2)
    assert streamed.latents.shape == (7, 4, 6, 2, 2)
    assert torch.equal(streamed.latents, before) and torch.equal(in_memory.latents, before)
    assert torch.equal(streamed.text_embeddings, in_memory.text_embeddings)
    assert torch.equal(streamed.empty_text_embedding, in_memory.empty_text_embedding)


def test_clips_are_never_all_in_memory_at_once(tiny_base):
    """A large clip set trains with bounded RAM: at most two clips' pixels are alive at any time."""
    alive: set[str] = set()
    most_alive, loads = 0, 0

    def loader(sample_id):
        def load():
            nonlocal most_alive, loads
            clip = np.full((16, 16, 16, 3), len(alive), np.uint8)
            alive.add(sample_id)
            weakref.finalize(clip, alive.discard, sample_id)
            most_alive, loads = max(most_alive, len(alive)), loads + 1
            return clip
        return load

    ids = [f"c{i:03d}_clip000" for i in range(40)]
    captions = pd.DataFrame({"sample_id": ids, "caption": ["mtv milling"] * len(ids)})
    clips, texts = collect_captioned_clips({sample_id: loader(sample_id) for sample_id in ids}, captions, None)
    assert clips.shape == (40, 16, 16, 16, 3) and most_alive == 1 and loads == 40
    cache = build_cache(tiny_base.tokenizer, tiny_base.text_encoder, tiny_base.vae, clips, texts)
    assert cache.latents.shape == (40, 4, 16, 2, 2)
    assert most_alive <= 2 and loads == 80 and not alive
