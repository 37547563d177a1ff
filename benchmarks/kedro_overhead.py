"""Kedro overhead: wall time of ``kedro run --pipelines=frames`` against the pipeline's own time.

The run happens in a throw-away copy of the project (``tests.conftest.make_project``) holding a few
sample videos. Kedro logs "Pipeline execution completed successfully in X sec"; everything else
in the wall time (interpreter, imports, session, catalog, hooks and MLflow, teardown) is start-up
overhead. The first run in a fresh copy (it also creates the MLflow store) is reported on its own
and not counted in the median.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Context, load_params, median, row, target, write_sample_videos
from benchmarks.timing import Timed, measure_interleaved

COMPLETED = re.compile(r"Pipeline execution completed successfully in ([\d.]+) sec")
IMPORT_TIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
REGISTRY = "from machining_t2v.pipeline_registry import register_pipelines; register_pipelines()"
# Importing the registry (every pipeline built) may cost at most this many times importing Kedro's CLI.
REGISTRY_VS_CLI_MAX = 3.0
HEAVY = ("torch", "diffusers", "transformers")


def heaviest_imports(importtime_output: str, prefix: str = "machining_t2v.", top: int = 4) -> list[tuple[str, float]]:
    """The ``prefix`` modules (not pipeline packages or ``pipeline.py`` files) with the largest cumulative
    import time in seconds, from ``python -X importtime`` output. A module's time includes what it imports."""
    wrappers = re.compile(rf"^{re.escape(prefix)}(pipeline_registry|pipelines(\.[^.]+)?|pipelines\.[^.]+\.pipeline)$")
    entries = [(match.group(4), int(match.group(2)) / 1e6) for match in IMPORT_TIME.finditer(importtime_output)
               if match.group(4).startswith(prefix) and not wrappers.match(match.group(4))]
    return sorted(entries, key=lambda entry: -entry[1])[:top]


def _kedro_executable() -> list[str]:
    beside = Path(sys.executable).parent / "kedro"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("kedro")
    return [found] if found else [sys.executable, "-m", "kedro"]


