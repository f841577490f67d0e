"""An exponential moving average of the weights (``--ema-decay``), kept beside training.

timm's ``ModelEmaV3`` holds the average: a copy of the model whose floating-point parameters and
buffers move towards the trained ones by ``1 - decay`` after each optimizer step. The decay is
warmed up (timm's ``use_warmup``: 0 after the first optimizer step, ``1 - step ** -0.75`` after
step ``step``, at most ``decay``), so that a short run's average is not dominated by the random
initial weights. When a run keeps one,
validation scores the average (``val_*``) and the trained weights (``val_raw_*``), and the saved
model is the average. Checkpoints hold it as safetensors (``AVERAGE_FILE``), so ``--resume``
continues it exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import load_model, save_model
from timm.utils.model_ema import ModelEmaV3

# timm's decay warmup for runs of about 10k steps: 0.99 after 464 steps, 0.999 after 10k
WARMUP_POWER = 0.75
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)
AVERAGE_FILE = "weight_average.safetensors"


def make_weight_average(
    accelerator: Accelerator, model: torch.nn.Module, decay: float | None
) -> ModelEmaV3 | None:
    """The moving average of the prepared ``model``'s weights (None when ``decay`` is None),
    starting from its current weights.

    Raises a ValueError under FSDP and DeepSpeed, where no process holds the whole weights.
    """
    if decay is None:
        return None
    if accelerator.distributed_type in SHARDED:
        raise ValueError(
            f"--ema-decay keeps a whole copy of the weights in every process; under "
            f"{accelerator.distributed_type.value} each process holds a shard of them: train "
            "without --ema-decay"
        )
    return ModelEmaV3(
        accelerator.unwrap_model(model), decay=decay, use_warmup=True, warmup_power=WARMUP_POWER
    )


def save_weight_average(average: ModelEmaV3 | None, directory: Path) -> None:
    """Write ``average``'s weights into the checkpoint ``directory``; nothing without one."""
    if average is not None:
        save_model(average.module, str(directory / AVERAGE_FILE))


def load_weight_average(average: ModelEmaV3 | None, checkpoint: Path) -> None:
    """Load ``average``'s weights from ``checkpoint``; nothing without one.

    Raises a ValueError when the checkpoint lacks the file (an incomplete copy of it).
    """
    if average is None:
        return
    path = checkpoint / AVERAGE_FILE
    if not path.is_file():
        raise ValueError(
            f"{checkpoint} lacks {AVERAGE_FILE}, the weight average its run kept: the "
            "checkpoint is incomplete"
        )
    load_model(average.module, str(path), device=str(next(average.module.parameters()).device))
