"""Data preparation end to end: the frames and captions nodes plus writing their outputs, per minute of video.

The nodes are called directly (no Kedro session); their outputs are written through the same
datasets the catalog declares (PNG stills, PNG clip strips, CSV manifest and captions), the frames
node's chunk by chunk as Kedro saves a generator node's. The same run is repeated on a folder with
10x the videos (copies in sub-folders, each listed in metadata.csv as the sample renderer lists its
own) to show how the cost grows.

Memory: the frames pipeline at 512 px (the real model's size) runs through Kedro's runner and the
catalog's datasets in a fresh process per folder, on a small folder and on 10x its videos; its peak
RSS must not grow with the amount of video (``512px.10x.peak_rss_mb`` at most 1.5x
``512px.1x.peak_rss_mb``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    PROJECT_ROOT,
    Context,
    load_params,
    median,
    row,
    target,
    write_sample_videos,
)
from benchmarks.timing import Timed, measure_interleaved

STEPS = ("frames", "captions", "save")
SCALE = 10
FRAMES_OUTPUTS = ("stills", "clips", "frame_manifest", "skipped_videos")
MEMORY_RESOLUTION = 512
MEMORY_VIDEOS = 2  # the memory runs' 1x folder; 10x holds SCALE times as many
MEMORY_GROWTH_MAX = 1.5


def _catalog_datasets(out_dir: Path) -> dict[str, Any]:
    """The catalog's output datasets of `frames` and `captions`, with their paths moved into ``out_dir``."""
    from kedro.io import AbstractDataset

    catalog = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "catalog.yml").read_text())
    datasets = {}
    for name in ("stills", "clips", "frame_manifest", "skipped_videos", "captions"):
        config = dict(catalog[name])
        key = "path" if "path" in config else "filepath"
        config[key] = str(out_dir / Path(config[key]).relative_to("data"))
        datasets[name] = AbstractDataset.from_config(name, config)
    return datasets


def _replicate(source: Path, target: Path, copies: int) -> None:
    """``copies`` copies of every video of ``source`` in ``target/copy_XX/``, all listed in metadata.csv."""
    with (source / "metadata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out_rows = []
    for copy in range(copies):
        folder = target / f"copy_{copy:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for entry in rows:
            shutil.copy2(source / entry["file"], folder / entry["file"])
            out_rows.append({**entry, "file": f"{folder.name}/{entry['file']}"})
    with (target / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)


def _video_minutes(folder: Path) -> tuple[int, float]:
    from machining_t2v.data.video_io import probe_video
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset

    infos = [probe_video(video.path) for video in VideoFolderDataset(path=str(folder)).load().videos]
    return len(infos), sum(info.duration_s for info in infos) / 60


def prepare(folder: Path, out_dir: Path, frames_params: dict, captions_params: dict) -> dict[str, float]:
    """One data preparation of ``folder``: seconds per step (``save`` is every output's writing)."""
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset
    from machining_t2v.pipelines.captions.nodes import build_captions
    from machining_t2v.pipelines.frames.nodes import extract_frames_and_clips

    seconds = {"frames": 0.0, "save": 0.0}
    shutil.rmtree(out_dir, ignore_errors=True)
    datasets = _catalog_datasets(out_dir)
    raw = VideoFolderDataset(path=str(folder)).load()
    chunks = extract_frames_and_clips(raw, frames_params)
    samples, largest_mb, chunk_count = 0, 0.0, 0
    while True:  # as Kedro runs a generator node: each chunk's outputs are saved before the next is made
        start = time.perf_counter()
        chunk = next(chunks, None)
        seconds["frames"] += time.perf_counter() - start
        if chunk is None:
            break
        chunk_count += 1
        stills, clips, manifest, skipped = chunk
        samples += len(stills) + len(clips)
        largest_mb = max(largest_mb, (sum(len(image.tobytes()) for image in stills.values())
                                      + sum(clip.nbytes for clip in clips.values())) / 2**20)
        start = time.perf_counter()
        for name, data in zip(FRAMES_OUTPUTS, chunk, strict=True):
            datasets[name].save(data)
        seconds["save"] += time.perf_counter() - start
        del chunk, stills, clips

    start = time.perf_counter()
    # The catalog hands over lazy loaders of the saved partitions, as in a pipeline run.
    captions, sidecars = build_captions(raw, manifest, datasets["stills"].load(), datasets["clips"].load(),
                                        captions_params)
    seconds["captions"] = time.perf_counter() - start
    start = time.perf_counter()
    datasets["captions"].save(captions)
    seconds["save"] += time.perf_counter() - start
    seconds["total"] = sum(seconds[step] for step in STEPS)
    seconds["samples"] = samples
    seconds["chunks"] = chunk_count
    # The most the frames node holds in memory at once: its largest chunk (bounded, whatever the data).
    seconds["output_mb"] = largest_mb
    return seconds


def frames_run_peak_rss(folder: str, out_dir: str, resolution: int) -> dict[str, float]:
    """The frames pipeline on ``folder`` through Kedro's runner and the catalog's datasets, at
    ``resolution`` px: this process's peak RSS in MB (run it in a fresh process)."""
    import resource

    from kedro.io import DataCatalog, MemoryDataset
    from kedro.runner import SequentialRunner

    from machining_t2v.kedro_glue.datasets import VideoFolderDataset
    from machining_t2v.pipelines.frames import create_pipeline

    def peak_mb() -> float:
        # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited at fork).
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)

    params = {**load_params("frames"), "resolution": resolution, "still_resolution": None, "clip_resolution": None}
    datasets = _catalog_datasets(Path(out_dir))
    catalog = DataCatalog({"raw_videos": VideoFolderDataset(path=folder), "params:frames": MemoryDataset(params),
                           **{name: datasets[name] for name in FRAMES_OUTPUTS}})
    before = peak_mb()
    start = time.perf_counter()
    SequentialRunner().run(create_pipeline(), catalog)
    return {"peak_rss_mb": peak_mb(), "start_rss_mb": before, "seconds": time.perf_counter() - start,
            "samples": len(list(Path(out_dir, "05_model_input", "stills").glob("*.png")))
                       + len(list(Path(out_dir, "05_model_input", "clips").glob("*.png")))}


