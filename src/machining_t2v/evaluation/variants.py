"""What an evaluation compares: the variants (base, +image LoRA, +motion LoRA, both, and the other
image_ft methods: +DreamBooth LoRA, +textual-inversion token), the reference
clips that give the ceiling, the prompt splits, and the names of the clips generated for them.

With motion concepts (``motion_ft.concepts``) the motion variants come once per concept, named
``motion:<concept>`` and ``both:<concept>`` (:func:`concept_variant`), with that concept's LoRA.

No Kedro import, no torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

__all__ = [
    "REFERENCE",
    "SPLITS",
    "EMBEDDING_VARIANTS",
    "VARIANT_ADAPTERS",
    "VARIANT_LABELS",
    "clip_key",
    "concept_of",
    "concept_variant",
    "motion_adapter_name",
    "parse_clip_key",
    "strip_name",
    "variant_adapters",
    "variant_label",
    "variant_split_groups",
]

VARIANT_ADAPTERS: dict[str, tuple[str, ...]] = {
    "base": (),
    "image": ("image",),
    "motion": ("motion",),
    "both": ("image", "motion"),
    "dreambooth": ("dreambooth",),
    "textual_inversion": (),
}
"""Which LoRA adapters each variant switches on (the DreamBooth LoRA at the image LoRA's scale)."""
EMBEDDING_VARIANTS = ("textual_inversion",)
"""The variants whose prompts carry the textual-inversion token (in place of the trigger word)."""

VARIANT_LABELS = {"base": "base", "image": "+image LoRA", "motion": "+motion LoRA", "both": "+image +motion LoRA",
                  "dreambooth": "+DreamBooth LoRA", "textual_inversion": "+textual-inversion token",
                  "reference": "reference clips (ceiling)"}
REFERENCE = "reference"
"""The variant (and split) name of the reference clips in every table."""
SPLITS = ("seen", "held_out")
_CLIP_KEY_SEP = "__"


_CONCEPT_SEP = ":"


def concept_variant(variant: str, concept: str | None) -> str:
    """A motion variant with one concept's LoRA, e.g. ``both:mill_feed_right``; ``variant`` itself
    for ``None`` (the LoRA on every clip)."""
    return variant if concept is None else f"{variant}{_CONCEPT_SEP}{concept}"


def concept_of(variant: str) -> str | None:
    """The concept of a variant named by :func:`concept_variant`; None for the plain variants."""
    return variant.partition(_CONCEPT_SEP)[2] or None


def motion_adapter_name(concept: str | None) -> str:
    """The generator's adapter name of the motion LoRA of ``concept`` (None: the one on every clip)."""
    return "motion" if concept is None else f"motion_{concept}"


def variant_adapters(variant: str) -> tuple[str, ...]:
    """The adapters a variant switches on: :data:`VARIANT_ADAPTERS`, with a concept variant's
    ``motion`` adapter replaced by its concept's."""
    base, _, concept = variant.partition(_CONCEPT_SEP)
    adapters = VARIANT_ADAPTERS[base]
    return tuple(motion_adapter_name(concept) if a == "motion" and concept else a for a in adapters)


def variant_label(variant: str) -> str:
    """How the report names a variant: :data:`VARIANT_LABELS`, a concept variant with its concept."""
    base, _, concept = variant.partition(_CONCEPT_SEP)
    return f"{VARIANT_LABELS[base]} ({concept})" if concept else VARIANT_LABELS[base]


def clip_key(variant: str, prompt_id: str, seed: int) -> str:
    """Name of one generated clip, e.g. ``both__mill_x__seed0``."""
    return _CLIP_KEY_SEP.join((variant, prompt_id, f"seed{seed}"))


def parse_clip_key(key: str) -> tuple[str, str, int]:
    """Inverse of :func:`clip_key`."""
    variant, prompt_id, seed = key.split(_CLIP_KEY_SEP)
    return variant, prompt_id, int(seed.removeprefix("seed"))


def strip_name(prompt_id: str, variant: str, seed: int) -> str:
    """Name of the frame strip of one generated clip, e.g. ``mill_x__both__seed0``: prompt first,
    so a folder listing groups a prompt's variants."""
    return _CLIP_KEY_SEP.join((prompt_id, variant, f"seed{seed}"))


def variant_split_groups(table: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(variant, split, rows) per variant in report order (a concept variant after its plain
    one): ``all`` and each split present; the reference clips only as ``all``."""
    order = [*VARIANT_ADAPTERS, REFERENCE]
    present = set(table["variant"])
    ranked = sorted(present, key=lambda v: (order.index(v.partition(_CONCEPT_SEP)[0]), v))
    for variant in ranked:
        subset = table[table["variant"] == variant]
        yield variant, "all", subset
        if variant != REFERENCE:
            for split in SPLITS:
                if (subset["split"] == split).any():
                    yield variant, split, subset[subset["split"] == split]
