"""Shared fixtures of the web page tests: a studio on the tiny model, trained-LoRA folders for it."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from machining_t2v.generation.generator import cpu_threads
from machining_t2v.instructions.glossary import load_glossary
from machining_t2v.webapp.studio import Studio, StudioSettings
from tests.conftest import PROJECT_ROOT
from tests.generation.conftest import make_loras

GLOSSARY = PROJECT_ROOT / "conf" / "base" / "glossary.yml"
KOREAN_SLOT = "엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공"
SLOT_PROMPT = ("mtv slot milling along X on a milling machine, aluminium workpiece, spinning end mill travelling "
               "from left to right")
FAST_STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """The tiny model runs several times faster on one thread on small CPUs (restored afterwards)."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="session")
def trained_loras(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """An image and a motion LoRA for the tiny model, as the training pipelines save them."""
    return make_loras(tiny_dir, tmp_path_factory.mktemp("trained"))


def settings_for(tiny_dir: Path, root: Path, **overrides) -> StudioSettings:
    """A studio on the tiny model (4 frames) with its LoRA, MLflow and output folders in ``root``."""
    values = {"base": "builtin:tiny", "motion_adapter": "builtin:tiny", "tiny_model_dir": tiny_dir,
              "glossary": load_glossary(GLOSSARY), "trigger": "mtv", "models_dir": root / "06_models",
              "mlflow_db": root / "mlflow.db", "out_dir": root / "clips", "frames": 4, "steps": FAST_STEPS,
              "threads": 1}
    return StudioSettings(**{**values, **overrides})


def free_port() -> int:
    """A port nothing listens on now (the page's server takes it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_loras(loras: dict[str, Path], models_dir: Path) -> dict[str, Path]:
    """The LoRA folders copied into a ``data/06_models``-like folder."""
    return {kind: Path(shutil.copytree(folder, models_dir / folder.name)) for kind, folder in loras.items()}


@pytest.fixture
def studio(tiny_dir, tmp_path) -> Studio:
    """A studio with no trained LoRA yet."""
    return Studio(settings_for(tiny_dir, tmp_path))