def run(ctx: Context) -> dict[str, Any]:
    from tests.conftest import make_project

    root = ctx.work_dir / "kedro_project"
    shutil.rmtree(root, ignore_errors=True)
    make_project(root)
    num_videos = 1 if ctx.quick else 3
    write_sample_videos(root / "data" / "01_raw" / "videos", num_videos)
    command = [*_kedro_executable(), "run", "--pipelines=frames"]
    env = {**os.environ, "COLUMNS": "400", "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}

    def kedro_run() -> Timed:
        start = time.perf_counter()
        process = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        output = process.stdout + process.stderr
        if process.returncode != 0:
            hint = ""
            if "Cannot load commands from" in output:
                hint = (" Kedro imports `<package>.cli` as the project's CLI commands and requires a `cli` "
                        "click group in it; a module of that name without one breaks every `kedro` command.")
            raise RuntimeError(f"`{' '.join(command)}` failed ({process.returncode}).{hint} {output[-600:]}")
        match = COMPLETED.search(output)
        if match is None:
            raise RuntimeError(f"no 'Pipeline execution completed successfully' line in: {output[-800:]}")
        return Timed(wall, {"pipeline_s": float(match.group(1)), "wall_s": wall})

    ctx.log(f"  `{' '.join(command[-3:])}` in a project copy with {num_videos} video(s)")
    first = kedro_run()
    # The first run is the warm-up (reported on its own).
    timing = measure_interleaved({"kedro": kedro_run}, **{**ctx.timing_options(45.0, slow=True), "warmup": 0})["kedro"]
    pipeline_runs = sorted(result["pipeline_s"] for result in timing.results)
    pipeline_s = pipeline_runs[len(pipeline_runs) // 2]
    wall_s = timing.median
    overhead_s = wall_s - pipeline_s

    # What start-up spends: a bare interpreter importing Kedro's CLI, and importing the pipeline registry
    # (every pipeline's nodes and what they import), each in a fresh interpreter.
    def python(code: str, *flags: str) -> Timed:
        start = time.perf_counter()
        process = subprocess.run([sys.executable, *flags, "-c", code], cwd=root, env=env, capture_output=True,
                                 text=True)
        if process.returncode != 0:
            raise RuntimeError(f"python -c {code!r} failed: {process.stderr[-600:]}")
        return Timed(time.perf_counter() - start, process.stderr)

    imports = measure_interleaved({"kedro_cli": lambda: python("import kedro.framework.cli.cli"),
                                   "registry": lambda: python(REGISTRY, "-X", "importtime")},
                                  **ctx.timing_options(30.0, slow=True))
    heavy = heaviest_imports(imports["registry"].result)
    imported = [name for name in HEAVY if re.search(rf"\|\s*{name}$", imports["registry"].result, re.MULTILINE)]
    registry_vs_cli = median([registry / cli for registry, cli in zip(imports["registry"].runs,
                                                                        imports["kedro_cli"].runs, strict=True)])

    # The node itself, in this process, on the same folder (the pipeline adds saving the outputs).
    from machining_t2v.kedro_glue.datasets import VideoFolderDataset
    from machining_t2v.pipelines.frames.nodes import extract_frames_and_clips, merge_chunks

    params = load_params("frames")
    node = measure_interleaved(
        {"node": lambda: merge_chunks(extract_frames_and_clips(
            VideoFolderDataset(path=str(root / "data/01_raw/videos")).load(), params))},
        **ctx.timing_options(10.0))["node"]
    rows = [
        row("kedro_run.wall_s", "`kedro run --pipelines=frames`: wall time", wall_s, "s", better="lower",
            measurement=timing, note=f"{num_videos} sample video(s)"),
        row("kedro_run.pipeline_s", "of which pipeline execution (Kedro's own figure)", pipeline_s, "s",
            better="lower", runs=len(pipeline_runs), note="logged with 0.1 s resolution"),
        row("kedro_run.overhead_s", "of which start-up and teardown", overhead_s, "s", better="lower",
            runs=len(pipeline_runs)),
        row("kedro_run.overhead_share", "start-up share of the wall time", overhead_s / wall_s, "fraction",
            better="lower", runs=len(pipeline_runs)),
        row("python_import_kedro_cli_s", "fresh interpreter importing kedro's CLI", imports["kedro_cli"].median, "s",
            better="lower", measurement=imports["kedro_cli"]),
        row("python_import_registry_s", "fresh interpreter importing the pipeline registry (all pipelines' nodes)",
            imports["registry"].median, "s", better="lower", measurement=imports["registry"],
            note="with -X importtime; " + "; ".join(f"{name} {seconds:.1f} s" for name, seconds in heavy[:3])),
        row("kedro_run.first_run_s", "first run in a fresh project copy (creates the MLflow store)",
            first.seconds, "s", better="lower", runs=1),
        row("kedro_run.node_in_process_s", "frames node called in-process on the same videos", node.median, "s",
            better="lower", measurement=node, note="no saving, no session"),
    ]
    targets = [target("registry_import_vs_kedro_cli", "fresh interpreter: importing the pipeline registry vs "
                      "importing Kedro's CLI", registry_vs_cli, REGISTRY_VS_CLI_MAX, "<=",
                      note=f"python_import_registry_s {imports['registry'].median:.2f} s vs python_import_kedro_cli_s "
                           f"{imports['kedro_cli'].median:.2f} s; median of per-round ratios; "
                           f"{', '.join(imported) or 'no torch, diffusers or transformers'} imported")]
    findings = [f"`kedro run --pipelines=frames` on {num_videos} video(s) takes {wall_s:.1f} s, of which the "
                f"pipeline runs {pipeline_s:.1f} s: {overhead_s:.1f} s ({overhead_s / wall_s:.0%}) is start-up "
                f"and teardown. In tests, run pipelines in-process and keep only a few CLI calls.",
                f"A fresh interpreter imports Kedro's CLI in {imports['kedro_cli'].median:.1f} s but the pipeline "
                f"registry in {imports['registry'].median:.1f} s, which every `kedro run` pays whatever pipeline "
                "it runs; the slowest project modules to import (cumulative, a module includes what it imports): "
                + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in heavy)
                + (f". Registering the pipelines imports {', '.join(imported)}: import them inside the nodes that "
                   "use them." if imported else ". No pipeline imports torch, diffusers or transformers until a "
                                                "node that needs them runs.")]
    return {"title": "Kedro overhead", "rows": rows, "targets": targets, "findings": findings,
            "details": {"command": command, "pipeline_s_runs": pipeline_runs, "first_run": first.result,
                        "heaviest_project_imports_s": dict(heavy), "registry_imports_heavy": imported}}
