"""Evaluation: base vs +image LoRA vs +motion LoRA vs both, on seen and held-out prompts,
scored against the reference clips of the same process.

The nodes read their parameters and call into :mod:`machining_t2v.evaluation`: the prompt table
(:mod:`~machining_t2v.evaluation.prompt_table`), the reference clips
(:mod:`~machining_t2v.evaluation.reference_clips`), the scoring (:mod:`~machining_t2v.evaluation.scoring`,
:mod:`~machining_t2v.evaluation.inworld_scoring`) and the report
(:mod:`~machining_t2v.evaluation.report_sections`); they log to MLflow.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from machining_t2v.data.concepts import concept_mask
from machining_t2v.evaluation.direction import screen_direction
from machining_t2v.evaluation.inworld_scoring import (
    INWORLD_COLUMNS,
    INWORLD_FOLDER,
    INWORLD_KEYS,
    INWORLD_PREDICTION_COLUMNS,
    in_world_accuracies,
    label_every_clip,
)
from machining_t2v.evaluation.prompt_table import prompt_table
from machining_t2v.evaluation.reference_clips import choose_reference_clips, concept_processes
from machining_t2v.evaluation.report import bar_chart, frame_strip, to_html, to_markdown
from machining_t2v.evaluation.report_sections import report_blocks, report_title
from machining_t2v.evaluation.scoring import CLIP_METRICS, METRICS, metric_means, score_every_clip
from machining_t2v.evaluation.variants import (
    EMBEDDING_VARIANTS,
    REFERENCE,
    VARIANT_ADAPTERS,
    clip_key,
    concept_variant,
    motion_adapter_name,
    parse_clip_key,
    strip_name,
    variant_adapters,
    variant_label,
)
from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import RawVideoFolder, TrainedEmbedding, TrainedLora

# clip_metrics, generation, inworld and sampling (torch, diffusers, transformers) are imported inside the
# functions that use them: registering the pipelines must not pay for them.

if TYPE_CHECKING:
    from diffusers import MotionAdapter

    from machining_t2v.models.loading import BaseModel
    from machining_t2v.publishing.model_card import ModelCard

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- prompts and references


def build_prompt_table(params: dict[str, Any]) -> pd.DataFrame:
    """The evaluation prompts (``evaluation.prompts``) as a table (``prompt_id``, ``prompt``,
    ``process``, ``split``); each prompt's process must be a key of ``evaluation.processes``
    (see :func:`~machining_t2v.evaluation.prompt_table.prompt_table`)."""
    return prompt_table(params.get("prompts") or [], (params.get("processes") or {}).keys())


def select_reference_clips(
    clips: dict[str, Any],
    frame_manifest: pd.DataFrame,
    captions: pd.DataFrame,
    raw_videos: RawVideoFolder,
    params: dict[str, Any],
    concepts: dict[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The reference clips per process of ``evaluation.processes``, at most
    ``evaluation.reference.max_clips_per_process`` each, loaded, and their table
    (see :func:`~machining_t2v.evaluation.reference_clips.choose_reference_clips`), with the
    direction each clip's tool travels from the ``direction`` column of ``metadata.csv``
    (:func:`~machining_t2v.evaluation.direction.screen_direction`; None where it has none) and
    the motion concepts (``motion_ft.concepts``) each belongs to (column ``concepts``, a list)."""
    limit = int((params.get("reference") or {}).get("max_clips_per_process") or 0)
    directions, metadata_of = {}, {}
    for video in raw_videos.videos:
        metadata_of[video.name] = raw_videos.metadata_for(video) or {}
        try:
            directions[video.name] = screen_direction(metadata_of[video.name].get("direction"))
        except ValueError as error:
            raise ValueError(f"{raw_videos.root}/metadata.csv, row of {video.name}: {error}") from error
    loaded, table = choose_reference_clips(clips, frame_manifest, captions, params["processes"], limit, directions)
    rows = table.assign(metadata=[metadata_of.get(video, {}) for video in table["video"]])
    members = {name: concept_mask(name, rule, rows, allow_empty=True).tolist() for name, rule in (concepts or {}).items()}
    table["concepts"] = [[name for name, mask in members.items() if mask[i]] for i in range(len(table))]
    return loaded, table


