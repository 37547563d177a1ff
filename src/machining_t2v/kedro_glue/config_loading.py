"""How the project's conf files are read: the loader class and arguments settings.py gives Kedro.

They live here, not in settings.py, so that registering the pipelines can read the conf files
(see ``concepts.configured_concepts``) without importing ``kedro.framework.project`` and the hooks.
"""

from __future__ import annotations

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONF_SOURCE = "conf"
"""The conf folder, relative to the project root (Kedro's default, which settings.py keeps)."""

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
