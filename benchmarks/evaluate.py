"""In-world scoring: what the evaluator costs per generated clip.

The evaluation pipeline scores every generated clip (16 per variant by default) and every
reference clip with the in-world evaluator. Timed, interleaved, on 8-frame 64 px renders of
the starter world (plain shapes, each motion):
  * ``motion_features``: Farneback flow over the clip and the features the motion head reads;
  * ``predict``: the whole evaluator (frame CNN on every frame plus the motion head) per clip,
    with the committed starter's evaluator (a small one trained here if none is committed).

Target: motion features under 100 ms per clip, so scoring stays small next to generating a
clip (the ``generate`` area times that).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import PROJECT_ROOT, Context, row, target
from benchmarks.timing import Timed, measure_interleaved

MOTION_FEATURES_TARGET_MS = 100.0


def _starter_tools() -> None:
    """Make the starter's maintainer tools (tools/starter/src) importable: they render the clips."""
    path = str(PROJECT_ROOT / "tools" / "starter" / "src")
    if path not in sys.path:
        sys.path.insert(0, path)


def _evaluator(clips: np.ndarray, labels: list[dict[str, str]]):
    from machining_t2v.evaluation.inworld import InWorldEvaluator
    from machining_t2v_starter.evaluator_training import train_evaluator

    committed = PROJECT_ROOT / "models" / "starter" / "inworld_evaluator"
    if committed.is_dir():
        return InWorldEvaluator.load(committed), "committed starter evaluator"
    return train_evaluator(clips, labels, epochs=1, progress=False), "evaluator trained on the benchmark clips"


def run(ctx: Context) -> dict[str, Any]:
    _starter_tools()
    from machining_t2v.evaluation.inworld_features import motion_features
    from machining_t2v_starter import world as starter_world

    count = 11 if ctx.quick else 44  # every shape motion, once or four times
    clips, _, labels = starter_world.stack_clips(starter_world.render_shape_clips(count, seed=0))
    evaluator, which = _evaluator(clips, labels)

    def features() -> Timed:
        start = time.perf_counter()
        for clip in clips:
            motion_features(clip)
        return Timed((time.perf_counter() - start) / len(clips))

    def predict() -> Timed:
        start = time.perf_counter()
        evaluator.predict(clips)
        return Timed((time.perf_counter() - start) / len(clips))

    timings = measure_interleaved({"motion_features": features, "predict": predict},
                                  **ctx.timing_options(30.0))
    feature_ms, predict_ms = timings["motion_features"].median * 1000, timings["predict"].median * 1000
    rows = [
        row("inworld.motion_features_ms_per_clip", "in-world motion features (Farneback flow), 8-frame 64 px clip",
            feature_ms, "ms", better="lower", measurement=timings["motion_features"]),
        row("inworld.predict_ms_per_clip", f"in-world evaluator, whole prediction per clip ({which})",
            predict_ms, "ms", better="lower", measurement=timings["predict"], note=f"batch of {len(clips)} clips"),
    ]
    targets = [target("inworld.motion_features_under_100ms", "motion features per clip (ms)", feature_ms,
                      MOTION_FEATURES_TARGET_MS, "<=")]
    findings = [f"Scoring a clip in-world takes {predict_ms:.0f} ms, {feature_ms:.0f} ms of it optical flow."]
    return {"title": "In-world scoring", "rows": rows, "targets": targets, "findings": findings,
            "setup": {"clips": len(clips), "frames_per_clip": int(clips.shape[1]), "evaluator": which}}
