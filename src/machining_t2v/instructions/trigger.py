"""The trigger word of a run's captions (``captions.trigger``), read as ``kedro run --env ENV`` reads it."""

from __future__ import annotations

from pathlib import Path

from machining_t2v.parameters.models import CaptionsParams

PROJECT_CONF = Path("conf")


def configured_trigger(env: str | None = None, conf_source: str | Path = PROJECT_CONF) -> str:
    """``captions.trigger`` of the project's ``conf`` (base, then ``env`` or ``local`` merged over it);
    the parameters' default when there is no ``conf`` folder. "" when captions have no trigger."""
    if not Path(conf_source, "base").is_dir():
        return CaptionsParams().trigger or ""
    from kedro.config import OmegaConfigLoader

    # The loader settings of machining_t2v.settings (importing settings would load the run hooks
    # and MLflow for one parameter).
    loader = OmegaConfigLoader(conf_source=str(conf_source), env=env, base_env="base", default_run_env="local",
                               merge_strategy={"parameters": "soft"})  # fmt: skip
    captions = loader["parameters"].get("captions") or {}
    return captions.get("trigger", CaptionsParams().trigger) or ""