# --------------------------------------------------------------------------- generation


def _lora_folder(lora: TrainedLora, kind: str) -> str:
    if lora.path is None:
        raise ValueError(f"The {kind} LoRA has no folder on disk; the evaluation loads LoRAs from their folders")
    return str(lora.path)


def generate_evaluation_clips(
    prompts: pd.DataFrame,
    image_lora: TrainedLora | None,
    motion_lora: TrainedLora | None,
    base: BaseModel,
    adapter: MotionAdapter,
    base_model: dict[str, Any],
    params: dict[str, Any],
    reference_table: pd.DataFrame | None = None,
    dreambooth_lora: TrainedLora | None = None,
    image_embedding: TrainedEmbedding | None = None,
    **concept_loras: TrainedLora | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generate every prompt with every variant whose LoRAs (or embedding) exist, with the same seeds.

    ``base`` and ``adapter`` are the catalog's loaded models; ``base_model`` (the parameters) only
    names them in the record.

    The LoRAs are loaded from their folders with diffusers' ``pipe.load_lora_weights`` and
    switched per variant with ``pipe.set_adapters`` (through :mod:`machining_t2v.generation.loras`),
    exactly as a user of the console script or of diffusers would apply them. The textual-inversion
    embedding is loaded with ``pipe.load_textual_inversion``; its variant's prompts carry the token.

    ``concept_loras`` (concept name -> its motion LoRA, None when not trained) add the variants
    ``motion:<concept>`` and ``both:<concept>`` (when ``motion`` and ``both`` are asked for); they
    generate the prompts of the concept's process, the process most of its reference clips show
    (``reference_table``'s ``concepts`` column, see :func:`select_reference_clips`).

    Returns:
        the clips (see :func:`clip_key`) and a record of what produced them (models, LoRA
        folders, scales, sampler settings, variants run and skipped).
    """
    unknown = [v for v in params["variants"] if v not in VARIANT_ADAPTERS]
    if unknown:
        raise ValueError(f"evaluation.variants: unknown {unknown}; choose from {list(VARIANT_ADAPTERS)}")
    from machining_t2v.generation.generator import cpu_threads

    processes = concept_processes(reference_table, list(concept_loras))
    with cpu_threads(params.get("cpu_threads")):
        return _generate_variants(prompts, image_lora, dreambooth_lora, {None: motion_lora, **concept_loras},
                                  image_embedding, processes, base, adapter, base_model, params)


def _generate_variants(prompts: pd.DataFrame, image_lora: TrainedLora | None, dreambooth_lora: TrainedLora | None,
                       motion_loras: dict[str | None, TrainedLora | None], embedding: TrainedEmbedding | None,
                       processes: dict[str, str | None], base: BaseModel, adapter: MotionAdapter,
                       base_model: dict[str, Any],
                       params: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from machining_t2v.generation.generator import build_generator
    from machining_t2v.generation.loras import load_lora, load_textual_inversion, set_lora_scales
    from machining_t2v.generation.video import generate_video
    from machining_t2v.instructions.tokenizer_words import warn_unknown_words

    sampling = params["sampling"]
    started = time.perf_counter()
    generator = build_generator(base, adapter, base_spec=base_model["pretrained"],
                                motion_adapter_spec=base_model["motion_adapter"], scheduler=sampling["scheduler"],
                                clip_skip=base_model.get("clip_skip", 1))
    for row in prompts.itertuples(index=False):
        warn_unknown_words(generator.tokenizer, row.prompt, what=f"evaluation prompt {row.prompt_id}")
    # The DreamBooth LoRA is an image LoRA: it runs at the image LoRA's scale.
    scales = {"image": float(params["lora_scales"]["image"]), "dreambooth": float(params["lora_scales"]["image"])}
    for kind, lora in (("image", image_lora), ("dreambooth", dreambooth_lora)):
        if lora is not None:
            load_lora(generator, _lora_folder(lora, kind), kind)
    for concept, lora in motion_loras.items():
        scales[motion_adapter_name(concept)] = float(params["lora_scales"]["motion"])
        if lora is not None:
            load_lora(generator, _lora_folder(lora, "motion"), motion_adapter_name(concept))
    if embedding is not None:
        load_textual_inversion(generator, embedding.path, embedding.token)
    variants, skipped, variant_prompts = [], {}, {}
    for plain in params["variants"]:
        concepts = [None, *processes] if "motion" in VARIANT_ADAPTERS[plain] else [None]
        for concept in concepts:
            variant = concept_variant(plain, concept)
            missing = [kind for kind in variant_adapters(variant) if kind not in generator.loras]
            chosen = prompts if concept is None else prompts[prompts["process"] == processes[concept]]
            if missing:
                skipped[variant] = f"no trained {' and '.join(missing)} LoRA"
            elif variant in EMBEDDING_VARIANTS and embedding is None:
                skipped[variant] = "no trained textual-inversion embedding"
            elif chosen.empty:
                skipped[variant] = f"no evaluation prompt of its process ({processes[concept]})"
            else:
                variants.append(variant)
                variant_prompts[variant] = chosen
    seeds = [int(sampling["seed"]) + offset for offset in range(int(sampling.get("seeds_per_prompt", 1)))]
    clips: dict[str, np.ndarray] = {}
    for variant in variants:
        set_lora_scales(generator, {kind: scales[kind] for kind in variant_adapters(variant)})
        for row in variant_prompts[variant].itertuples(index=False):
            for seed in seeds:
                prompt = embedding.prompt(row.prompt) if variant in EMBEDDING_VARIANTS else row.prompt
                clips[clip_key(variant, row.prompt_id, seed)] = generate_video(
                    generator, prompt, negative_prompt=sampling.get("negative_prompt"),
                    num_frames=int(sampling["num_frames"]), num_inference_steps=int(sampling["num_inference_steps"]),
                    guidance_scale=float(sampling["guidance_scale"]), seed=seed, size=sampling.get("size"),
                )  # fmt: skip
    elapsed = time.perf_counter() - started
    logger.info("Generated %d evaluation clips (%s) in %.1f s%s", len(clips), ", ".join(variants), elapsed,
                "".join(f"; skipped {v}: {why}" for v, why in skipped.items()))
    record = {
        **generator.describe(),
        "variants": variants,
        "skipped_variants": skipped,
        "lora_scales": {kind: scales[kind] for kind in generator.loras},
        "sampling": {**{k: v for k, v in sampling.items()}, "seeds": seeds,
                     "size": sampling.get("size") or generator.default_size},
        "generation_seconds": round(elapsed, 2),
    }
    return clips, record


# --------------------------------------------------------------------------- scoring


def score_clips(
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    reference_clips: dict[str, np.ndarray],
    reference_table: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every generated clip and every reference clip with the CLIP model of
    ``evaluation.clip_model`` and the model-free metrics
    (:func:`~machining_t2v.evaluation.scoring.score_every_clip`).

    Returns:
        long table (variant, prompt_id, prompt, process, split, seed, metric, value) and a
        record of the CLIP model used (``source``, ``is_standin``, ``label``, ``note``).
    """
    from machining_t2v.evaluation.clip_metrics import STANDIN_NOTE, load_clip_scorer
    from machining_t2v.generation.generator import cpu_threads

    with cpu_threads(params.get("cpu_threads")):
        scorer = load_clip_scorer(params["clip_model"], params.get("clip_standin_dir"))
        table = score_every_clip(scorer, generated, prompts, reference_clips, reference_table)
    record = {"source": scorer.source, "is_standin": scorer.is_standin, "label": scorer.label,
              "note": STANDIN_NOTE if scorer.is_standin else ""}
    return table, record


def summarise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per variant, overall (``split`` = ``all``) and per split, plus the
    reference ceiling (:func:`~machining_t2v.evaluation.scoring.metric_means`); logs them to MLflow
    as ``eval.<variant>.<metric>`` and ``eval.<variant>.<split>.<metric>`` (reference:
    ``eval.reference.<metric>``).

    Returns:
        one row per (variant, split) with ``n_clips`` and one column per metric.
    """
    summary = metric_means(metrics)
    _log_per_variant(summary, list(METRICS))
    return summary


def _log_per_variant(table: pd.DataFrame, columns: list[str], infix: str = "") -> None:
    """Log ``columns`` of a per-(variant, split) table to MLflow as ``eval.<variant>[.<split>].<infix><column>``."""
    for row in table.to_dict("records"):
        split = "" if row["split"] == "all" else f"{row['split']}."
        tracking.log_metrics({column: row[column] for column in columns},
                             prefix=f"eval.{row['variant']}.{split}{infix}")


def score_in_world(
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    reference_clips: dict[str, np.ndarray],
    reference_table: pd.DataFrame,
    generation_record: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """In-world metrics: label every clip with the base model's in-world evaluator.

    Only a base model pretrained in the starter world (the starter model) carries an
    evaluator, in its ``inworld_evaluator/`` subfolder; for any other base model both tables
    are empty. Each clip is compared with what its prompt (a reference clip: its caption) asks
    for (:mod:`machining_t2v.evaluation.inworld_scoring`). Logged to MLflow as
    ``eval.<variant>.inworld.<key>_accuracy`` and ``eval.<variant>.<split>.inworld.<key>_accuracy``.

    Returns:
        one row per (variant, split) like :func:`summarise_metrics` (``n_clips`` and
        ``style_accuracy``, ``scene_accuracy``, ``motion_accuracy``), and one row per clip with
        its predicted and expected labels (reference clips: variant and split ``reference``).
    """
    folder = Path(str(generation_record["base_model_source"])) / INWORLD_FOLDER
    if not folder.is_dir():
        logger.info("No in-world metrics: base model %s has no %s/ folder (only the starter model carries one)",
                    generation_record["base_model_source"], INWORLD_FOLDER)
        return pd.DataFrame(columns=INWORLD_COLUMNS), pd.DataFrame(columns=INWORLD_PREDICTION_COLUMNS)
    from machining_t2v.evaluation.inworld import InWorldEvaluator

    # A folder that is there but unreadable raises: a stale or broken starter must not pass unnoticed.
    evaluator = InWorldEvaluator.load(folder)
    predictions = label_every_clip(evaluator, generated, prompts, reference_clips, reference_table)
    table = in_world_accuracies(predictions)
    _log_per_variant(table, [f"{key}_accuracy" for key in INWORLD_KEYS], infix="inworld.")
    logger.info("In-world metrics from %s: %s", folder, "; ".join(
        f"{r['variant']} style {r['style_accuracy']:.2f} scene {r['scene_accuracy']:.2f} "
        f"motion {r['motion_accuracy']:.2f}" for r in table[table["split"] == "all"].to_dict("records")))
    return table, predictions


# --------------------------------------------------------------------------- report pieces


def describe_models(generation_record: dict[str, Any], clip_record: dict[str, Any],
                    reference_table: pd.DataFrame) -> dict[str, Any]:
    """Which models produced which numbers: the generation record plus the CLIP scorer and
    reference clips; also tags the MLflow run with the base model and CLIP source."""
    record = {**generation_record, "clip_model": clip_record,
              "reference_clips": {str(k): int(v) for k, v in reference_table["process"].value_counts().items()},
              "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")}
    tracking.set_tags({"eval.base_model": str(record["base_model_source"]),
                       "eval.motion_adapter": str(record["motion_adapter"]),
                       "eval.clip_model": str(clip_record["source"]),
                       "eval.clip_is_standin": str(bool(clip_record["is_standin"])).lower()})
    return record


def make_frame_strips(generated: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, Image.Image]:
    """One frame strip per prompt per variant (per seed), named ``<prompt_id>__<variant>__seed<n>``."""
    report = params.get("report") or {}
    strips = {}
    for key, frames in generated.items():
        variant, prompt_id, seed = parse_clip_key(key)
        strips[strip_name(prompt_id, variant, seed)] = frame_strip(
            frames, max_frames=int(report.get("strip_frames", 8)), scale=int(report.get("strip_scale", 1)))
    return strips


def make_comparison_videos(generated: dict[str, np.ndarray], generation_record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per prompt and seed, the variants' clips side by side (in the order base, image, motion, both)."""
    from machining_t2v.diffusion.sampling import side_by_side

    videos = {}
    variants = generation_record["variants"]
    groups: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for key, frames in generated.items():
        variant, prompt_id, seed = parse_clip_key(key)
        groups.setdefault((prompt_id, seed), {})[variant] = frames
    for (prompt_id, seed), by_variant in sorted(groups.items()):
        videos[f"{prompt_id}__seed{seed}"] = side_by_side([by_variant[v] for v in variants if v in by_variant])
    return videos


def plot_metrics(summary: pd.DataFrame, models: dict[str, Any]) -> dict[str, Image.Image]:
    """One bar chart per metric: the variants' means, the reference ceiling as a dashed line."""
    overall = summary[summary["split"] == "all"].set_index("variant")
    variants = [v for v in overall.index if v != REFERENCE]
    standin = bool(models["clip_model"]["is_standin"])
    plots = {}
    for metric in METRICS:
        reference = overall.loc[REFERENCE, metric] if REFERENCE in overall.index else None
        note = "stand-in CLIP (random weights): this score measures nothing" if standin and metric in CLIP_METRICS \
            else ""
        plots[metric] = bar_chart(f"{metric}: mean per variant", [variant_label(v) for v in variants],
                                  [float(overall.loc[v, metric]) for v in variants], reference=reference,
                                  note=note)
    return plots


def _materialise(images: dict[str, Any]) -> dict[str, Image.Image]:
    """Images from a partitioned dataset come as loader callables; call them."""
    return {name: image() if callable(image) else image for name, image in images.items()}


def build_report(
    summary: pd.DataFrame,
    metrics: pd.DataFrame,
    prompts: pd.DataFrame,
    models: dict[str, Any],
    plots: dict[str, Image.Image],
    strips: dict[str, Image.Image],
    inworld: pd.DataFrame,
    inworld_predictions: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[str, str]:
    """The evaluation report as Markdown (images linked beside it) and self-contained HTML.

    Its content is :func:`~machining_t2v.evaluation.report_sections.report_blocks`: which models
    produced the numbers, plainly saying when the stand-in CLIP or the random tiny base model
    makes the scores meaningless, the results, and the in-world metrics when the base model has an
    in-world evaluator (``inworld`` is not empty, see :func:`score_in_world`).
    """
    report = params.get("report") or {}
    blocks = report_blocks(summary, metrics, prompts, models, _materialise(plots), _materialise(strips), inworld,
                           inworld_predictions, report)
    return to_markdown(blocks), to_html(blocks, report_title(report))


# --------------------------------------------------------------------------- beside the LoRAs


def build_model_cards(
    image_lora: TrainedLora | None,
    motion_lora: TrainedLora | None,
    summary: pd.DataFrame,
    inworld: pd.DataFrame,
    models: dict[str, Any],
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    trigger: str | None,
    params: dict[str, Any],
    *concept_loras: TrainedLora | None,
) -> list[ModelCard]:
    """The model cards of the image, the motion and then each motion concept's LoRA, to be written beside
    them (:mod:`machining_t2v.publishing`): ``README.md`` with the figures of the LoRA's variants (a
    concept's: ``motion:<concept>``, ``both:<concept>``), a sample GIF (base | +LoRA, the first prompt and
    seed) and, beside a motion LoRA, the ComfyUI workflow of the pair with ``image_lora``. A LoRA that
    does not exist gets an empty card (its folder's old card files are removed)."""
    return [_model_card(lora, image_lora is not None, summary, inworld, models, generated, prompts, trigger, params)
            for lora in (image_lora, motion_lora, *concept_loras)]


def _model_card(lora: TrainedLora | None, with_image_lora: bool, summary: pd.DataFrame, inworld: pd.DataFrame,
                models: dict[str, Any], generated: dict[str, np.ndarray], prompts: pd.DataFrame, trigger: str | None,
                params: dict[str, Any]) -> ModelCard:
    from machining_t2v.diffusion.sampling import side_by_side
    from machining_t2v.lora.formats import group_by_module
    from machining_t2v.publishing.model_card import (
        CardFacts,
        ModelCard,
        model_card_text,
        sample_clips,
    )

    if lora is None:
        return ModelCard()
    kind, concept = lora.kind, lora.info.get("concept")
    # The usage lines name the folder relative to the project (a run's working directory) when it lies inside.
    path, project = (Path(lora.path).resolve() if lora.path else None), Path.cwd().resolve()
    folder = "" if path is None else str(path.relative_to(project) if path.is_relative_to(project) else path)
    texts = dict(zip(prompts["prompt_id"], prompts["prompt"], strict=True))
    variant = concept_variant(kind, concept)
    evaluated = any(parse_clip_key(key)[0] == variant for key in generated)
    prompt_id, seed, clips = sample_clips(generated, variant) if evaluated else (prompts["prompt_id"].iloc[0], None, {})
    comfyui = params["model_cards"]["comfyui"]
    facts = CardFacts(
        kind=kind, info=lora.info, lora_config=lora.lora_config, num_layers=len(group_by_module(lora.state_dict)),
        trigger=trigger or "", scale=float(params["lora_scales"][kind]), evaluation=models, summary=summary,
        inworld=inworld, sample_prompt=texts[prompt_id], sample_seed=seed, sample_variants=list(clips),
        with_workflow=kind == "motion",
        workflow_models={"checkpoint": comfyui["checkpoint"], "motion_module": comfyui["motion_module"]},
        concept=concept, folder=folder,
    )  # fmt: skip
    workflow = None
    if kind == "motion":
        workflow = _pair_workflow(lora, with_image_lora, models["sampling"], texts[prompt_id], seed or 0, params)
    sample = side_by_side(list(clips.values())) if clips else None
    return ModelCard(readme=model_card_text(facts), sample=sample, workflow=workflow)


def _pair_workflow(motion_lora: TrainedLora, with_image_lora: bool, sampling: dict[str, Any], prompt: str, seed: int,
                   params: dict[str, Any]) -> dict[str, Any]:
    """The ComfyUI workflow of the image + motion LoRA pair with the evaluation's prompt and sampler."""
    from machining_t2v.lora.files import ANIMATEDIFF_MOTION_LORA_FILENAME, KOHYA_IMAGE_LORA_FILENAME
    from machining_t2v.publishing.comfyui_workflow import WorkflowSettings, comfyui_workflow

    comfyui = params["model_cards"]["comfyui"]
    return comfyui_workflow(WorkflowSettings(
        checkpoint=comfyui["checkpoint"], motion_module=comfyui["motion_module"],
        motion_lora_file=ANIMATEDIFF_MOTION_LORA_FILENAME, motion_lora_scale=float(params["lora_scales"]["motion"]),
        image_lora_file=KOHYA_IMAGE_LORA_FILENAME if with_image_lora else None,
        image_lora_scale=float(params["lora_scales"]["image"]), prompt=prompt,
        negative_prompt=sampling.get("negative_prompt") or "", num_frames=int(sampling["num_frames"]),
        size=int(sampling["size"]), steps=int(sampling["num_inference_steps"]),
        guidance_scale=float(sampling["guidance_scale"]), seed=seed, sampler=sampling["scheduler"],
        # The motion LoRA trained under the video sampler's schedule, which the workflow must sample with.
        beta_schedule=motion_lora.info.get("beta_schedule", "linear"), frame_rate=float(comfyui["frame_rate"]),
    ))  # fmt: skip


__all__ = [
    "build_model_cards",
    "build_prompt_table",
    "build_report",
    "describe_models",
    "generate_evaluation_clips",
    "make_comparison_videos",
    "make_frame_strips",
    "plot_metrics",
    "score_clips",
    "score_in_world",
    "select_reference_clips",
    "summarise_metrics",
]
