"""Shared fixtures: real video files written in the test, and a throw-away copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The starter's maintainer tools: a Kedro project of their own, not installed with the product.
STARTER_PROJECT = PROJECT_ROOT / "tools" / "starter"
if str(STARTER_PROJECT / "src") not in sys.path:
    sys.path.insert(0, str(STARTER_PROJECT / "src"))

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def moving_square_frames(num_frames: int, width: int, height: int, seed: int = 0, static: bool = False) -> np.ndarray:
    """RGB frames of a coloured square sliding across a textured background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    colour = tuple(int(c) for c in rng.integers(150, 255, size=3))
    side = max(4, min(width, height) // 4)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        x = 0 if static else int((width - side) * t / max(1, num_frames - 1))
        y = (height - side) // 2
        cv2.rectangle(frame, (x, y), (x + side, y + side), colour, thickness=-1)
        frames.append(frame)
    return np.stack(frames)


def write_test_video(path: Path, num_frames: int = 30, width: int = 96, height: int = 64, fps: int = 12,
                     seed: int = 0, static: bool = False) -> Path:
    """Write a real video file (codec by extension) of a moving square."""
    from machining_t2v.data.video_io import write_video

    return write_video(path, moving_square_frames(num_frames, width, height, seed, static), fps)


def add_audio_track(video: Path, out: Path) -> Path:
    """Mux a 1 kHz sine audio track into a copy of ``video`` with the bundled ffmpeg."""
    import imageio_ffmpeg

    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video),
         "-f", "lavfi", "-i", "sine=frequency=1000:duration=3", "-c:v", "copy", "-c:a", "aac",
         "-shortest", str(out)],
        check=True,
    )  # fmt: skip
    return out


def find_chromium() -> str | None:
    """Debian's Chromium (``make browser``), or None when it is not installed."""
    found = shutil.which("chromium")
    if found is None:
        return None
    # Debian's /usr/bin/chromium is a shell wrapper that adds its own flags (remote extensions, ...);
    # run the browser binary behind it when it is there.
    binary = Path("/usr/lib/chromium/chromium")
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else found


TINY_BASE_MODEL_CONF = """\
base_model:
  pretrained: builtin:tiny
  motion_adapter: builtin:tiny
  tiny_model_dir: data/06_models/tiny-sd
  revision: null
  variant: null
"""


def make_project(root: Path) -> Path:
    """A copy of the project's conf/ and pyproject.toml in ``root``, with empty data layers,
    set to the built-in tiny model.

    MLflow caches its SQLite store per tracking URI, so each copy gets an absolute
    ``sqlite:///<root>/mlflow.db`` (in conf/local) instead of the relative default.
    """
    root.mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    mlflow_conf = (PROJECT_ROOT / "conf" / "base" / "mlflow.yml").read_text()
    (root / "conf" / "local" / "mlflow.yml").write_text(
        mlflow_conf.replace("sqlite:///mlflow.db", f"sqlite:///{root / 'mlflow.db'}"))
    # The suite exercises the machinery on the small random tiny model; the starter model has
    # its own tests in test_starter.py. Written over the copied base file, because a parameters
    # file in conf/local would stop Kedro from merging the tests' partial runtime params.
    (root / "conf" / "base" / "parameters_base_model.yml").write_text(TINY_BASE_MODEL_CONF)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", root / ".telemetry")  # kedro-telemetry would edit pyproject.toml
    (root / "src").mkdir()  # Kedro wants a source dir; the package itself is installed
    for layer in ("01_raw/videos", "02_intermediate", "03_primary", "05_model_input", "06_models",
                  "07_model_output", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A throw-away copy of the project, used as the working directory.

    Kedro resolves the catalog's relative paths against the working directory, so runs in the
    copy never touch the repository's own data/ folder.
    """
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The built-in tiny model (:mod:`machining_t2v.fixtures.tiny_model`), built once per test session."""
    from machining_t2v.fixtures.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd")


def make_starter_project(root: Path) -> Path:
    """A repository-shaped folder at ``root`` (empty data layers) holding a copy of the starter
    project's conf/ at ``root/tools/starter``; returns that project folder.

    The starter project's paths point two folders up (``../../data``), as in the repository.
    """
    for layer in ("06_models", "08_reporting"):
        (root / "data" / layer).mkdir(parents=True)
    project = root / "tools" / "starter"
    shutil.copytree(STARTER_PROJECT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    mlflow_conf = (STARTER_PROJECT / "conf" / "base" / "mlflow.yml").read_text()
    (project / "conf" / "local" / "mlflow.yml").write_text(
        mlflow_conf.replace("sqlite:///../../mlflow.db", f"sqlite:///{root / 'mlflow.db'}"))
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(STARTER_PROJECT / name, project / name)
    (project / "src").mkdir()  # the package itself is imported from the repository (see above)
    return project


def run_pipeline(project_root: Path, pipeline: str, params: dict | None = None) -> dict:
    """Run a registered pipeline in-process through a real KedroSession."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_root)
    with KedroSession.create(project_path=project_root, runtime_params=params or {}) as session:
        return session.run(pipeline_names=[pipeline])


def run_in_new_project(root: Path, pipeline: str, params: dict | None = None) -> Path:
    """Make a project copy at ``root``, run ``pipeline`` in it (as its working directory) and return it.

    For module-scoped fixtures, which cannot use ``monkeypatch.chdir``.
    """
    make_project(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        run_pipeline(root, pipeline, params)
    finally:
        os.chdir(cwd)
    return root
