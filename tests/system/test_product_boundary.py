"""The product never imports the starter's pretraining code (tools/starter, maintainers only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..conftest import PROJECT_ROOT, STARTER_PROJECT

PRODUCT_PIPELINES = ("frames", "captions", "image_ft", "motion_ft", "evaluation", "generate")
STARTER_MODULES = ("machining_t2v_starter", "machining_t2v.starter", "machining_t2v.pipelines.starter")

_PROBE = """
import importlib, json, sys
for name in {pipelines!r}:
    importlib.import_module("machining_t2v.pipelines." + name).create_pipeline()
from machining_t2v.pipeline_registry import register_pipelines
registered = sorted(register_pipelines())
loaded = sorted(m for m in sys.modules if m.startswith({starter!r}))
import machining_t2v_starter.world  # importable in this interpreter: leaving it out is the product's doing
print(json.dumps({{"loaded": loaded, "registered": registered}}))
"""


def test_product_pipelines_import_none_of_the_starter_pretraining_code():
    probe = _PROBE.format(pipelines=PRODUCT_PIPELINES, starter=STARTER_MODULES)
    path = os.pathsep.join([str(PROJECT_ROOT / "src"), str(STARTER_PROJECT / "src"), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": path}, cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert set(PRODUCT_PIPELINES) <= set(result["registered"])
    assert not {"starter", "starter_check"} & set(result["registered"])
