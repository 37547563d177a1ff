"""Data preparation end to end: the frames and captions nodes plus writing their outputs, per minute of video.

The nodes are called directly (no Kedro session); their outputs are written through the same
datasets the catalog declares (PNG stills, PNG clip strips, CSV manifest and captions). The same
run is repeated on a folder with 10x the videos (copies in sub-folders, each listed in
metadata.csv as the sample renderer lists its own) to show how the cost grows.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import PROJECT_ROOT, Context, load_params, median, row, write_sample_videos
from benchmarks.timing import Timed, measure_interleaved

STEPS = ("frames", "captions", "save")
SCALE = 10


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
    from machining_t2v.datasets import VideoFolderDataset
    from machining_t2v.video_io import probe_video

    infos = [probe_video(video.path) for video in VideoFolderDataset(path=str(folder)).load().videos]
    return len(infos), sum(info.duration_s for info in infos) / 60


def prepare(folder: Path, out_dir: Path, frames_params: dict, captions_params: dict) -> dict[str, float]:
    """One data preparation of ``folder``: seconds per step."""
    from machining_t2v.datasets import VideoFolderDataset
    from machining_t2v.pipelines.captions.nodes import build_captions
    from machining_t2v.pipelines.frames.nodes import extract_frames_and_clips

    seconds = {}
    start = time.perf_counter()
    raw = VideoFolderDataset(path=str(folder)).load()
    stills, clips, manifest, skipped = extract_frames_and_clips(raw, frames_params)
    seconds["frames"] = time.perf_counter() - start

    start = time.perf_counter()
    # The catalog would hand over lazy loaders of the saved partitions; in memory they are trivial.
    captions, sidecars = build_captions(raw, manifest, {k: (lambda v=v: v) for k, v in stills.items()},
                                        {k: (lambda v=v: v) for k, v in clips.items()}, captions_params)
    seconds["captions"] = time.perf_counter() - start

    start = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)
    datasets = _catalog_datasets(out_dir)
    for name, data in (("stills", stills), ("clips", clips), ("frame_manifest", manifest),
                       ("skipped_videos", skipped), ("captions", captions)):
        datasets[name].save(data)
    seconds["save"] = time.perf_counter() - start
    seconds["total"] = sum(seconds[step] for step in STEPS)
    seconds["samples"] = len(stills) + len(clips)
    # What the frames node holds in memory until the catalog writes it (grows with the data).
    seconds["output_mb"] = (sum(len(image.tobytes()) for image in stills.values())
                            + sum(clip.nbytes for clip in clips.values())) / 2**20
    return seconds


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

    rows, findings = [], []
    medians = {name: {step: median([r[step] for r in runs[name]]) for step in (*STEPS, "total")} for name in sets}
    for name in sets:
        count, minutes = sizes[name]
        for step in (*STEPS, "total"):
            rows.append(row(f"{name}.{step}.s_per_min", f"{name} ({count} videos, {minutes:.2f} min): {step}",
                            medians[name][step] / minutes, "s per min of video", better="lower",
                            runs=len(runs[name]), note=f"median {medians[name][step]:.2f} s"))
        rows.append(row(f"{name}.frames_output_mb", f"{name}: stills + clips held in memory by the frames node",
                        runs[name][-1]["output_mb"], "MB", better="lower",
                        note=f"{runs[name][-1]['samples']:.0f} samples at {frames_params['resolution']} px"))
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
    resolution = int(frames_params["resolution"])
    mb_per_minute = runs[f"{SCALE}x"][-1]["output_mb"] / minutes10
    findings.append(f"The frames node returns every still and clip in memory before the catalog writes them: "
                    f"{mb_per_minute:.1f} MB per minute of video at {resolution} px, so memory grows linearly with "
                    f"the data; at 512 px that is {mb_per_minute * (512 / resolution) ** 2 / 1024:.2f} GB per "
                    "minute of video (same sampling).")
    return {"title": "Data preparation (frames + captions)", "rows": rows, "targets": [], "findings": findings,
            "details": {"runs": runs, "sizes": {k: {"videos": v[0], "minutes": v[1]} for k, v in sizes.items()}},
            "setup": {"frames_params": frames_params, "captions_model": captions_params.get("model")}}
