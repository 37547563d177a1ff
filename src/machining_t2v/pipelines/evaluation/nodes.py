"""Evaluation: base vs +image LoRA vs +motion LoRA vs both, on seen and held-out prompts,
scored against the reference clips of the same process."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from machining_t2v.evaluation.inworld_prompts import apply_world_rules, expected_labels
from machining_t2v.evaluation.metrics import (
    FlowStatistics,
    flow_statistics,
    motion_fidelity,
    video_metrics,
)
from machining_t2v.evaluation.report import (
    Block,
    BulletList,
    Callout,
    Figure,
    Heading,
    Paragraph,
    Table,
    bar_chart,
    frame_strip,
    to_html,
    to_markdown,
)
from machining_t2v.kedro_glue import tracking
from machining_t2v.kedro_glue.datasets import TrainedLora

# clip_metrics, generation, inworld and sampling (torch, diffusers, transformers) are imported inside the
# functions that use them: registering the pipelines must not pay for them.

logger = logging.getLogger(__name__)

VARIANT_ADAPTERS: dict[str, tuple[str, ...]] = {
    "base": (),
    "image": ("image",),
    "motion": ("motion",),
    "both": ("image", "motion"),
}
"""Which LoRA adapters each variant switches on."""

VARIANT_LABELS = {"base": "base", "image": "+image LoRA", "motion": "+motion LoRA", "both": "+image +motion LoRA",
                  "reference": "reference clips (ceiling)"}
REFERENCE = "reference"
SPLITS = ("seen", "held_out")
METRICS = ("clip_t", "clip_f", "flicker", "dynamic_degree", "dynamic", "mean_flow_magnitude", "rotation_ratio",
           "motion_fidelity")
CLIP_METRICS = ("clip_t", "clip_f")
METRIC_DESCRIPTIONS = {
    "clip_t": "CLIP-T: 100 x max(cos(text, frame), 0), mean over frames (higher = frames match the prompt)",
    "clip_f": "CLIP-F: mean cosine of CLIP embeddings of consecutive frames (higher = steadier content)",
    "flicker": "temporal flickering (VBench): (255 - mean |frame_t - frame_t+1|) / 255 (higher = less flicker)",
    "dynamic_degree": "dynamic degree: mean of the top-5% optical-flow magnitudes per frame pair, px256 per frame",
    "dynamic": "share of clips above VBench's dynamic threshold (6 px256 per frame)",
    "mean_flow_magnitude": "mean optical-flow magnitude over all pixels, px256 per frame",
    "rotation_ratio": "share of rotation (vs translation) in the motion, 0-1",
    "motion_fidelity": "1 - mean distance of flow magnitude/direction histograms and rotation ratio to the "
                       "reference clips of the same process (1 = moves like the references)",
}
INWORLD_FOLDER = "inworld_evaluator"
"""Subfolder of a base model (the starter model) that holds its in-world evaluator."""
INWORLD_KEYS = ("style", "scene", "motion")
INWORLD_COLUMNS = ["variant", "split", "n_clips", *(f"{key}_accuracy" for key in INWORLD_KEYS)]
INWORLD_PREDICTION_COLUMNS = ["variant", "prompt_id", "split", "seed", *(f"predicted_{key}" for key in INWORLD_KEYS),
                              *(f"expected_{key}" for key in INWORLD_KEYS)]
_PROMPT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*$")
_CLIP_KEY_SEP = "__"


# --------------------------------------------------------------------------- prompts and references


def build_prompt_table(params: dict[str, Any]) -> pd.DataFrame:
    """The evaluation prompts as a table (``prompt_id``, ``prompt``, ``process``, ``split``).

    Each prompt names its process (a key of ``evaluation.processes``, so it is compared with
    reference clips of that process) and its split: ``seen`` (like the training captions) or
    ``held_out`` (e.g. a milling direction or material the training videos do not show).
    """
    prompts = params.get("prompts") or []
    if not prompts:
        raise ValueError("evaluation.prompts is empty: list prompts with id, text, process and split")
    processes = set((params.get("processes") or {}).keys())
    rows = []
    for number, entry in enumerate(prompts):
        prompt_id, text = str(entry.get("id", "")), str(entry.get("text", "") or "").strip()
        process, split = str(entry.get("process", "")), str(entry.get("split", ""))
        where = f"evaluation.prompts[{number}] ({prompt_id or 'no id'})"
        if not _PROMPT_ID_RE.match(prompt_id):
            raise ValueError(f"{where}: id must be letters, digits, '-' and single '_' (it names files)")
        if not text:
            raise ValueError(f"{where}: text is empty")
        if split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if process not in processes:
            raise ValueError(f"{where}: process must be one of evaluation.processes {sorted(processes)}, "
                             f"got {process!r}")
        rows.append({"prompt_id": prompt_id, "prompt": text, "process": process, "split": split})
    table = pd.DataFrame(rows, columns=["prompt_id", "prompt", "process", "split"])
    duplicated = table["prompt_id"][table["prompt_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"evaluation.prompts: duplicate ids {duplicated}")
    return table


def process_of(text: str, keywords: dict[str, list[str]]) -> str | None:
    """The process whose keywords occur most often (whole words) in ``text``; None if none or a tie."""
    lowered = text.lower()
    counts = {process: sum(len(re.findall(rf"\b{re.escape(word.lower())}\b", lowered)) for word in words)
              for process, words in keywords.items()}
    best = max(counts.values(), default=0)
    winners = [process for process, count in counts.items() if count == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def _spread_pick(ids: list[str], limit: int) -> list[str]:
    if limit <= 0 or len(ids) <= limit:
        return ids
    return [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, limit).round().astype(int))]


def select_reference_clips(
    clips: dict[str, Callable[[], np.ndarray]],
    frame_manifest: pd.DataFrame,
    captions: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Pick the reference clips per process and load them.

    A clip's process is recognised from its caption and video path with the keywords of
    ``evaluation.processes`` (e.g. "lathe", "chuck" -> turning). At most
    ``evaluation.reference.max_clips_per_process`` clips per process are kept, spread evenly
    over the sorted clip ids.

    Returns:
        the clips (sample id -> uint8 frames) and a table (sample_id, video, caption, process).
    """
    keywords = params["processes"]
    limit = int((params.get("reference") or {}).get("max_clips_per_process") or 0)
    manifest = frame_manifest[frame_manifest["kind"] == "clip"] if not frame_manifest.empty else frame_manifest
    video_of = dict(zip(manifest.get("sample_id", []), manifest.get("video", []), strict=True))
    caption_of = dict(zip(captions.get("sample_id", []), captions.get("caption", []), strict=True))
    rows = []
    for sample_id in sorted(clips):
        video, caption = str(video_of.get(sample_id, "")), str(caption_of.get(sample_id, "") or "")
        process = process_of(f"{caption} {video.replace('_', ' ').replace('/', ' ')}", keywords)
        rows.append({"sample_id": sample_id, "video": video, "caption": caption, "process": process})
    table = pd.DataFrame(rows, columns=["sample_id", "video", "caption", "process"])
    unknown = table[table["process"].isna()]
    if len(unknown):
        logger.warning("%d reference clips match no process of evaluation.processes (e.g. %s); they are left out",
                       len(unknown), unknown["sample_id"].head(3).tolist())
    kept = []
    for process in keywords:
        ids = table.loc[table["process"] == process, "sample_id"].tolist()
        if not ids:
            logger.warning("No reference clip of process %r: its motion fidelity cannot be measured", process)
        kept += _spread_pick(ids, limit)
    table = table[table["sample_id"].isin(kept)].reset_index(drop=True)
    loaded = {sample_id: np.asarray(clips[sample_id]()) for sample_id in table["sample_id"]}
    logger.info("Reference clips: %s", table["process"].value_counts().to_dict())
    return loaded, table


