"""Start-up in proportion to the work: data-only Kedro commands never import the deep-learning stack.

Every `kedro` command imports the pipeline registry, hence every pipeline's nodes. torch,
diffusers and transformers take seconds to import, so the nodes import them where they are used;
`kedro registry list` and the data preparation runs must not load them at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_project, write_test_video

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")

# Runs the `kedro` command line in this interpreter and, as it exits, reports which heavy libraries got imported.
RUN_KEDRO = """
import atexit, json, sys
atexit.register(lambda: print("HEAVY_MODULES=" + json.dumps(sorted(
    name for name in {heavy!r} if name in sys.modules))))
from kedro.framework.cli import main
sys.argv = ["kedro", *{args!r}]
main()
"""


def _heavy_modules_after(project: Path, *args: str) -> list[str]:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    process = subprocess.run([sys.executable, "-c", RUN_KEDRO.format(heavy=HEAVY, args=list(args))], cwd=project,
                             env=env, capture_output=True, text=True, timeout=300)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-2000:]
    lines = [line for line in process.stdout.splitlines() if line.startswith("HEAVY_MODULES=")]
    assert lines, output[-2000:]
    return json.loads(lines[-1].removeprefix("HEAVY_MODULES="))


def test_registry_list_and_data_preparation_runs_never_import_torch(tmp_path):
    project = make_project(tmp_path / "project")
    raw = project / "data" / "01_raw" / "videos"
    write_test_video(raw / "milling_a.mp4", num_frames=30, seed=1)
    write_test_video(raw / "turning_b.mp4", num_frames=30, seed=2)

    assert _heavy_modules_after(project, "registry", "list") == []
    assert _heavy_modules_after(project, "run", "--pipelines=frames") == []
    assert (project / "data" / "03_primary" / "frame_manifest.csv").is_file()
    assert _heavy_modules_after(project, "run", "--pipelines=captions") == []
    assert (project / "data" / "05_model_input" / "captions.csv").is_file()


# Registering reads the motion concepts from the conf files, with Kedro's config loader alone: the
# project's settings (hooks, MLflow) are Kedro's CLI's to import.
NOT_FOR_REGISTRATION = (*HEAVY, "kedro.framework.project", "mlflow")


def test_importing_every_pipeline_leaves_the_deep_learning_stack_unloaded():
    code = ("import json, sys\n"
            "from machining_t2v.pipeline_registry import register_pipelines\n"
            "pipelines = register_pipelines()\n"
            "assert all(len(pipeline.nodes) for pipeline in pipelines.values())\n"
            f"print(json.dumps(sorted(name for name in {NOT_FOR_REGISTRATION!r} if name in sys.modules)))")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert process.returncode == 0, process.stderr[-2000:]
    assert json.loads(process.stdout.strip().splitlines()[-1]) == []
