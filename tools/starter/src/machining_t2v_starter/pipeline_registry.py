"""The starter project's pipelines: ``starter`` pretrains the starter model and publishes it,
``starter_check`` measures the published folder again without retraining it."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from machining_t2v_starter.pipelines import starter


def register_pipelines() -> dict[str, Pipeline]:
    """Register the starter project's pipelines (pretraining takes hours of CPU and runs only when named)."""
    return {
        "starter": starter.create_pipeline(),
        "starter_check": starter.create_check_pipeline(),
        # A bare `kedro run` only measures the published folder: training is asked for by name.
        "__default__": starter.create_check_pipeline(),
    }
