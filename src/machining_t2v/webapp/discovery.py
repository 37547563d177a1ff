"""The LoRAs a user has trained, as the web page offers them: the LoRA folders in ``data/06_models``
(what the last ``kedro run`` wrote) and the LoRA folders MLflow runs logged as artifacts
(``mlflow.db`` with its ``mlruns`` folder), newest run first.

A LoRA folder is one that holds ``pytorch_lora_weights.safetensors``; its kind (image or motion)
comes from the ``lora_info.json`` beside it, else from its layer names. Besides the folders directly
inside those places, each motion concept's are found in ``motion_concepts/<concept>/``, where
``motion_ft`` writes them (and MLflow logs them), labelled with the concept's name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from machining_t2v.lora.files import DIFFUSERS_LORA_FILENAME, LORA_INFO_FILENAME
from machining_t2v.lora.formats import in_motion_module

logger = logging.getLogger(__name__)

KINDS = ("image", "motion")
CONCEPTS_FOLDER = "motion_concepts"
"""The sub-folder holding one folder per motion concept (``motion_ft.concepts``), each with its LoRA folders."""
#: How many MLflow runs are looked through (newest first); older runs' LoRAs are rarely wanted.
MAX_RUNS = 50


@dataclass(frozen=True)
class LoraChoice:
    """One trained LoRA folder the page can load."""

    kind: str
    path: Path
    source: str
    """Where it was found: ``data/06_models`` or ``MLflow run <name> (<date>)``."""
    steps: int | None = None
    concept: str | None = None
    """The motion concept the LoRA was trained on; None for one trained on every clip."""

    @property
    def label(self) -> str:
        """What the page's chooser shows."""
        steps = f", {self.steps} steps" if self.steps else ""
        concept = f" of motion concept {self.concept}" if self.concept else ""
        return f"{self.path.name}{concept} ({self.source}{steps})"


@dataclass
class TrainedLoras:
    """Every LoRA found, and what could not be looked through (for the page's status line)."""

    choices: list[LoraChoice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[LoraChoice]:
        """The image or the motion LoRAs, in the order found."""
        return [choice for choice in self.choices if choice.kind == kind]


def _read_info(folder: Path) -> dict:
    try:
        info = json.loads((folder / LORA_INFO_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def lora_kind(folder: Path) -> str | None:
    """``image`` or ``motion`` for a LoRA folder (its ``lora_info.json``, else its layer names); None when
    the weights cannot be read."""
    kind = _read_info(folder).get("kind")
    if kind in KINDS:
        return kind
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / DIFFUSERS_LORA_FILENAME), framework="numpy") as weights:
            keys = list(weights.keys())
    except (SafetensorError, OSError) as error:
        logger.warning("Skipping LoRA folder %s: its weights cannot be read (%s)", folder, error)
        return None
    return "motion" if keys and all(in_motion_module(key) for key in keys) else "image"


def lora_folders(root: Path, source: str) -> list[LoraChoice]:
    """The LoRA folders directly inside ``root`` (sorted by name), then those of each motion concept in
    ``root/motion_concepts/<concept>/`` (sorted by concept), labelled with ``source``."""
    if not root.is_dir():
        return []
    candidates = [(folder, None) for folder in sorted(root.iterdir())]
    candidates += [(folder, folder.parent.name) for folder in sorted(root.glob(f"{CONCEPTS_FOLDER}/*/*"))]
    found = []
    for folder, concept in candidates:
        if not (folder / DIFFUSERS_LORA_FILENAME).is_file():
            continue
        kind = lora_kind(folder)
        if kind is not None:
            steps = _read_info(folder).get("steps")
            found.append(LoraChoice(kind, folder, source, int(steps) if isinstance(steps, int) else None, concept))
    return found


def local_artifact_folder(artifact_uri: str, project_dir: Path) -> Path | None:
    """The folder of a run's artifacts when they are on this machine (``file:`` URIs and plain paths)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (a Windows drive letter reads as a scheme)
        path = Path(artifact_uri)
        return path if path.is_absolute() else project_dir / path
    return None


def mlflow_loras(tracking_uri: str, project_dir: Path) -> list[LoraChoice]:
    """The LoRA folders logged by finished MLflow runs whose artifacts are on this machine, newest run first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=MAX_RUNS)
    found = []
    for run in runs:
        folder = local_artifact_folder(run.info.artifact_uri, project_dir)
        if folder is None:
            continue
        started = datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        found.extend(lora_folders(folder, f"MLflow run {run.info.run_name or run.info.run_id[:8]}, {started}"))
    return found


def find_trained_loras(models_dir: Path, mlflow_db: Path | None = None) -> TrainedLoras:
    """The LoRAs in ``models_dir`` and, when ``mlflow_db`` exists, those its MLflow runs logged (their
    relative artifact paths are read from the folder holding ``mlflow.db``, the project's).
    A tracking store that cannot be read is reported in ``notes``, not raised: the page goes on."""
    trained = TrainedLoras(lora_folders(Path(models_dir), str(models_dir)))
    if mlflow_db is None or not Path(mlflow_db).is_file():
        return trained
    db = Path(mlflow_db).resolve()
    try:
        trained.choices.extend(mlflow_loras(f"sqlite:///{db}", db.parent))
    except Exception as error:  # an old schema, a locked or corrupt file: the folders still serve
        logger.warning("Could not read the MLflow runs in %s: %s", db, error)
        trained.notes.append(f"The MLflow runs in {mlflow_db} could not be read ({type(error).__name__}); "
                             f"only the LoRAs in {models_dir} are listed.")
    return trained
