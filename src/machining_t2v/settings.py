"""Kedro project settings for machining_t2v."""

from kedro.config import OmegaConfigLoader

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

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment's parameter files deep-merge over base (conf/sd15 changes some values and
    # keeps the rest; so does the starter project's conf/gpu), instead of replacing whole
    # top-level keys.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
