"""Textual inversion: a new placeholder token whose embedding alone is learned, everything else frozen.

The token gets its own trainable row beside the text encoder's frozen embedding table
(:class:`PlaceholderEmbedding`), so the optimizer sees one vector: nothing else can drift
(AdamW's weight decay would move every row of a fully trainable table), and checkpoints and resume
are the training core's. The captions are encoded live in every step, since the text encoder's
output changes as the row learns. The result saves as diffusers' ``load_textual_inversion``
reads it (``{token: vector}``) and as A1111 does (``{"emb_params": (1, D)}``). No Kedro import.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from machining_t2v.diffusion.text_encoding import text_hidden_states
from machining_t2v.lora.files import EMBEDDING_FILENAME

__all__ = ["DIFFUSERS_FILENAME", "PlaceholderEmbedding", "add_placeholder_token", "caption_encoder", "learned_vector",
           "load_embedding", "save_embedding", "with_placeholder"]

DIFFUSERS_FILENAME = EMBEDDING_FILENAME
"""diffusers' name for a textual-inversion file (``pipe.load_textual_inversion(folder, token=...)``)."""


class PlaceholderEmbedding(nn.Module):
    """A frozen token-embedding table with trainable rows appended for the new tokens."""

    def __init__(self, frozen: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.frozen = frozen.requires_grad_(False)
        self.new_rows = nn.Parameter(new_rows.detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:
        """The whole table, as ``nn.Embedding.weight`` (what diffusers' loaders read)."""
        return torch.cat([self.frozen.weight, self.new_rows.to(self.frozen.weight.dtype)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(input_ids, self.weight)


def add_placeholder_token(tokenizer, text_encoder, token: str, initializer: str) -> int:
    """Add ``token`` to the tokenizer, its embedding initialised from the word ``initializer``, and
    make that embedding the text encoder's only trainable parameter.

    Returns:
        the new token's id.

    Raises:
        ValueError: the token is empty, has spaces or is already a word of the tokenizer's
            vocabulary; the initializer is not one token of it.
    """
    if not token or re.search(r"\s", token):
        raise ValueError(f"image_ft.textual_inversion.placeholder_token {token!r} must be one word without spaces, "
                         "e.g. '<mtv-machine>'")
    pieces = tokenizer.tokenize(token)
    if token in tokenizer.get_vocab() or (len(pieces) == 1 and pieces[0] in tokenizer.get_vocab()):
        raise ValueError(f"image_ft.textual_inversion.placeholder_token {token!r} is already in the tokenizer's "
                         "vocabulary; choose a new word, e.g. '<mtv-machine>', so that learning it changes no "
                         "prompt without it.")
    initializer_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(initializer_ids) != 1:
        raise ValueError(f"image_ft.textual_inversion.initializer_token {initializer!r} is {len(initializer_ids)} "
                         "tokens to this tokenizer; give one word it knows as a single token, e.g. 'machine'.")
    tokenizer.add_tokens([token])
    table = text_encoder.get_input_embeddings()
    text_encoder.requires_grad_(False)
    text_encoder.set_input_embeddings(PlaceholderEmbedding(table, table.weight[initializer_ids]))
    return tokenizer.convert_tokens_to_ids(token)


def learned_vector(text_encoder) -> torch.Tensor:
    """The placeholder token's (D,) embedding, on the CPU in fp32."""
    return text_encoder.get_input_embeddings().new_rows.detach()[0].float().cpu()


def caption_encoder(tokenizer, text_encoder, captions: Sequence[str], clip_skip: int = 1):
    """A function ``indices -> (B, L, D)`` text states of those captions, encoded now by ``text_encoder``.

    The captions are tokenized once; the encoding runs in every call so gradients reach the token.
    """
    input_ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids

    def encode(indices: torch.Tensor) -> torch.Tensor:
        device = text_encoder.get_input_embeddings().new_rows.device
        return text_hidden_states(text_encoder, input_ids[indices].to(device), clip_skip).float()

    return encode


def with_placeholder(text: str, replaces: str | None, token: str) -> str:
    """``text`` with ``replaces`` (the trigger word) swapped for ``token``, or the token in front."""
    if token in text.split():
        return text
    if replaces and re.search(rf"(^|\W){re.escape(replaces)}(\W|$)", text):
        return re.sub(rf"(^|\W){re.escape(replaces)}(?=\W|$)", lambda m: f"{m.group(1)}{token}", text)
    return f"{token} {text}"


def save_embedding(token: str, vector: torch.Tensor, folder: Path, steps: int | None = None) -> dict[str, Path]:
    """Write the diffusers file (``{token: (D,)}``) and the A1111 one (``{"emb_params": (1, D)}``).

    Returns:
        ``{"diffusers": path, "a1111": path}``.
    """
    from machining_t2v.lora.formats import save_safetensors_atomic

    folder.mkdir(parents=True, exist_ok=True)
    vector = vector.detach().float().cpu().contiguous()
    paths = {"diffusers": folder / DIFFUSERS_FILENAME, "a1111": folder / f"{_file_stem(token)}.safetensors"}
    save_safetensors_atomic({token: vector}, paths["diffusers"])
    save_safetensors_atomic({"emb_params": vector[None]}, paths["a1111"],
                            metadata={"name": token, "step": "" if steps is None else str(steps)})
    return paths


def load_embedding(path: Path) -> tuple[str, torch.Tensor]:
    """(token, (D,) vector) of a diffusers-format file written by :func:`save_embedding`."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    if len(tensors) != 1:
        raise ValueError(f"{path}: a textual-inversion file holds one token's vector, found {sorted(tensors)}")
    return next(iter(tensors.items()))


def _file_stem(token: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "", token) or "embedding"
