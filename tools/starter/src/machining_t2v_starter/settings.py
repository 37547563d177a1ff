"""Kedro settings of the starter project: the product's hooks and configuration loader, so a
starter run is tracked in the repository's MLflow store and configured like a product run."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kedro.framework.hooks import hook_impl

from machining_t2v.kedro_glue.hooks import MlflowArtifactHooks, ProjectRunLock, ResilientMlflowHook
from machining_t2v.settings import (
    CONFIG_LOADER_ARGS,
    CONFIG_LOADER_CLASS,
    DISABLE_HOOKS_FOR_PLUGINS,
)
from machining_t2v_starter.parameters import StarterParameterCheck


class RepositoryRunLock(ProjectRunLock):
    """The product's run lock of the repository two folders up: a starter run, which writes
    ``models/starter``, and a product run, which reads it, never overlap."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        super().after_context_created(SimpleNamespace(project_path=Path(context.project_path).parents[1]))


HOOKS = (RepositoryRunLock(), ResilientMlflowHook(), MlflowArtifactHooks(), StarterParameterCheck())

__all__ = ["CONFIG_LOADER_ARGS", "CONFIG_LOADER_CLASS", "DISABLE_HOOKS_FOR_PLUGINS", "HOOKS"]
