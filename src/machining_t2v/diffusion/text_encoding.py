"""Clip skip: which hidden state of the CLIP text encoder conditions the UNet.

``clip_skip`` counts as A1111 and kohya do: 1 is the last layer's output (SD1.5's own
conditioning), 2 the layer before it (what many anime and style checkpoints were trained
with). Like diffusers' pipelines, an earlier layer's state still goes through the encoder's
final layer norm. Training encodes its captions with :func:`text_hidden_states` and sampling hands
the pipelines the states of :func:`prompt_embeddings`, so both condition on the same state
(diffusers' own ``clip_skip`` argument reaches for ``text_encoder.text_model``, which the pinned
transformers' ``CLIPTextModel`` no longer has). No Kedro import.
"""

from __future__ import annotations

import torch

__all__ = ["check_clip_skip", "prompt_embeddings", "text_hidden_states"]


def check_clip_skip(text_encoder, clip_skip: int) -> int:
    """``clip_skip`` as an int, checked against the text encoder's layer count.

    Raises:
        ValueError: ``clip_skip`` below 1 or more than the encoder's ``num_hidden_layers``.
    """
    layers = int(text_encoder.config.num_hidden_layers)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
        raise ValueError(f"base_model.clip_skip is {clip_skip!r} but must be a whole number from 1 (the last layer) "
                         f"to {layers}, the number of layers of this text encoder; 2 (the layer before the last) "
                         "is the usual other choice.")
    return clip_skip


def text_hidden_states(text_encoder, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """The (B, L, D) text states the UNet is conditioned on, for token ids (B, L).

    ``clip_skip=1`` is the encoder's last hidden state (final layer norm included); ``k > 1`` the
    output of the ``k``-th layer from the end, passed through the final layer norm.
    """
    check_clip_skip(text_encoder, clip_skip)
    if clip_skip == 1:
        return text_encoder(input_ids)[0]
    # hidden_states holds the embeddings' output, then each layer's: [-k] is the k-th layer from the end.
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-clip_skip]
    return text_encoder.final_layer_norm(hidden)


@torch.no_grad()
def prompt_embeddings(pipe, prompt: str, negative_prompt: str | None, clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """``prompt_embeds`` and ``negative_prompt_embeds`` for one call of a diffusers SD-family pipeline.

    Encoded as the pipeline encodes a prompt (padded to the tokenizer's length, truncated, each
    text on its own, multi-vector textual-inversion tokens expanded), at ``clip_skip``.
    """
    states = []
    for text in (prompt, negative_prompt or ""):
        text = pipe.maybe_convert_prompt(text, pipe.tokenizer)
        ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        states.append(text_hidden_states(pipe.text_encoder, ids.to(pipe.text_encoder.device), clip_skip))
    return {"prompt_embeds": states[0], "negative_prompt_embeds": states[1]}
