"""The model card of a trained LoRA: what it is, what it was trained on, how it scored, how to use it.

A card is written beside its LoRA as ``README.md`` (the layout the Hugging Face Hub shows for a
model folder: YAML front matter, then Markdown), with a sample GIF and, beside the motion LoRA, the
ComfyUI workflow of the image + motion pair (:mod:`machining_t2v.publishing.comfyui_workflow`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from machining_t2v.evaluation.scoring import CLIP_METRICS, METRICS
from machining_t2v.evaluation.variants import (
    REFERENCE,
    clip_key,
    concept_variant,
    parse_clip_key,
    variant_label,
)
from machining_t2v.lora.files import (
    ANIMATEDIFF_MOTION_LORA_FILENAME,
    DIFFUSERS_LORA_FILENAME,
    KOHYA_IMAGE_LORA_FILENAME,
    LORA_INFO_FILENAME,
)

__all__ = ["README_FILE", "SAMPLE_FILE", "WORKFLOW_FILE", "CardFacts", "ModelCard", "model_card_text",
           "sample_clips"]

README_FILE = "README.md"
SAMPLE_FILE = "sample.gif"
WORKFLOW_FILE = "comfyui_workflow.json"

_WHAT = {
    "image": "An image (spatial) LoRA: it changes the spatial attention of the base model's UNet so that machines, "
             "tools, chips and workpieces look like those of the training videos.",
    "motion": "A MotionLoRA: it changes the temporal attention of the AnimateDiff motion module so that the "
              "processes move like those of the training clips (milling: the tool spins and travels; turning: "
              "the workpiece spins while the tool feeds).",
}
_EXPORTS = {
    "image": (KOHYA_IMAGE_LORA_FILENAME, "kohya layout: A1111, ComfyUI `LoraLoader` (ComfyUI/models/loras)"),
    "motion": (ANIMATEDIFF_MOTION_LORA_FILENAME, "original AnimateDiff MotionLoRA layout: AnimateDiff's scripts, "
                                                 "ComfyUI-AnimateDiff-Evolved (ComfyUI/models/animatediff_motion_lora)"),
}
_HUB_TAGS = ["lora", "text-to-video", "animatediff", "machining-t2v"]


@dataclass(frozen=True)
class ModelCard:
    """What the catalog writes beside a LoRA: ``README.md``, ``sample.gif`` and (motion LoRA) the
    ComfyUI workflow. An empty ``readme`` means there is no LoRA: old card files are removed."""

    readme: str = ""
    sample: np.ndarray | None = None  # uint8 frames (T, H, W, 3)
    workflow: dict[str, Any] | None = None


@dataclass(frozen=True)
class CardFacts:
    """What a card says about one LoRA.

    ``info`` is the LoRA's ``lora_info.json`` without ``kind`` and ``lora_config`` (base model, steps,
    schedule, captions, ...); ``evaluation`` is the evaluation's model record (``evaluation_models.json``).
    """

    kind: str  # "image" or "motion"
    info: dict[str, Any]
    lora_config: dict[str, Any]
    num_layers: int
    trigger: str
    scale: float  # the LoRA's scale in the evaluation
    evaluation: dict[str, Any]
    summary: pd.DataFrame  # evaluation_summary.csv
    inworld: pd.DataFrame  # evaluation_inworld.csv (empty without an in-world evaluator)
    sample_prompt: str  # also the prompt of the usage examples
    sample_seed: int | None  # None: no sample (the LoRA's variant was not evaluated)
    sample_variants: list[str]  # left to right in the sample GIF
    with_workflow: bool = False
    workflow_models: dict[str, str] = field(default_factory=dict)  # checkpoint / motion_module file names
    concept: str | None = None  # the motion concept (motion_ft.concepts) the LoRA was trained on; None: every clip
    folder: str = ""  # the LoRA folder as the usage lines name it; "" = data/06_models/<kind>_lora

    @property
    def variant(self) -> str:
        """The evaluation variant with this LoRA alone: ``image``, ``motion`` or ``motion:<concept>``."""
        return concept_variant(self.kind, self.concept)

    @property
    def pair_variant(self) -> str:
        """The evaluation variant with the image and the motion LoRA: ``both`` or ``both:<concept>``."""
        return concept_variant("both", self.concept)

    @property
    def lora_folder(self) -> str:
        """Where the usage lines say the LoRA is."""
        return self.folder or f"data/06_models/{self.kind}_lora"


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.3f}"


def _front_matter() -> list[str]:
    # No `base_model` key: the Hub wants a hub id there, and a base model's name alone does not say
    # whether it is one or a local folder (models/starter looks like an id). The table names it.
    return ["---", "tags:", *(f"- {tag}" for tag in _HUB_TAGS), "library_name: diffusers", "---", ""]


def _cell(value: str) -> str:
    """A Markdown table cell: a pipe (regex target modules) would end the cell."""
    return value.replace("|", "\\|")


def _trained_on(facts: CardFacts) -> str:
    info = facts.info
    count = info.get("num_samples")
    what = "stills" if facts.kind == "image" else f"clips of {info.get('num_frames', '?')} frames"
    text = f"{count} {what} of the project's videos" if count is not None else f"{what} of the project's videos"
    captions = info.get("trigger_captions") or []
    if captions:
        text += "; captions such as " + ", ".join(f"\"{caption}\"" for caption in captions[:2])
    if facts.kind == "motion" and info.get("mode"):
        text += f" (mode `{info['mode']}`)"
    return text


def _facts_table(facts: CardFacts) -> list[str]:
    info, config, evaluation = facts.info, facts.lora_config, facts.evaluation
    sampling = evaluation.get("sampling") or {}
    targets = config.get("target_modules")
    targets = targets if isinstance(targets, str) else ", ".join(map(str, targets or []))
    rows = [
        ("Base model", f"`{info.get('base_model', evaluation.get('base_model_source', '?'))}`"),
        ("Motion adapter" if facts.kind == "motion" else "Motion adapter (evaluation)",
         f"`{info.get('motion_adapter', evaluation.get('motion_adapter', '?'))}`"),
        ("Adapter", f"LoRA rank {config.get('r')}, alpha {config.get('lora_alpha')}, {facts.num_layers} layers "
                    f"(`{targets}`)"),
        ("Trigger word", f"`{facts.trigger}` (start prompts with it)" if facts.trigger else "none"),
        ("Trained on", _trained_on(facts)),
        ("Steps", str(info.get("steps", "?"))),
        ("Noise schedule", f"{info.get('beta_schedule', '?')} betas, {info.get('prediction_type', '?')} prediction"),
        ("Scale", f"{facts.scale:g} in the evaluation below"),
        ("Evaluated", f"{evaluation.get('created_utc', '?')} UTC: {sampling.get('num_frames')} frames, "
                      f"{sampling.get('num_inference_steps')} {evaluation.get('scheduler', '')} steps, guidance "
                      f"{sampling.get('guidance_scale')}, {sampling.get('size')} px, seeds {sampling.get('seeds')}"),
    ]
    return ["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows), ""]


def _files(facts: CardFacts) -> list[str]:
    export, use = _EXPORTS[facts.kind]
    lines = ["## Files", "",
             f"- `{DIFFUSERS_LORA_FILENAME}`: diffusers layout (`pipe.load_lora_weights(this_folder)`), "
             "with its LoRA config in the metadata",
             f"- `{export}`: {use}",
             f"- `{LORA_INFO_FILENAME}`: the LoRA config and what produced it"]
    if facts.sample_seed is not None:
        lines.append(f"- `{SAMPLE_FILE}`: the sample below")
    if facts.with_workflow:
        lines.append(f"- `{WORKFLOW_FILE}`: a ComfyUI workflow with this LoRA and the image LoRA (see below)")
    return [*lines, ""]


def _variants(facts: CardFacts, present: set[str]) -> list[str]:
    return [variant for variant in ("base", facts.variant, facts.pair_variant, REFERENCE) if variant in present]


def _evaluation(facts: CardFacts) -> list[str]:
    overall = facts.summary[facts.summary["split"] == "all"].set_index("variant")
    variants = _variants(facts, set(overall.index))
    lines = ["## Evaluation", ""]
    if facts.variant not in variants:
        return [*lines, "This LoRA was not part of the last evaluation.", ""]
    clip_note = (facts.evaluation.get("clip_model") or {}).get("note") or ""
    lines += [f"Means over {int(overall.loc[facts.variant, 'n_clips'])} clips per variant (every evaluation prompt "
              "and seed; `data/08_reporting/evaluation_report.md` has the details).", "",
              "| metric | " + " | ".join(variant_label(v) for v in variants) + " |",
              "|---|" + "---:|" * len(variants)]
    for metric in METRICS:
        mark = " (stand-in CLIP)" if clip_note and metric in CLIP_METRICS else ""
        lines.append(f"| {metric}{mark} | " + " | ".join(_number(overall.loc[v, metric]) for v in variants) + " |")
    lines.append("")
    if clip_note:
        lines += [f"Note: {clip_note}", ""]
    base_note = facts.evaluation.get("base_model_note") or ""
    if base_note:
        lines += [f"Note: the base model is the {base_note}: these figures test the machinery, not quality.", ""]
    lines += _inworld(facts)
    return lines


def _inworld(facts: CardFacts) -> list[str]:
    if facts.inworld.empty:
        return []
    table = facts.inworld[facts.inworld["split"] == "all"].set_index("variant")
    variants = [v for v in _variants(facts, set(table.index)) if v != REFERENCE]
    keys = [column for column in table.columns if column.endswith("_accuracy")]
    lines = ["In-world accuracy (the base model's own evaluator labels every clip):", "",
             "| accuracy | " + " | ".join(variant_label(v) for v in variants) + " |",
             "|---|" + "---:|" * len(variants)]
    for key in keys:
        lines.append(f"| {key.removesuffix('_accuracy')} | " + " | ".join(_number(table.loc[v, key]) for v in variants)
                     + " |")
    return [*lines, ""]


def _usage(facts: CardFacts) -> list[str]:
    flag = "--image-lora" if facts.kind == "image" else "--motion-lora"
    evaluation = facts.evaluation
    lines = ["## Use", "", "With the console script, from the project folder:", "", "```bash",
             f"machining-t2v generate \"{facts.sample_prompt}\" \\",
             f"    --base {evaluation.get('base_model')} --motion-adapter {evaluation.get('motion_adapter')} \\",
             f"    {flag} {facts.lora_folder} --scale-{facts.kind} {facts.scale:g}", "```", ""]
    if facts.concept is not None:
        lines += [f"The `generate` pipeline picks it by name: `generate.motion_concept: {facts.concept}`.", ""]
    if facts.kind == "image":
        lines += [f"ComfyUI: `LoraLoader` reads `{KOHYA_IMAGE_LORA_FILENAME}` from `models/loras/`; a workflow "
                  f"with both LoRAs lies beside the motion LoRA (`../motion_lora/{WORKFLOW_FILE}`) once motion_ft "
                  "has run.", ""]
    if facts.with_workflow:
        models = facts.workflow_models
        lines += [
            f"ComfyUI: open `{WORKFLOW_FILE}` (Workflow > Open). It needs ComfyUI-AnimateDiff-Evolved and "
            "ComfyUI-VideoHelperSuite, and these files in ComfyUI's `models/` folder: "
            f"`{models.get('checkpoint')}` in `checkpoints/`, `{models.get('motion_module')}` in "
            f"`animatediff_models/`, `{ANIMATEDIFF_MOTION_LORA_FILENAME}` (this folder) in "
            f"`animatediff_motion_lora/`, and `{KOHYA_IMAGE_LORA_FILENAME}` (data/06_models/image_lora) in `loras/`. The "
            "checkpoint and motion module must be the base model and adapter these LoRAs were trained on "
            "(`--env sd15`: SD1.5 and AnimateDiff v3; the file names are `evaluation.model_cards.comfyui` "
            "parameters). A base given as a diffusers folder (such as the starter model) has no ComfyUI checkpoint.",
            ""]
    return lines


def model_card_text(facts: CardFacts) -> str:
    """The card as Markdown with Hugging Face front matter (see the module docstring)."""
    title = "Image LoRA" if facts.kind == "image" else "Motion LoRA"
    what = [_WHAT[facts.kind], ""]
    if facts.concept is not None:
        title += f" `{facts.concept}`"
        what += [f"It was trained only on the clips of one motion concept, `{facts.concept}` (`motion_ft.concepts`): "
                 "one motion per LoRA, MotionDirector's protocol.", ""]
    lines = [*_front_matter(), f"# {title} for machine-tool process videos (machining-t2v)", "",
             *what, *_facts_table(facts), *_files(facts), *_evaluation(facts),
             *_sample(facts), *_usage(facts)]
    return "\n".join(lines).rstrip() + "\n"


def _sample(facts: CardFacts) -> list[str]:
    if facts.sample_seed is None:
        return []
    order = ", ".join(variant_label(variant) for variant in facts.sample_variants)
    return ["## Sample", "", f"![sample]({SAMPLE_FILE})", "",
            f"Evaluation prompt \"{facts.sample_prompt}\", seed {facts.sample_seed}; left to right: {order} "
            "(same seed).", ""]


def sample_clips(clips: dict[str, np.ndarray], variant: str) -> tuple[str, int, dict[str, np.ndarray]]:
    """The evaluation clips of the first prompt and seed generated with ``variant``: the base model's
    and ``variant``'s, in that order (the base one when it was generated).

    Returns:
        the prompt id, the seed and ``{variant: frames}``.

    Raises:
        ValueError: no clip of ``variant`` in ``clips``.
    """
    for key in clips:
        clip_variant, prompt_id, seed = parse_clip_key(key)
        if clip_variant == variant:
            keys = {name: clip_key(name, prompt_id, seed) for name in ("base", variant)}
            return prompt_id, seed, {name: clips[key] for name, key in keys.items() if key in clips}
    raise ValueError(f"no evaluation clip of variant {variant!r} among {len(clips)} clips")