def _peak_rss_in_fresh_process(folder: Path, out_dir: Path, resolution: int) -> dict[str, float]:
    code = ("import json, sys\n"
            "from benchmarks.data_prep import frames_run_peak_rss\n"
            f"print('RESULT=' + json.dumps(frames_run_peak_rss({str(folder)!r}, {str(out_dir)!r}, {resolution})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT),
                                                         os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True,
                             text=True, timeout=1800)
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT=")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"frames run at {resolution} px on {folder} failed: {process.stderr[-1500:]}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return json.loads(lines[-1].removeprefix("RESULT="))


def run(ctx: Context) -> dict[str, Any]:
    frames_params, captions_params = load_params("frames"), load_params("captions")
    base_dir, scaled_dir = ctx.scratch("data_prep/videos_1x"), ctx.scratch(f"data_prep/videos_{SCALE}x")
    num_videos = 2 if ctx.quick else 6
    ctx.log(f"  writing {num_videos} sample videos and {SCALE}x copies of them")
    write_sample_videos(base_dir, num_videos)
    _replicate(base_dir, scaled_dir, SCALE)
    sets = {"1x": base_dir, f"{SCALE}x": scaled_dir}
    sizes = {name: _video_minutes(folder) for name, folder in sets.items()}

    def prepared(folder: Path) -> Timed:
        seconds = prepare(folder, ctx.work_dir / "data_prep/out", frames_params, captions_params)
        return Timed(seconds["total"], seconds)

    timings = measure_interleaved({name: (lambda f=folder: prepared(f)) for name, folder in sets.items()},
                                  **ctx.timing_options(45.0))  # interleaved: 1x, 10x, 1x, 10x, ...
    runs = {name: timing.results for name, timing in timings.items()}

    # Peak memory of the frames pipeline at the real model's size, each folder in a fresh process.
    memory_dirs = {"1x": ctx.scratch("data_prep/memory_1x"), f"{SCALE}x": ctx.scratch(f"data_prep/memory_{SCALE}x")}
    write_sample_videos(memory_dirs["1x"], MEMORY_VIDEOS)
    _replicate(memory_dirs["1x"], memory_dirs[f"{SCALE}x"], SCALE)
    ctx.log(f"  frames pipeline at {MEMORY_RESOLUTION} px on {MEMORY_VIDEOS} and {MEMORY_VIDEOS * SCALE} videos, "
            "peak RSS in a fresh process each")
    memory = {name: _peak_rss_in_fresh_process(folder, ctx.work_dir / "data_prep/memory_out", MEMORY_RESOLUTION)
              for name, folder in memory_dirs.items()}

    rows, findings = [], []
    medians = {name: {step: median([r[step] for r in runs[name]]) for step in (*STEPS, "total")} for name in sets}
    for name in sets:
        count, minutes = sizes[name]
        for step in (*STEPS, "total"):
            rows.append(row(f"{name}.{step}.s_per_min", f"{name} ({count} videos, {minutes:.2f} min): {step}",
                            medians[name][step] / minutes, "s per min of video", better="lower",
                            runs=len(runs[name]), note=f"median {medians[name][step]:.2f} s"))
        rows.append(row(f"{name}.frames_output_mb",
                        f"{name}: stills + clips held in memory by the frames node at once (its largest chunk)",
                        runs[name][-1]["output_mb"], "MB", better="lower",
                        note=f"{runs[name][-1]['samples']:.0f} samples at {frames_params['resolution']} px in "
                             f"{runs[name][-1]['chunks']:.0f} chunk(s)"))
    for name, result in memory.items():
        count = MEMORY_VIDEOS * (SCALE if name != "1x" else 1)
        rows.append(row(f"{MEMORY_RESOLUTION}px.{name}.peak_rss_mb",
                        f"frames pipeline at {MEMORY_RESOLUTION} px, {count} videos: peak RSS of its process",
                        result["peak_rss_mb"], "MB", better="lower", runs=1,
                        note=f"{result['samples']:.0f} samples written in {result['seconds']:.1f} s; "
                             f"{result['start_rss_mb']:.0f} MB before the run (Python, Kedro, OpenCV, decord)"))
    (count1, minutes1), (count10, minutes10) = sizes["1x"], sizes[f"{SCALE}x"]
    for step in (*STEPS, "total"):
        growth = medians[f"{SCALE}x"][step] / medians["1x"][step]
        rows.append(row(f"growth_{SCALE}x.{step}", f"time growth for {count10 / count1:.0f}x the videos: {step}",
                        growth, "x", better="lower", runs=len(runs["1x"]), note=f"{SCALE:.1f} = linear"))
    growth = medians[f"{SCALE}x"]["total"] / medians["1x"]["total"]
    per_video = growth / (count10 / count1)
    findings.append(f"Frames + captions + saving cost {medians['1x']['total'] / minutes1:.2f} s per minute of "
                    f"video on {count1} videos and {medians[f'{SCALE}x']['total'] / minutes10:.2f} s per minute on "
                    f"{count10}; {count10 / count1:.0f}x the videos took {growth:.1f}x the time "
                    f"({'linear' if 0.85 <= per_video <= 1.15 else 'not linear'}: {per_video:.2f}x the cost per "
                    "video).")
    small, large = memory["1x"]["peak_rss_mb"], memory[f"{SCALE}x"]["peak_rss_mb"]
    targets = [target(f"{MEMORY_RESOLUTION}px.peak_rss_growth_{SCALE}x",
                      f"frames pipeline at {MEMORY_RESOLUTION} px: peak RSS on {SCALE}x the videos vs 1x",
                      large / small, MEMORY_GROWTH_MAX, "<=",
                      note=f"{MEMORY_RESOLUTION}px.{SCALE}x.peak_rss_mb {large:.0f} vs "
                           f"{MEMORY_RESOLUTION}px.1x.peak_rss_mb {small:.0f}")]
    findings.append(f"The frames node hands its samples to the catalog in chunks (largest here: "
                    f"{runs[f'{SCALE}x'][-1]['output_mb']:.1f} MB at {frames_params['resolution']} px), so memory does "
                    f"not grow with the data: at {MEMORY_RESOLUTION} px the frames pipeline peaks at {small:.0f} MB "
                    f"RSS on {MEMORY_VIDEOS} videos and {large:.0f} MB on {MEMORY_VIDEOS * SCALE} "
                    f"({large / small:.2f}x).")
    return {"title": "Data preparation (frames + captions)", "rows": rows, "targets": targets, "findings": findings,
            "details": {"runs": runs, "sizes": {k: {"videos": v[0], "minutes": v[1]} for k, v in sizes.items()},
                        "memory": memory},
            "setup": {"frames_params": frames_params, "captions_model": captions_params.get("model"),
                      "memory_resolution": MEMORY_RESOLUTION}}
