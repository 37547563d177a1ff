"""Clip skip: the text state of the right layer, the same in the training cache and the pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from machining_t2v.diffusion.caches import build_cache
from machining_t2v.diffusion.sampling import image_pipeline
from machining_t2v.diffusion.text_encoding import (
    check_clip_skip,
    prompt_embeddings,
    text_hidden_states,
)
from machining_t2v.models.loading import load_base_model

PROMPTS = ["mtv slot milling on a milling machine", "mtv turning on a lathe"]


@pytest.fixture(scope="module")
def base(tiny_dir):
    return load_base_model(str(tiny_dir))


def _ids(base, prompts=PROMPTS) -> torch.Tensor:
    return base.tokenizer(prompts, padding="max_length", max_length=base.tokenizer.model_max_length,
                          return_tensors="pt").input_ids


@torch.no_grad()
def test_clip_skip_gives_the_normed_output_of_the_layer_counted_from_the_end(base):
    encoder = base.text_encoder
    layers = encoder.encoder.layers
    assert len(layers) == 2
    outputs = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out[0] if isinstance(
        out, tuple) else out)) for n, layer in enumerate(layers)]
    try:
        last = text_hidden_states(encoder, _ids(base), clip_skip=1)
        before_last = text_hidden_states(encoder, _ids(base), clip_skip=2)
    finally:
        for hook in hooks:
            hook.remove()
    norm = encoder.final_layer_norm
    assert torch.equal(last, encoder(_ids(base))[0])  # clip_skip 1 is what the cache used before
    assert torch.allclose(last, norm(outputs[1]), atol=1e-6)
    assert torch.allclose(before_last, norm(outputs[0]), atol=1e-6)
    assert not torch.allclose(before_last, last, atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_the_pipelines_condition_on_the_state_training_cached(base, clip_skip):
    cache = build_cache(base.tokenizer, base.text_encoder, base.vae, np.zeros((2, 16, 16, 3), np.uint8), PROMPTS,
                        clip_skip=clip_skip)
    pipe = image_pipeline(base, base.unet)
    for number, prompt in enumerate(PROMPTS):
        embeds = prompt_embeddings(pipe, prompt, None, clip_skip)
        assert torch.allclose(cache.text_embeddings[number : number + 1], embeds["prompt_embeds"], atol=1e-6)
        assert torch.allclose(cache.empty_text_embedding, embeds["negative_prompt_embeds"], atol=1e-6)
    if clip_skip == 1:  # what the pipeline encodes itself from the text: today's sampling, exactly
        own, own_negative = pipe.encode_prompt(PROMPTS[0], "cpu", 1, True, negative_prompt=None)
        embeds = prompt_embeddings(pipe, PROMPTS[0], None, 1)
        assert torch.equal(own, embeds["prompt_embeds"]) and torch.equal(own_negative, embeds["negative_prompt_embeds"])


def test_a_clip_skip_beyond_the_text_encoders_layers_is_refused(base, tiny_dir):
    from machining_t2v.fixtures.tiny_model import tiny_model_source
    from machining_t2v.generation.generator import build_generator
    from machining_t2v.models.loading import load_motion_adapter

    for bad in (3, 0, 1.5):
        with pytest.raises(ValueError, match=rf"base_model.clip_skip is {bad} but must be .* from 1 .* to 2, the "
                                             "number of layers of this text encoder"):
            check_clip_skip(base.text_encoder, bad)
    with pytest.raises(ValueError, match="base_model.clip_skip is 3"):
        build_cache(base.tokenizer, base.text_encoder, base.vae, np.zeros((1, 16, 16, 3), np.uint8), ["x"],
                    clip_skip=3)
    adapter = load_motion_adapter(tiny_model_source("builtin:tiny", tiny_dir, motion_adapter=True))
    with pytest.raises(ValueError, match="base_model.clip_skip is 3"):
        build_generator(load_base_model(str(tiny_dir)), adapter, base_spec="builtin:tiny",
                        motion_adapter_spec="builtin:tiny", clip_skip=3)

