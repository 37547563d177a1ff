"""The project's parameters as typed models, checked before a run's first node.

Every top-level key of ``conf/*/parameters_*.yml`` (one per pipeline) has a model in
:mod:`.models` (:data:`PIPELINE_PARAMETERS`). :func:`check_parameters` (:mod:`.check`) validates
the merged parameters of a run (conf/base, the run's environment and ``--params``) against them
and refuses

- a top-level key that is none of those;
- an unknown key, by its full dotted path (``image_ft.method``), listing the valid keys at that
  level and suggesting the closest one for a misspelling (``image_ft.trainig`` -> ``training``);
- a value of the wrong type, naming the key (``image_ft.training.max_steps`` must be a whole
  number, not ``"abc"``); a number given where text goes is accepted (``--params`` turns
  ``generate.name=2024`` into a number), text where a number goes is not;
- a value outside a fixed set of choices (``motion_ft.mode``, schedulers, mixed precision...).

The check only reads: nodes still receive the parameters as plain dictionaries, exactly as
written in conf/. The hook :class:`machining_t2v.kedro_glue.hooks.ParameterCheck` runs it before the first
node of every ``kedro run``; ``python -m machining_t2v.training.launch`` runs it too.

This package imports pydantic only (no torch, no Kedro), so it is cheap to import anywhere.
"""

from machining_t2v.parameters.check import ParameterError, check_parameters
from machining_t2v.parameters.models import PIPELINE_PARAMETERS, Params

__all__ = ["PIPELINE_PARAMETERS", "ParameterError", "Params", "check_parameters"]