# --------------------------------------------------------------------------- generation


def clip_key(variant: str, prompt_id: str, seed: int) -> str:
    """Name of one generated clip, e.g. ``both__mill_x__seed0``."""
    return _CLIP_KEY_SEP.join((variant, prompt_id, f"seed{seed}"))


def parse_clip_key(key: str) -> tuple[str, str, int]:
    """Inverse of :func:`clip_key`."""
    variant, prompt_id, seed = key.split(_CLIP_KEY_SEP)
    return variant, prompt_id, int(seed.removeprefix("seed"))


def _lora_folder(lora: TrainedLora, kind: str) -> str:
    if lora.path is None:
        raise ValueError(f"The {kind} LoRA has no folder on disk; the evaluation loads LoRAs from their folders")
    return str(lora.path)


def generate_evaluation_clips(
    prompts: pd.DataFrame,
    image_lora: TrainedLora | None,
    motion_lora: TrainedLora | None,
    base_model: dict[str, Any],
    params: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generate every prompt with every variant whose LoRAs exist, with the same seeds.

    The LoRAs are loaded from their folders with diffusers' ``pipe.load_lora_weights`` and
    switched per variant with ``pipe.set_adapters`` (through :mod:`machining_t2v.generation.generator`),
    exactly as a user of the console script or of diffusers would apply them.

    Returns:
        the clips (see :func:`clip_key`) and a record of what produced them (models, LoRA
        folders, scales, sampler settings, variants run and skipped).
    """
    scales = {"image": float(params["lora_scales"]["image"]), "motion": float(params["lora_scales"]["motion"])}
    unknown = [v for v in params["variants"] if v not in VARIANT_ADAPTERS]
    if unknown:
        raise ValueError(f"evaluation.variants: unknown {unknown}; choose from {list(VARIANT_ADAPTERS)}")
    from machining_t2v.generation.generator import cpu_threads

    with cpu_threads(params.get("cpu_threads")):
        return _generate_variants(prompts, image_lora, motion_lora, base_model, params, scales)


def _generate_variants(prompts: pd.DataFrame, image_lora: TrainedLora | None, motion_lora: TrainedLora | None,
                       base_model: dict[str, Any], params: dict[str, Any],
                       scales: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from machining_t2v.generation.generator import (
        generate_video,
        load_generator,
        load_lora,
        set_lora_scales,
    )

    sampling = params["sampling"]
    started = time.perf_counter()
    generator = load_generator(
        base_model["pretrained"], base_model["motion_adapter"], tiny_model_dir=base_model["tiny_model_dir"],
        revision=base_model.get("revision"), variant=base_model.get("variant"), scheduler=sampling["scheduler"],
    )  # fmt: skip
    for kind, lora in (("image", image_lora), ("motion", motion_lora)):
        if lora is not None:
            load_lora(generator, _lora_folder(lora, kind), kind)
    variants, skipped = [], {}
    for variant in params["variants"]:
        missing = [kind for kind in VARIANT_ADAPTERS[variant] if kind not in generator.loras]
        if missing:
            skipped[variant] = f"no trained {' and '.join(missing)} LoRA"
        else:
            variants.append(variant)
    seeds = [int(sampling["seed"]) + offset for offset in range(int(sampling.get("seeds_per_prompt", 1)))]
    clips: dict[str, np.ndarray] = {}
    for variant in variants:
        set_lora_scales(generator, {kind: scales[kind] for kind in VARIANT_ADAPTERS[variant]})
        for row in prompts.itertuples(index=False):
            for seed in seeds:
                clips[clip_key(variant, row.prompt_id, seed)] = generate_video(
                    generator, row.prompt, negative_prompt=sampling.get("negative_prompt"),
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


def _fidelity(stats: FlowStatistics, references: list[FlowStatistics]) -> float:
    if not references:
        return float("nan")
    return float(motion_fidelity([stats], references)["motion_fidelity"])


def score_clips(
    generated: dict[str, np.ndarray],
    prompts: pd.DataFrame,
    reference_clips: dict[str, np.ndarray],
    reference_table: pd.DataFrame,
    params: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every generated clip and every reference clip.

    Per clip: CLIP-T (against its prompt; a reference clip against its caption), CLIP-F,
    flicker, dynamic degree, dynamic, mean flow magnitude, rotation ratio and motion fidelity
    to the reference clips of the same process (a reference clip against the *other* references
    of its process, so the ceiling is not trivially 1).

    Returns:
        long table (variant, prompt_id, prompt, process, split, seed, metric, value) and a
        record of the CLIP model used (``source``, ``is_standin``, ``label``).
    """
    from machining_t2v.generation.generator import cpu_threads

    with cpu_threads(params.get("cpu_threads")):
        return _score(generated, prompts, reference_clips, reference_table, params)


def _score(generated: dict[str, np.ndarray], prompts: pd.DataFrame, reference_clips: dict[str, np.ndarray],
           reference_table: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    from machining_t2v.evaluation.clip_metrics import STANDIN_NOTE, clip_f, clip_t, load_clip_scorer

    scorer = load_clip_scorer(params["clip_model"], params.get("clip_standin_dir"))
    reference_stats = {sample_id: flow_statistics(frames) for sample_id, frames in reference_clips.items()}
    process_refs: dict[str, list[str]] = {}
    for row in reference_table.itertuples(index=False):
        process_refs.setdefault(row.process, []).append(row.sample_id)
    prompt_of = prompts.set_index("prompt_id")
    rows: list[dict[str, Any]] = []

    def add(base: dict[str, Any], frames: np.ndarray, text: str, stats: FlowStatistics, refs: list[str]) -> None:
        values = {"clip_t": clip_t(scorer, frames, text), "clip_f": clip_f(scorer, frames), **video_metrics(frames),
                  "motion_fidelity": _fidelity(stats, [reference_stats[r] for r in refs])}
        rows.extend({**base, "metric": metric, "value": float(values[metric])} for metric in METRICS)

    for key in sorted(generated):
        variant, prompt_id, seed = parse_clip_key(key)
        prompt = prompt_of.loc[prompt_id]
        frames = generated[key]
        add({"variant": variant, "prompt_id": prompt_id, "prompt": prompt["prompt"], "process": prompt["process"],
             "split": prompt["split"], "seed": seed}, frames, prompt["prompt"], flow_statistics(frames),
            process_refs.get(prompt["process"], []))
    for row in reference_table.itertuples(index=False):
        others = [r for r in process_refs.get(row.process, []) if r != row.sample_id]
        add({"variant": REFERENCE, "prompt_id": row.sample_id, "prompt": row.caption, "process": row.process,
             "split": REFERENCE, "seed": -1}, reference_clips[row.sample_id], row.caption or row.process,
            reference_stats[row.sample_id], others)
    columns = ["variant", "prompt_id", "prompt", "process", "split", "seed", "metric", "value"]
    record = {"source": scorer.source, "is_standin": scorer.is_standin, "label": scorer.label,
              "note": STANDIN_NOTE if scorer.is_standin else ""}
    return pd.DataFrame(rows, columns=columns), record


def summarise_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per variant, overall (``split`` = ``all``) and per split, plus the
    reference ceiling; logs them to MLflow as ``eval.<variant>.<metric>`` and
    ``eval.<variant>.<split>.<metric>`` (reference: ``eval.reference.<metric>``).

    Returns:
        one row per (variant, split) with ``n_clips`` and one column per metric.
    """
    rows = []
    for variant, split, group in _variant_split_groups(metrics):
        means = group.groupby("metric")["value"].mean()
        n_clips = len(group.drop_duplicates(["prompt_id", "seed"]))
        rows.append({"variant": variant, "split": split, "n_clips": n_clips,
                     **{metric: float(means.get(metric, np.nan)) for metric in METRICS}})
    summary = pd.DataFrame(rows, columns=["variant", "split", "n_clips", *METRICS])
    _log_per_variant(summary, list(METRICS))
    return summary


def _variant_split_groups(table: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(variant, split, rows) per variant in report order: ``all`` and each split present;
    the reference clips only as ``all``."""
    for variant in [v for v in [*VARIANT_ADAPTERS, REFERENCE] if v in set(table["variant"])]:
        subset = table[table["variant"] == variant]
        yield variant, "all", subset
        if variant != REFERENCE:
            for split in SPLITS:
                if (subset["split"] == split).any():
                    yield variant, split, subset[subset["split"] == split]


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
    are empty. A generated clip is expected to show what its prompt asks for and a reference
    clip what its caption says (:func:`machining_t2v.evaluation.inworld_prompts.expected_labels`); a clip
    read as plain shapes is never shop style (:func:`machining_t2v.evaluation.inworld_prompts.apply_world_rules`).
    Accuracy is the share of clips whose predicted label is the expected one, over the clips
    whose prompt states that label (NaN if none does). Logged to MLflow as
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
    prompt_of = prompts.set_index("prompt_id")
    rows: list[dict[str, Any]] = []

    def add(base: dict[str, Any], frames: np.ndarray, text: str) -> None:
        # One clip at a time: reference clips may differ in length and size, a batch may not.
        predicted = apply_world_rules(evaluator.predict(np.asarray(frames)[None])[0])
        expected = expected_labels(text)
        rows.append({**base, **{f"predicted_{key}": predicted[key] for key in INWORLD_KEYS},
                     **{f"expected_{key}": expected[key] for key in INWORLD_KEYS}})

    for key in sorted(generated):
        variant, prompt_id, seed = parse_clip_key(key)
        prompt = prompt_of.loc[prompt_id]
        add({"variant": variant, "prompt_id": prompt_id, "split": prompt["split"], "seed": seed}, generated[key],
            prompt["prompt"])
    for row in reference_table.itertuples(index=False):
        add({"variant": REFERENCE, "prompt_id": row.sample_id, "split": REFERENCE, "seed": -1},
            reference_clips[row.sample_id], str(row.caption or ""))
    predictions = pd.DataFrame(rows, columns=INWORLD_PREDICTION_COLUMNS)
    table = _in_world_accuracies(predictions)
    _log_per_variant(table, [f"{key}_accuracy" for key in INWORLD_KEYS], infix="inworld.")
    logger.info("In-world metrics from %s: %s", folder, "; ".join(
        f"{r['variant']} style {r['style_accuracy']:.2f} scene {r['scene_accuracy']:.2f} "
        f"motion {r['motion_accuracy']:.2f}" for r in table[table["split"] == "all"].to_dict("records")))
    return table, predictions


def _labels(frame: pd.DataFrame, prefix: str) -> list[dict[str, str | None]]:
    """``predicted_*`` or ``expected_*`` columns as label dicts; a missing label (None/NaN) as None."""
    return [{key: None if pd.isna(value) else str(value) for key, value in zip(INWORLD_KEYS, values, strict=True)}
            for values in frame[[f"{prefix}{key}" for key in INWORLD_KEYS]].itertuples(index=False)]


def _in_world_accuracies(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (variant, split), grouped like :func:`summarise_metrics`."""
    from machining_t2v.evaluation.inworld import accuracy

    rows = []
    for variant, split, group in _variant_split_groups(predictions):
        predicted, expected = _labels(group, "predicted_"), _labels(group, "expected_")
        rows.append({"variant": variant, "split": split, "n_clips": len(group),
                     **{f"{key}_accuracy": accuracy(predicted, expected, key) for key in INWORLD_KEYS}})
    return pd.DataFrame(rows, columns=INWORLD_COLUMNS)


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
        strips[_CLIP_KEY_SEP.join((prompt_id, variant, f"seed{seed}"))] = frame_strip(
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
        plots[metric] = bar_chart(f"{metric}: mean per variant", [VARIANT_LABELS[v] for v in variants],
                                  [float(overall.loc[v, metric]) for v in variants], reference=reference,
                                  note=note)
    return plots


def _models_table(models: dict[str, Any]) -> Table:
    rows = [("base model", f"`{models['base_model']}` -> `{models['base_model_source']}`",
             models.get("base_model_note") or ""),
            ("motion adapter", f"`{models['motion_adapter']}`",
             f"motion_max_seq_length {models['motion_max_seq_length']}")]
    for kind, lora in models["loras"].items():
        details = [f"{lora['layout']} layout", f"{lora['num_layers']} layers ({lora['targets']})"]
        if lora.get("rank") is not None:
            details.append(f"rank {lora['rank']}, alpha {lora['alpha']}")
        if lora.get("steps") is not None:
            details.append(f"{lora['steps']} steps")
        if lora.get("trained_on"):
            details.append(f"trained on `{lora['trained_on']}`")
        details.append(f"scale {models['lora_scales'][kind]}")
        rows.append((f"{kind} LoRA", f"`{lora['weights_file']}`", ", ".join(details)))
    clip = models["clip_model"]
    rows.append(("CLIP (CLIP-T, CLIP-F)", f"`{clip['source']}`", clip["note"]))
    sampling = models["sampling"]
    rows.append(("sampler", models["scheduler"],
                 f"{sampling['num_inference_steps']} steps, guidance {sampling['guidance_scale']}, "
                 f"{sampling['num_frames']} frames, {sampling['size']} px, seeds {sampling['seeds']} "
                 "(the same for every variant)"))
    return Table(("role", "source", "details"), tuple(rows))


def _summary_table(summary: pd.DataFrame, split: str | None) -> Table:
    selected = summary[summary["split"] == "all"] if split is None else summary[summary["split"] != "all"]
    rows = []
    for row in selected.to_dict("records"):
        label = VARIANT_LABELS.get(row["variant"], row["variant"])
        lead = (label,) if split is None else (label, row["split"])
        rows.append((*lead, row["n_clips"], *(row[m] for m in METRICS)))
    lead_columns = ("variant",) if split is None else ("variant", "prompts")
    return Table((*lead_columns, "clips", *METRICS), tuple(rows))


def _per_prompt_table(metrics: pd.DataFrame) -> Table:
    generated = metrics[metrics["variant"] != REFERENCE]
    wide = generated.pivot_table(index=["prompt_id", "variant", "seed"], columns="metric", values="value",
                                 sort=False).reset_index()
    order = {v: i for i, v in enumerate(VARIANT_ADAPTERS)}
    wide = wide.sort_values(["prompt_id", "variant", "seed"], key=lambda s: s.map(order) if s.name == "variant"
                            else s)
    rows = tuple((r["prompt_id"], VARIANT_LABELS[r["variant"]], int(r["seed"]), *(r.get(m) for m in METRICS))
                 for r in wide.to_dict("records"))
    return Table(("prompt", "variant", "seed", *METRICS), rows)


def _percent(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.0f}%"


def _label_cell(predicted: Any, expected: Any) -> str:
    if pd.isna(expected):
        return str(predicted)  # the prompt does not say: nothing to compare with
    return f"{predicted} ✓" if predicted == expected else f"{predicted} ✗ (expected {expected})"


def _in_world_blocks(inworld: pd.DataFrame, predictions: pd.DataFrame) -> list[Block]:
    """The "In-world metrics" section; nothing when the base model has no in-world evaluator."""
    if inworld.empty:
        return []
    rows = tuple((VARIANT_LABELS.get(r["variant"], r["variant"]), r["split"], int(r["n_clips"]),
                  *(_percent(r[f"{key}_accuracy"]) for key in INWORLD_KEYS)) for r in inworld.to_dict("records"))
    blocks: list[Block] = [
        Heading("In-world metrics"),
        Paragraph("These are in-world metrics: a small classifier trained on renders of the starter world (the "
                  f"base model's `{INWORLD_FOLDER}/` folder) labels every clip, and each accuracy is the share of "
                  "clips that show what their prompt asks for (reference clips: what their caption says); a dash "
                  "where no prompt states that label. **style**: the shop's look (workpiece materials, machine "
                  "colours) vs the neutral grey look of the pretraining renders (a clip read as plain shapes is never "
                  "the shop's look); **scene**: milling, turning or "
                  "plain shapes; **motion**: the dominant motion, read from optical flow (direction of travel, "
                  "inward, rotate, scale, bounce, static). The classifier only knows the starter world, so these "
                  "numbers are reported alongside, not instead of, CLIP-T and CLIP-F."),
        Table(("variant", "split", "clips", "style accuracy", "scene accuracy", "motion accuracy"), rows),
    ]
    generated = predictions[predictions["variant"] != REFERENCE]
    if not generated.empty:
        order = {v: i for i, v in enumerate(VARIANT_ADAPTERS)}
        generated = generated.sort_values(["prompt_id", "variant", "seed"],
                                          key=lambda s: s.map(order) if s.name == "variant" else s)
        blocks += [Heading("In-world labels per prompt", 3),
                   Paragraph("The label each clip got: ✓ where it is what the prompt asks for, ✗ with the expected "
                             "label where it is not, no mark where the prompt does not say."),
                   Table(("prompt", "variant", "seed", "scene", "style", "motion"),
                         tuple((str(r["prompt_id"]), VARIANT_LABELS.get(r["variant"], r["variant"]), int(r["seed"]),
                                *(_label_cell(r[f"predicted_{key}"], r[f"expected_{key}"])
                                  for key in ("scene", "style", "motion")))
                               for r in generated.to_dict("records")))]
    return blocks


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

    It says which models produced the numbers and, when the stand-in CLIP or the random tiny
    base model is used, says plainly that the scores measure nothing about quality. When the
    base model has an in-world evaluator (``inworld`` is not empty, see :func:`score_in_world`),
    an "In-world metrics" section follows the results.
    """
    plots, strips = _materialise(plots), _materialise(strips)
    report = params.get("report") or {}
    plots_link, strips_link = report.get("plots_folder", "evaluation_plots"), report.get("strips_folder",
                                                                                            "evaluation_strips")
    videos_link = report.get("videos_folder", "evaluation_videos")
    title = report.get("title", "Evaluation report")
    clip = models["clip_model"]
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(f"Written {models['created_utc']} UTC by the `evaluation` pipeline. Each prompt is generated "
                  "with the same seeds by every variant; the reference clips (the training clips of the same "
                  "process) give the ceiling."),
    ]
    if clip["is_standin"]:
        blocks.append(Callout(f"CLIP-T and CLIP-F come from `{clip['source']}`, a stand-in CLIP with random "
                              "weights: its scores measure nothing about quality. Set `evaluation.clip_model` "
                              "to a real CLIP (e.g. `openai/clip-vit-base-patch32` or a local folder) for "
                              "meaningful CLIP scores."))
    if models.get("base_model_note"):
        blocks.append(Callout(f"The base model is the {models['base_model_note']}: its videos are noise-like, so "
                              "these numbers exercise the evaluation, they do not show what fine-tuning achieves. "
                              "Set `base_model.pretrained` and `base_model.motion_adapter` in conf/local for "
                              "real use."))
    blocks += [Heading("Models that produced these numbers"), _models_table(models)]
    variant_items = [f"**{VARIANT_LABELS[v]}**: " + (", ".join(f"{kind} LoRA at scale {models['lora_scales'][kind]}"
                                                               for kind in VARIANT_ADAPTERS[v]) or "no LoRA")
                     for v in models["variants"]]
    variant_items += [f"{VARIANT_LABELS[v]}: skipped ({why})" for v, why in models["skipped_variants"].items()]
    blocks += [Heading("Variants"), BulletList(tuple(variant_items))]

    n_prompts = len(prompts)
    blocks += [Heading("Results"),
               Paragraph(f"Mean over {n_prompts} prompts x {len(models['sampling']['seeds'])} seed(s) per variant; "
                         f"the reference row is the mean over {sum(models['reference_clips'].values())} reference "
                         f"clips ({', '.join(f'{k}: {v}' for k, v in models['reference_clips'].items()) or 'none'})."),
               _summary_table(summary, None),
               BulletList(tuple(f"`{m}`: {METRIC_DESCRIPTIONS[m]}" for m in METRICS)),
               *_in_world_blocks(inworld, inworld_predictions),
               Heading("Seen vs held-out prompts"), _summary_table(summary, "split"),
               Heading("Prompts"),
               Table(("id", "split", "process", "prompt"),
                     tuple((r.prompt_id, r.split, r.process, r.prompt) for r in prompts.itertuples(index=False))),
               Heading("Per prompt"), _per_prompt_table(metrics),
               Heading("Plots")]
    blocks += [Figure(metric, f"{plots_link}/{metric}.png", plots[metric]) for metric in METRICS if metric in plots]
    blocks.append(Heading("Frame strips"))
    for row in prompts.itertuples(index=False):
        blocks.append(Heading(f"{row.prompt_id} ({row.split}, {row.process})", 3))
        blocks.append(Paragraph(f"`{row.prompt}` - side-by-side video: `{videos_link}/{row.prompt_id}__seed"
                                f"{models['sampling']['seeds'][0]}.gif`"))
        for variant in models["variants"]:
            for seed in models["sampling"]["seeds"]:
                name = _CLIP_KEY_SEP.join((row.prompt_id, variant, f"seed{seed}"))
                if name in strips:
                    blocks.append(Figure(f"{VARIANT_LABELS[variant]}, seed {seed}", f"{strips_link}/{name}.png",
                                         strips[name]))
    return to_markdown(blocks), to_html(blocks, title)


__all__ = [
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
