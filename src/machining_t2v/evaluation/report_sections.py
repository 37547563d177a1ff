"""The evaluation report's content: which models produced the numbers, the results per variant,
split and prompt, the in-world metrics, the plots and the frame strips, as blocks for the generic
renderer (:mod:`machining_t2v.evaluation.report`).

No Kedro import, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from PIL import Image

from machining_t2v.evaluation.inworld_scoring import INWORLD_FOLDER, INWORLD_KEYS
from machining_t2v.evaluation.report import (
    Block,
    BulletList,
    Callout,
    Figure,
    Heading,
    Paragraph,
    Table,
)
from machining_t2v.evaluation.scoring import METRICS
from machining_t2v.evaluation.variants import (
    EMBEDDING_VARIANTS,
    REFERENCE,
    VARIANT_ADAPTERS,
    strip_name,
    variant_adapters,
    variant_label,
)

__all__ = ["METRIC_DESCRIPTIONS", "report_blocks", "report_title"]

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
    "direction_agreement": "share of clips whose tool travels (net displacement of the moving region) the way "
                           "the reference clips of the process mostly do; references: the way their "
                           "metadata.csv direction says",
}


def report_title(report: Mapping[str, Any]) -> str:
    """The report's title: ``evaluation.report.title``, "Evaluation report" by default."""
    return report.get("title", "Evaluation report")


def _in_report_order(generated: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by prompt, then variant in the order base, image, motion, both (a concept variant
    after its plain one), then seed."""
    order = {v: i for i, v in enumerate(VARIANT_ADAPTERS)}
    return generated.sort_values(["prompt_id", "variant", "seed"],
                                 key=lambda s: s.map(lambda v: f"{order[v.partition(':')[0]]:03d}{v}")
                                 if s.name == "variant" else s)


def _models_table(models: dict[str, Any]) -> Table:
    """Role, source and details of every model behind the numbers: base, adapter, LoRAs, CLIP, sampler."""
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
    """The metric means per variant: overall when ``split`` is None, else per split."""
    selected = summary[summary["split"] == "all"] if split is None else summary[summary["split"] != "all"]
    rows = []
    for row in selected.to_dict("records"):
        label = variant_label(row["variant"])
        lead = (label,) if split is None else (label, row["split"])
        rows.append((*lead, row["n_clips"], *(row[m] for m in METRICS)))
    lead_columns = ("variant",) if split is None else ("variant", "prompts")
    return Table((*lead_columns, "clips", *METRICS), tuple(rows))


def _per_prompt_table(metrics: pd.DataFrame) -> Table:
    """Every metric of every generated clip, by prompt, variant and seed."""
    generated = metrics[metrics["variant"] != REFERENCE]
    wide = generated.pivot_table(index=["prompt_id", "variant", "seed"], columns="metric", values="value",
                                 sort=False).reset_index()
    wide = _in_report_order(wide)
    rows = tuple((r["prompt_id"], variant_label(r["variant"]), int(r["seed"]), *(r.get(m) for m in METRICS))
                 for r in wide.to_dict("records"))
    return Table(("prompt", "variant", "seed", *METRICS), rows)


def _percent(value: Any) -> str:
    """An accuracy as a whole percentage; a dash where there is none (NaN)."""
    return "–" if value is None or pd.isna(value) else f"{100 * float(value):.0f}%"


def _label_cell(predicted: Any, expected: Any) -> str:
    """A predicted label, marked right or wrong against the expected one."""
    if pd.isna(expected):
        return str(predicted)  # the prompt does not say: nothing to compare with
    return f"{predicted} ✓" if predicted == expected else f"{predicted} ✗ (expected {expected})"


def _in_world_blocks(inworld: pd.DataFrame, predictions: pd.DataFrame) -> list[Block]:
    """The "In-world metrics" section; nothing when the base model has no in-world evaluator."""
    if inworld.empty:
        return []
    rows = tuple((variant_label(r["variant"]), r["split"], int(r["n_clips"]),
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
        generated = _in_report_order(generated)
        blocks += [Heading("In-world labels per prompt", 3),
                   Paragraph("The label each clip got: ✓ where it is what the prompt asks for, ✗ with the expected "
                             "label where it is not, no mark where the prompt does not say."),
                   Table(("prompt", "variant", "seed", "scene", "style", "motion"),
                         tuple((str(r["prompt_id"]), variant_label(r["variant"]), int(r["seed"]),
                                *(_label_cell(r[f"predicted_{key}"], r[f"expected_{key}"])
                                  for key in ("scene", "style", "motion")))
                               for r in generated.to_dict("records")))]
    return blocks


def report_blocks(
    summary: pd.DataFrame,
    metrics: pd.DataFrame,
    prompts: pd.DataFrame,
    models: dict[str, Any],
    plots: Mapping[str, Image.Image],
    strips: Mapping[str, Image.Image],
    inworld: pd.DataFrame,
    inworld_predictions: pd.DataFrame,
    report: Mapping[str, Any],
) -> list[Block]:
    """The evaluation report, block by block.

    It says which models produced the numbers and, when the stand-in CLIP or the random tiny
    base model is used, says plainly that the scores measure nothing about quality. When the
    base model has an in-world evaluator (``inworld`` is not empty), an "In-world metrics"
    section follows the results.

    Args:
        summary, metrics: the metric means and the per-clip metrics
            (:mod:`machining_t2v.evaluation.scoring`).
        prompts: the prompt table.
        models: what produced the numbers (generation record, CLIP model, reference clips).
        plots, strips: the bar charts by metric and the frame strips by
            :func:`~machining_t2v.evaluation.variants.strip_name`.
        inworld, inworld_predictions: :mod:`machining_t2v.evaluation.inworld_scoring`'s tables.
        report: ``evaluation.report``: ``title`` and the folders the images are linked from
            (``plots_folder``, ``strips_folder``, ``videos_folder``).
    """
    plots_link, strips_link = report.get("plots_folder", "evaluation_plots"), report.get("strips_folder",
                                                                                            "evaluation_strips")
    videos_link = report.get("videos_folder", "evaluation_videos")
    clip = models["clip_model"]
    blocks: list[Block] = [
        Heading(report_title(report), 1),
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
    variant_items = [f"**{variant_label(v)}**: " + (", ".join(f"{kind} LoRA at scale {models['lora_scales'][kind]}"
                                                              for kind in variant_adapters(v))
                                                    or ("its token" if v in EMBEDDING_VARIANTS else "no LoRA"))
                     for v in models["variants"]]
    variant_items += [f"{variant_label(v)}: skipped ({why})" for v, why in models["skipped_variants"].items()]
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
                name = strip_name(row.prompt_id, variant, seed)
                if name in strips:
                    blocks.append(Figure(f"{variant_label(variant)}, seed {seed}", f"{strips_link}/{name}.png",
                                         strips[name]))
    return blocks
