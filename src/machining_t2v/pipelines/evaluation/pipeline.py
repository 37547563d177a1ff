"""``evaluation`` pipeline: base vs +image LoRA vs +motion LoRA vs both -> metrics, report, plots, strips,
and a model card beside each LoRA (with a ComfyUI workflow beside the motion LoRA).

When the base model is the starter model, its in-world evaluator adds in-world metrics
(style, scene and motion accuracy); for any other base model that table is empty.

Registered on its own (``kedro run --pipelines=evaluation`` evaluates the LoRAs on disk) and
appended to the ``image_ft`` and ``motion_ft`` chains, where it runs after the training nodes
because it reads the ``image_lora`` and ``motion_lora`` datasets they write (with motion concepts,
also each ``<concept>.motion_lora``).
"""

from collections.abc import Sequence

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_model_cards,
    build_prompt_table,
    build_report,
    describe_models,
    generate_evaluation_clips,
    make_comparison_videos,
    make_frame_strips,
    plot_metrics,
    score_clips,
    score_in_world,
    select_reference_clips,
    summarise_metrics,
)


def _generation_inputs(concepts: Sequence[str]) -> dict[str, str]:
    """The generation node's inputs by argument name: with motion concepts, also each concept's LoRA
    (by concept name) and the reference table that tells each concept's process."""
    inputs = {"prompts": "evaluation_prompts", "image_lora": "image_lora", "motion_lora": "motion_lora",
              "base": "base_model", "adapter": "motion_adapter", "base_model": "params:base_model",
              "params": "params:evaluation", "dreambooth_lora": "image_dreambooth_lora",
              "image_embedding": "image_embedding"}
    if concepts:
        inputs |= {"reference_table": "evaluation_reference_table",
                   **{concept: f"{concept}.motion_lora" for concept in concepts}}
    return inputs


def create_pipeline(concepts: Sequence[str] = (), **kwargs) -> Pipeline:
    """The evaluation; ``concepts`` (names of ``motion_ft.concepts``) add each concept's motion LoRA."""
    return Pipeline(
        [
            Node(build_prompt_table, inputs="params:evaluation", outputs="evaluation_prompts",
                 name="build_evaluation_prompts"),
            Node(select_reference_clips, inputs=["clips", "frame_manifest", "captions", "raw_videos",
                                                     "params:evaluation", "params:motion_ft.concepts"],
                 outputs=["evaluation_reference_clips", "evaluation_reference_table"],
                 name="select_reference_clips"),
            Node(generate_evaluation_clips, inputs=_generation_inputs(concepts),
                 outputs=["evaluation_clips", "evaluation_generation_record"], name="generate_evaluation_clips"),
            Node(score_clips,
                 inputs=["evaluation_clips", "evaluation_prompts", "evaluation_reference_clips",
                         "evaluation_reference_table", "params:evaluation"],
                 outputs=["evaluation_metrics", "evaluation_clip_record"], name="score_evaluation_clips"),
            Node(score_in_world,
                 inputs=["evaluation_clips", "evaluation_prompts", "evaluation_reference_clips",
                         "evaluation_reference_table", "evaluation_generation_record"],
                 outputs=["evaluation_inworld", "evaluation_inworld_predictions"], name="score_evaluation_in_world"),
            Node(summarise_metrics, inputs="evaluation_metrics", outputs="evaluation_summary",
                 name="summarise_evaluation_metrics"),
            Node(describe_models,
                 inputs=["evaluation_generation_record", "evaluation_clip_record", "evaluation_reference_table"],
                 outputs="evaluation_models", name="describe_evaluation_models"),
            Node(make_frame_strips, inputs=["evaluation_clips", "params:evaluation"], outputs="evaluation_strips",
                 name="make_evaluation_frame_strips"),
            Node(make_comparison_videos, inputs=["evaluation_clips", "evaluation_generation_record"],
                 outputs="evaluation_videos", name="make_evaluation_videos"),
            Node(plot_metrics, inputs=["evaluation_summary", "evaluation_models"], outputs="evaluation_plots",
                 name="plot_evaluation_metrics"),
            Node(build_report,
                 inputs=["evaluation_summary", "evaluation_metrics", "evaluation_prompts", "evaluation_models",
                         "evaluation_plots", "evaluation_strips", "evaluation_inworld",
                         "evaluation_inworld_predictions", "params:evaluation"],
                 outputs=["evaluation_report", "evaluation_report_html"], name="build_evaluation_report"),
            # One node for every card, so the evaluation's clips are read once; outside the concepts'
            # namespaces, which Kedro wants contiguous (the generation node lies between their training
            # and their cards).
            Node(build_model_cards,
                 inputs=["image_lora", "motion_lora", "evaluation_summary", "evaluation_inworld", "evaluation_models",
                         "evaluation_clips", "evaluation_prompts", "params:captions.trigger", "params:evaluation",
                         *(f"{concept}.motion_lora" for concept in concepts)],
                 outputs=["image_lora_card", "motion_lora_card", *(f"{concept}.motion_lora_card" for concept in concepts)],
                 name="build_model_cards"),
        ]
    )
