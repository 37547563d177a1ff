"""Kedro settings of the starter project: the product's hooks and configuration loader, so a
starter run is locked, tracked in the repository's MLflow store and configured like a product run."""

from machining_t2v.hooks import MlflowArtifactHooks, ProjectRunLock, ResilientMlflowHook
from machining_t2v.settings import (
    CONFIG_LOADER_ARGS,
    CONFIG_LOADER_CLASS,
    DISABLE_HOOKS_FOR_PLUGINS,
)

HOOKS = (ProjectRunLock(), ResilientMlflowHook(), MlflowArtifactHooks())

__all__ = ["CONFIG_LOADER_ARGS", "CONFIG_LOADER_CLASS", "DISABLE_HOOKS_FOR_PLUGINS", "HOOKS"]
