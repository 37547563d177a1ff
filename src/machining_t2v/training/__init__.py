"""The one training-loop core shared by image-LoRA and motion-LoRA fine-tuning.

What differs between the two LoRA kinds (which model, which parameters train, frames
vs clips, the loss) is passed in: the caller hands over a model whose trainable
parameters have ``requires_grad=True`` and a ``compute_loss(model, indices, randomness)``
function (:func:`train`). The package owns everything else, one job per module:

* :mod:`~machining_t2v.training.config`: the loop's settings (:class:`TrainingConfig`),
  the mixed precision a device gets, the result of a run and the errors that stop one;
* :mod:`~machining_t2v.training.loop`: :func:`train` and one optimizer step, the optimizer
  and the learning-rate schedule;
* :mod:`~machining_t2v.training.randomness`: every random draw of a run and the contract
  that makes resume bit-identical and N processes train what one process trains;
* :mod:`~machining_t2v.training.checkpoints`: durable, atomic checkpoints and exact resume;
* :mod:`~machining_t2v.training.distributed`: accelerate set-up and data parallelism over
  several processes (``accelerate launch``, ``torchrun``).

It deliberately imports nothing from Kedro or MLflow so that it runs unchanged under
``accelerate launch``, in a notebook or from the console script; metrics leave
through the ``on_log`` callback.
"""

from machining_t2v.training.checkpoints import (
    CHECKPOINT_PREFIX,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_trainable,
)
from machining_t2v.training.config import (
    CheckpointWriteError,
    NonFiniteLossError,
    TrainingConfig,
    TrainingResult,
    choose_mixed_precision,
    weight_dtype,
)
from machining_t2v.training.distributed import distributed_state
from machining_t2v.training.loop import make_optimizer, train
from machining_t2v.training.randomness import LossRandomness

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointWriteError",
    "LossRandomness",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingResult",
    "checkpoint_step",
    "choose_mixed_precision",
    "distributed_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainable",
    "make_optimizer",
    "train",
    "weight_dtype",
]
