"""Generation: one prompt -> one video with the project's (or any) image and motion LoRAs."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import TrainedEmbedding, TrainedLora

# machining_t2v.generation.generator (torch, diffusers) is imported where it is used: registering the pipelines
# must not pay for it.
if TYPE_CHECKING:
    from diffusers import MotionAdapter

    from machining_t2v.models.loading import BaseModel

logger = logging.getLogger(__name__)


def with_trigger(prompt: str, trigger: str | None) -> str:
    """``prompt`` with the trigger word in front, unless it is empty or already in the prompt."""
    from machining_t2v.generation.video import require_text

    prompt = require_text(prompt)
    if not trigger or re.search(rf"(^|\W){re.escape(trigger)}(\W|$)", prompt):
        return prompt
    return f"{trigger} {prompt}"


def _lora_source(kind: str, use_project: bool, override: str | None, project: TrainedLora | None) -> str | None:
    if override:
        return str(override)
    if not use_project:
        return None
    if project is None:
        logger.info("No trained %s LoRA in the project; generating without one", kind)
        return None
    if project.path is None:
        raise ValueError(f"The project's {kind} LoRA has no folder on disk")
    return str(project.path)


def _concept_lora(concept: str, concept_loras: dict[str, TrainedLora | None]) -> TrainedLora:
    """The trained motion LoRA of ``concept``; an error naming it when it is unknown or not trained."""
    if concept not in concept_loras:
        raise ValueError(f"generate.motion_concept {concept!r} is not a motion concept of this project "
                         f"(motion_ft.concepts: {', '.join(concept_loras) or 'none'})")
    lora = concept_loras[concept]
    if lora is None:
        raise ValueError(f"generate.motion_concept {concept!r}: its motion LoRA is not trained yet; run "
                         "`kedro run --pipelines=motion_ft`")
    return lora


def generate_clip(
    image_lora: TrainedLora | None,
    motion_lora: TrainedLora | None,
    base: BaseModel,
    adapter: MotionAdapter,
    base_model: dict[str, Any],
    trigger: str | None,
    params: dict[str, Any],
    image_embedding: TrainedEmbedding | None = None,
    **concept_loras: TrainedLora | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generate ``generate.prompt`` with the LoRAs applied through diffusers' loaders.

    ``base`` and ``adapter`` are the catalog's loaded models; ``base_model`` (the parameters) only
    names them in the record. One exception to I/O-free nodes, on purpose: it tags the MLflow run
    with the base model and prompt, so runs can be found by them.

    LoRAs: ``image_lora_path``/``motion_lora_path`` when set (any file or folder), else the
    project's trained LoRAs when ``use_image_lora``/``use_motion_lora`` are on and they exist.
    ``motion_concept`` picks the motion LoRA of that motion concept (``concept_loras``: concept
    name -> its LoRA, from the ``<concept>.motion_lora`` datasets) instead of ``motion_lora``. The
    project's textual-inversion embedding (``use_image_embedding``, when trained) is loaded and its
    token put in the prompt in place of the trigger word.

    Returns:
        ``{name: frames}`` for the video dataset (GIF + H.264) and a record of the prompt,
        settings and models.
    """
    from machining_t2v.generation.generator import cpu_threads

    prompt = with_trigger(params["prompt"], trigger if params.get("prepend_trigger", True) else None)
    concept = params.get("motion_concept")
    if concept:
        motion_lora = _concept_lora(str(concept), concept_loras)
    embedding = image_embedding if params.get("use_image_embedding", True) else None
    with cpu_threads(params.get("cpu_threads")):
        return _generate(prompt, image_lora, motion_lora, base, adapter, base_model, params, embedding)


def _generate(prompt: str, image_lora: TrainedLora | None, motion_lora: TrainedLora | None, base: BaseModel,
              adapter: MotionAdapter, base_model: dict[str, Any], params: dict[str, Any],
              embedding: TrainedEmbedding | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from machining_t2v.generation.generator import build_generator
    from machining_t2v.generation.loras import load_lora, load_textual_inversion, set_lora_scales
    from machining_t2v.generation.video import generate_video, prompt_slug
    from machining_t2v.instructions.tokenizer_words import warn_unknown_words

    generator = build_generator(base, adapter, base_spec=base_model["pretrained"],
                                motion_adapter_spec=base_model["motion_adapter"], scheduler=params["scheduler"],
                                clip_skip=base_model.get("clip_skip", 1))
    if embedding is not None:
        load_textual_inversion(generator, embedding.path, embedding.token)
        prompt = embedding.prompt(prompt)
    warn_unknown_words(generator.tokenizer, prompt)
    scales = {}
    for kind, project in (("image", image_lora), ("motion", motion_lora)):
        source = _lora_source(kind, bool(params.get(f"use_{kind}_lora", True)), params.get(f"{kind}_lora_path"),
                              project)
        if source is not None:
            load_lora(generator, source, kind)
            scales[kind] = float(params[f"scale_{kind}"])
    set_lora_scales(generator, scales)
    frames = generate_video(
        generator, prompt, negative_prompt=params.get("negative_prompt"), num_frames=int(params["num_frames"]),
        num_inference_steps=int(params["num_inference_steps"]), guidance_scale=float(params["guidance_scale"]),
        seed=int(params["seed"]), size=params.get("size"),
    )  # fmt: skip
    name = str(params.get("name") or prompt_slug(prompt))
    if "/" in name or name.startswith("."):
        raise ValueError(f"generate.name {name!r} must be a plain file name")
    record = {"name": name, "prompt": prompt, "negative_prompt": params.get("negative_prompt") or "",
              "num_frames": int(frames.shape[0]), "size": int(frames.shape[1]),
              "num_inference_steps": int(params["num_inference_steps"]),
              "guidance_scale": float(params["guidance_scale"]), "seed": int(params["seed"]),
              "lora_scales": scales, **generator.describe(),
              "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")}
    tracking.set_tags({"generate.base_model": generator.base_source, "generate.prompt": prompt[:250]})
    logger.info("Generated %r (%d frames) with %s", prompt, len(frames),
                ", ".join(f"{k} LoRA x{v}" for k, v in scales.items()) or "no LoRA")
    return {name: frames}, record
