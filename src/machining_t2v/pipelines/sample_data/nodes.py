"""Built-in sample data: synthetic milling and turning videos for a machine with no videos of its own."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from machining_t2v.data.synthetic_videos.clips import ClipSpec, render_clip, sample_clip_specs
from machining_t2v.kedro_glue.datasets import SampleVideo

logger = logging.getLogger(__name__)

METADATA_FIELDS = ("process", "operation", "machine", "material", "direction", "caption")


def _render(spec: ClipSpec) -> SampleVideo:
    row = {"file": f"{spec.name}.{spec.container}", **{k: str(v) for k, v in asdict(spec).items() if k in METADATA_FIELDS}}
    return SampleVideo(frames=render_clip(spec), fps=spec.fps, metadata=row)


def render_sample_videos(params: dict[str, Any]) -> dict[str, Callable[[], SampleVideo]]:
    """Describe the deterministic sample clips; each is rendered only when the dataset writes it.

    Rendering is deferred so that a raw folder already holding the user's videos costs nothing:
    ``VideoFolderDataset`` then skips the write and never calls the renderers.
    """
    specs = sample_clip_specs(
        num_clips=int(params["num_clips"]), seed=int(params["seed"]), width=int(params["width"]),
        height=int(params["height"]), fps=int(params["fps"]), min_seconds=float(params["min_seconds"]),
        max_seconds=float(params["max_seconds"]), webm_fraction=float(params["webm_fraction"]),
        close_up=float(params["close_up"]), feed_scale=float(params["feed_scale"]),
    )  # fmt: skip
    return {f"{spec.name}.{spec.container}": functools.partial(_render, spec) for spec in specs}
