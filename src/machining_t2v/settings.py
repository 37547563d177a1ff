"""Kedro project settings for machining_t2v."""

from machining_t2v.kedro_glue import config_loading
from machining_t2v.kedro_glue.hooks import (
    MlflowArtifactHooks,
    ModelDatasetBinding,
    ModelSourceCheck,
    ParameterCheck,
    ProjectRunLock,
    ResilientMlflowHook,
)

# ProjectRunLock: one run of a project at a time (a second one waits; see hooks.py).
# ResilientMlflowHook is kedro-mlflow's hook that survives an unreachable tracking store; it
# replaces the copy the kedro-mlflow plugin registers itself, which is disabled here.
# ModelDatasetBinding: the catalog's base_model and motion_adapter datasets load what the run's
# base_model parameters name.
# ModelSourceCheck: a base model, motion adapter or CLIP that cannot be found fails the run
# before its first node.
# ParameterCheck: an unknown parameter key or a value of the wrong type fails the run before its
# first node; listed after ModelSourceCheck so that it runs before it (see hooks.py).
HOOKS = (ProjectRunLock(), ResilientMlflowHook(), ModelDatasetBinding(), ModelSourceCheck(), ParameterCheck(),
         MlflowArtifactHooks())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

# Shared with the pipeline registry, which reads the motion concepts from the conf files.
CONFIG_LOADER_CLASS = config_loading.CONFIG_LOADER_CLASS
CONFIG_LOADER_ARGS = config_loading.CONFIG_LOADER_ARGS
