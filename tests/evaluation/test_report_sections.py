"""The evaluation report's sections: models, results, in-world metrics only when there are some."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from machining_t2v.evaluation.inworld_scoring import INWORLD_COLUMNS, INWORLD_PREDICTION_COLUMNS
from machining_t2v.evaluation.report import to_markdown
from machining_t2v.evaluation.report_sections import report_blocks, report_title
from machining_t2v.evaluation.scoring import METRICS, SCORE_COLUMNS, metric_means

MODELS = {
    "created_utc": "2026-01-01 00:00:00", "base_model": "starter", "base_model_source": "models/starter",
    "base_model_note": "", "motion_adapter": "models/starter/motion_adapter", "motion_max_seq_length": 32,
    "loras": {}, "lora_scales": {}, "scheduler": "euler", "variants": ["base"],
    "skipped_variants": {"image": "no trained image LoRA"}, "reference_clips": {"milling": 1},
    "clip_model": {"source": "builtin:standin-clip", "is_standin": True, "note": "stand-in"},
    "sampling": {"num_inference_steps": 2, "guidance_scale": 7.5, "num_frames": 4, "size": 64, "seeds": [0]},
}


def test_report_names_the_models_and_leaves_out_an_empty_in_world_section():
    prompts = pd.DataFrame([{"prompt_id": "mill", "prompt": "mtv milling", "process": "milling", "split": "seen"}])
    metrics = pd.DataFrame([{"variant": variant, "prompt_id": prompt_id, "prompt": "mtv milling", "process": "milling",
                             "split": split, "seed": seed, "metric": metric, "value": 0.5}
                            for variant, prompt_id, split, seed in (("base", "mill", "seen", 0),
                                                                    ("reference", "ref", "reference", -1))
                            for metric in METRICS], columns=SCORE_COLUMNS)
    strip = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    blocks = report_blocks(metric_means(metrics), metrics, prompts, MODELS, {}, {"mill__base__seed0": strip},
                           pd.DataFrame(columns=INWORLD_COLUMNS), pd.DataFrame(columns=INWORLD_PREDICTION_COLUMNS),
                           {"strips_folder": "strips"})
    report = to_markdown(blocks)
    assert report.startswith(f"# {report_title({})}")
    assert "a stand-in CLIP with random weights" in report
    assert "base: skipped" not in report and "+image LoRA: skipped (no trained image LoRA)" in report
    assert "](strips/mill__base__seed0.png)" in report
    assert "In-world metrics" not in report
    assert report.index("## Results") < report.index("## Seen vs held-out") < report.index("## Per prompt")
