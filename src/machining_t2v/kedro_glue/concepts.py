"""Which motion concepts the pipelines are registered with: the names of ``motion_ft.concepts``
in the project's conf files.

Kedro registers pipelines before a run's parameters exist, so a concept's namespace (one
motion LoRA, its datasets and MLflow keys) comes from the conf files (conf/base merged with
``KEDRO_ENV``, conf/local by default); :func:`check_registered_concepts` fails a run whose
parameters (``--params``, ``--env``) name other concepts than those.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from machining_t2v.data.concepts import check_concept_name
from machining_t2v.kedro_glue.config_loading import (
    CONF_SOURCE,
    CONFIG_LOADER_ARGS,
    CONFIG_LOADER_CLASS,
)

__all__ = ["RESERVED_NAMES", "check_registered_concepts", "configured_concepts", "registered_concepts"]

RESERVED_NAMES = frozenset({"prompts", "image_lora", "motion_lora", "base", "adapter", "base_model", "params",
                            "trigger", "reference_table"})
"""Argument names of the nodes that take every concept's LoRA by concept name: no concept may be called so."""


def configured_concepts(project_path: str | Path | None = None) -> list[str]:
    """Names of ``motion_ft.concepts`` in the conf files of the project at ``project_path``
    (the working directory by default), in their order; [] when there is no conf folder."""
    # The loader settings.py names, built here: importing kedro.framework.project for it would
    # double what registering the pipelines costs.
    from kedro.config import MissingConfigException

    conf = Path(project_path or Path.cwd()) / CONF_SOURCE
    if not conf.is_dir():
        return []
    loader = CONFIG_LOADER_CLASS(conf_source=str(conf), env=os.environ.get("KEDRO_ENV"), **CONFIG_LOADER_ARGS)
    try:
        parameters = loader["parameters"]
    except MissingConfigException:
        return []
    concepts = [check_concept_name(str(name)) for name in (parameters.get("motion_ft") or {}).get("concepts") or {}]
    taken = sorted(RESERVED_NAMES.intersection(concepts))
    if taken:
        raise ValueError(f"motion_ft.concepts: {', '.join(taken)} cannot name a concept (reserved: "
                         f"{', '.join(sorted(RESERVED_NAMES))})")
    return concepts


def registered_concepts(node_names: Iterable[str]) -> set[str]:
    """The concepts a pipeline trains: the namespaces of its ``<concept>.train_motion_lora`` nodes."""
    return {name.rpartition(".")[0] for name in node_names if name.endswith(".train_motion_lora")}


def check_registered_concepts(parameters: Mapping[str, Any], node_names: Iterable[str]) -> None:
    """Fail when a pipeline that trains motion LoRAs was registered with other concepts than the
    run's ``motion_ft.concepts`` (they came from ``--params`` or an ``--env`` not in ``KEDRO_ENV``)."""
    names = list(node_names)
    if not any(name.endswith("train_motion_lora") for name in names):
        return
    wanted = set(((parameters.get("motion_ft") or {}).get("concepts")) or {})
    registered = registered_concepts(names)
    if wanted != registered:
        raise ValueError(
            f"motion_ft.concepts of this run ({', '.join(sorted(wanted)) or 'none'}) differ from the concepts the "
            f"pipelines were registered with ({', '.join(sorted(registered)) or 'none'}). Concepts are read from "
            "the conf files when Kedro starts: set them in conf/base or conf/local (or the environment named by "
            "KEDRO_ENV), not with --params or --env.")
