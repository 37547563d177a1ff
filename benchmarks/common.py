"""What the benchmark areas share: the run context, project parameters, sample inputs, result rows."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]



def prepare_process() -> None:
    """Telemetry off, progress bars off, and the project importable (it also imports tests.conftest).

    Called when a benchmark run starts, not on import, so that importing this package has no effect
    on the importing process (e.g. the test suite).
    """
    for name, value in {"KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}.items():
        os.environ.setdefault(name, value)
    for path in (PROJECT_ROOT / "src", PROJECT_ROOT):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def load_params(name: str) -> dict[str, Any]:
    """The base parameters of one pipeline (``conf/base/parameters_<name>.yml``), top-level key removed."""
    data = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / f"parameters_{name}.yml").read_text())
    return data[name]


@dataclass
class Context:
    """One benchmark run: its mode, repeat counts, scratch folder and shared lazily built inputs."""

    quick: bool
    repeats: int  # timed runs of cheap benchmarks
    slow_repeats: int  # timed runs of expensive ones (generation, `kedro run`)
    warmup: int
    work_dir: Path
    min_repeats: int = 1  # timed runs made even when a time budget has run out
    log: Callable[[str], None] = print
    _tiny_model_dir: Path | None = field(default=None, repr=False)

    def tiny_model_dir(self) -> Path:
        """The built-in tiny model, built once per benchmark run (outside every timing)."""
        if self._tiny_model_dir is None:
            from machining_t2v.fixtures.tiny_model import build_tiny_model

            self._tiny_model_dir = build_tiny_model(self.work_dir / "tiny-sd")
        return self._tiny_model_dir

    def timing_options(self, budget_s: float, *, slow: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``measure_interleaved``: this run's repeats and a time budget.

        The budget (full mode only) keeps `make bench` bounded on a loaded machine: once it is
        spent no new round starts, after at least ``min_repeats`` rounds.
        """
        return {"repeats": self.slow_repeats if slow else self.repeats, "warmup": self.warmup,
                "min_repeats": self.min_repeats,
                "budget_s": None if self.quick else budget_s}

    def scratch(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def write_sample_videos(folder: Path, num_clips: int, **overrides: Any) -> list[Path]:
    """Render ``num_clips`` built-in sample videos into ``folder`` (with metadata.csv), as `sample_data` does."""
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset
    from machining_t2v.pipelines.sample_data.nodes import render_sample_videos

    params = {**load_params("sample_data"), **overrides, "num_clips": num_clips}
    dataset = VideoFolderDataset(path=str(folder))
    dataset.save(render_sample_videos(params))
    return dataset._video_paths()


def row(key: str, name: str, value: float, unit: str, *, note: str = "", measurement=None,
        runs: int | None = None, better: str = "higher") -> dict[str, Any]:
    """One line of the results table; ``key`` is stable (for the JSON and the smoke test).

    ``runs`` is how many timed runs the value is the median of (taken from ``measurement`` if given).
    """
    entry: dict[str, Any] = {"key": key, "name": name, "value": float(value), "unit": unit, "better": better,
                             "note": note, "runs": runs}
    if measurement is not None:
        entry["timing"] = measurement.to_dict()
        entry["runs"] = len(measurement.runs)
    return entry


def target(key: str, name: str, value: float | None, threshold: float, op: str, *, note: str = "") -> dict[str, Any]:
    """A speed target checked against a ratio measured in this run (never asserted in tests)."""
    if value is None:
        met = None
    else:
        met = value >= threshold if op == ">=" else value <= threshold
    return {"key": key, "name": name, "value": value, "threshold": threshold, "op": op, "met": met, "note": note}


def median(values: list[float]) -> float:
    return statistics.median(values)
