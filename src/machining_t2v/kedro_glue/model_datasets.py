"""Kedro datasets for the frozen pretrained models: the base model and the motion adapter.

The catalog declares them (``base_model``, ``motion_adapter`` in ``conf/base/catalog.yml``, so
Kedro-Viz shows where the models enter the pipelines); what they load comes from the run's merged
``base_model`` parameters (conf/base, the environment, conf/local, ``--params``), bound to them
by the ``ModelDatasetBinding`` hook (or by ``machining_t2v.training.launch``) through
:func:`bind_model_datasets`. These datasets are the one place where ``builtin:tiny`` becomes the
tiny model's folder (built once in ``base_model.tiny_model_dir``).

Every load reads the model afresh: a training node adds LoRA layers to the UNet it gets, so two
nodes of one run must not share one. As with any Kedro dataset, a loader's error reaches the run as
a ``DatasetError`` carrying its message (the ``ModelSourceCheck`` hook catches most of them before
the first node).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kedro.io import AbstractDataset, DatasetError

if TYPE_CHECKING:
    from diffusers import MotionAdapter

    from machining_t2v.models.loading import BaseModel


class _PretrainedDataset(AbstractDataset[None, Any]):
    """A read-only dataset loading one pretrained model named by the ``base_model`` parameters."""

    what = "model"
    key = "pretrained"
    """The ``base_model`` parameter naming what this dataset loads."""

    def __init__(self, base_model: Mapping[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        """
        Args:
            base_model: the ``base_model`` parameters (``pretrained``, ``motion_adapter``,
                ``tiny_model_dir``, ``revision``, ``variant``); None until bound by
                :func:`bind_model_datasets`.
            metadata: Kedro-Viz and project metadata from the catalog.
        """
        self.base_model = dict(base_model) if base_model is not None else None
        self.metadata = metadata

    def bind(self, base_model: Mapping[str, Any]) -> None:
        """Load what these ``base_model`` parameters name from now on."""
        self.base_model = dict(base_model)

    def _settings(self) -> dict[str, Any]:
        if self.base_model is None:
            raise DatasetError(f"the {self.what} dataset has no base_model parameters: bind it with "
                               "machining_t2v.kedro_glue.model_datasets.bind_model_datasets")
        return self.base_model

    def _save(self, data: Any) -> None:
        raise DatasetError(f"the {self.what} is read-only: it comes from the base_model parameters")

    def _describe(self) -> dict[str, Any]:
        return {self.key: (self.base_model or {}).get(self.key)}


class BaseModelDataset(_PretrainedDataset):
    """The frozen base model (:class:`~machining_t2v.models.loading.BaseModel`) of ``base_model.pretrained``."""

    what = "base model"

    def _load(self) -> BaseModel:
        from machining_t2v.fixtures.tiny_model import tiny_model_source
        from machining_t2v.models.loading import load_base_model

        settings = self._settings()
        folder = tiny_model_source(str(settings[self.key]), settings["tiny_model_dir"])
        return load_base_model(folder, revision=settings.get("revision"), variant=settings.get("variant"))


class MotionAdapterDataset(_PretrainedDataset):
    """The frozen AnimateDiff ``MotionAdapter`` of ``base_model.motion_adapter``."""

    what = "motion adapter"
    key = "motion_adapter"

    def _load(self) -> MotionAdapter:
        from machining_t2v.fixtures.tiny_model import tiny_model_source
        from machining_t2v.models.loading import load_motion_adapter

        settings = self._settings()
        folder = tiny_model_source(str(settings[self.key]), settings["tiny_model_dir"],
                                   motion_adapter=True)
        return load_motion_adapter(folder)


_MODEL_DATASET_TYPES = {f"{__name__}.{cls.__name__}" for cls in (BaseModelDataset, MotionAdapterDataset)}


def bind_model_datasets(catalog: Any, base_model: Mapping[str, Any]) -> list[str]:
    """Point every model dataset of ``catalog`` at the ``base_model`` parameters.

    Returns:
        The names of the datasets bound.
    """
    bound = []
    for name in catalog.keys():
        # get_type does not build the dataset: only the model datasets are built here.
        if catalog.get_type(name) not in _MODEL_DATASET_TYPES:
            continue
        # Bound in place: replacing a catalog entry would log a warning on every run.
        catalog.get(name).bind(base_model)
        bound.append(name)
    return bound
