"""Smoke test of the benchmarks: quick mode of one area writes a report with the expected figures.

No timing is asserted here: speed targets are measured by `make bench`, not enforced in tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


def test_quick_decode_and_evaluate_benchmarks_write_report(tmp_path):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # A subprocess: the benchmarks quieten loggers and warnings process-wide.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "decode,evaluate", "--output-dir", str(tmp_path),
         "--work-dir", str(tmp_path / "work")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")

    assert report["meta"]["mode"] == "quick"
    assert report["meta"]["repeats"]["fast_benchmarks"] >= 1
    decode = report["areas"]["decode"]
    assert "error" not in decode
    expected = {
        f"{files}.{pattern}.{decoder}"
        for files in ("sample_videos", "long_h264")
        for pattern, decoders in (("full", ("decord_get_batch", "decord_next", "cv2_read", "ffmpeg_pipe")),
                                  ("pipeline", ("decord_get_batch", "decord_skip", "cv2_grab", "cv2_seek",
                                                "ffmpeg_select", "extract_frames_and_clips")))
        for decoder in decoders
    } | {f"long_h264.sparse30.{d}" for d in ("decord_get_batch", "decord_skip", "cv2_grab", "cv2_seek",
                                           "ffmpeg_select")}
    assert expected <= set(decode["metrics"])
    for key, value in decode["metrics"].items():
        assert math.isfinite(value) and value > 0, key
    for row in decode["rows"]:
        assert row["runs"] >= 1 and row["unit"], row
    targets = {t["key"]: t for t in decode["targets"]}
    assert set(targets) == {"sample_videos.frames_vs_fastest_decoder", "long_h264.frames_vs_fastest_decoder"}
    for entry in targets.values():
        assert entry["value"] > 0 and entry["threshold"] == 0.8 and entry["met"] in (True, False)

    evaluate = report["areas"]["evaluate"]
    assert "error" not in evaluate
    assert set(evaluate["metrics"]) == {"inworld.motion_features_ms_per_clip", "inworld.predict_ms_per_clip"}
    assert all(math.isfinite(value) and value > 0 for value in evaluate["metrics"].values())
    assert [t["key"] for t in evaluate["targets"]] == ["inworld.motion_features_under_100ms"]


def test_unknown_area_is_refused():
    from benchmarks.run import parse_areas

    assert parse_areas("data,train,train") == ["data_prep", "train"]
    assert parse_areas(None) == ["decode", "data_prep", "train", "generate", "evaluate", "kedro"]
    with pytest.raises(SystemExit, match="unknown area"):
        parse_areas("decode,nope")


def test_gpu_benchmark_quick_mode_on_cpu_writes_report(tmp_path):
    """`make bench-gpu`'s logic (model building, LoRA, training loop, FLOP counting, report) on the tiny model."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick", "--peak-tflops", "0.5",
         "--output-dir", str(tmp_path)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "benchmarks_gpu.json").read_text())
    assert (tmp_path / "benchmarks_gpu.md").read_text().startswith("# GPU training benchmark")
    assert report["meta"]["mode"] == "quick" and report["meta"]["device"] == "cpu"
    assert report["meta"]["peak_flops"] == 0.5e12
    cases = report["cases"]
    assert [(c["kind"], c["gradient_checkpointing"]) for c in cases] == [
        ("image", False), ("motion", True), ("motion", True)]
    from benchmarks.gpu import CASE_FIELDS

    for case in cases:
        assert "error" not in case, case.get("traceback")
        for key in CASE_FIELDS:
            assert math.isfinite(case[key]) and case[key] > 0, (case["name"], key, case[key])
        assert case["timed_steps"] >= 1 and case["warmup_steps"] >= 1
        assert case["trainable_parameters"] > 0
    # A larger clip costs more FLOPs per step.
    assert cases[2]["flops_per_step"] > cases[1]["flops_per_step"]
    assert "image_lora_64px_batch2" in result.stdout


def test_gpu_benchmark_without_cuda_fails_clearly():
    import torch

    from benchmarks.gpu import run_benchmark

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        run_benchmark(device="cuda", quick=True, output_dir=PROJECT_ROOT / "data" / "08_reporting")
