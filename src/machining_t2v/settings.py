"""Kedro project settings for machining_t2v."""

from kedro.config import OmegaConfigLoader

from machining_t2v.hooks import MlflowArtifactHooks

HOOKS = (MlflowArtifactHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
