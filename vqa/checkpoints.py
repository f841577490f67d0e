"""Training checkpoints: ``RUN/checkpoint/step-N/``, written atomically, newest kept.

A checkpoint holds Accelerate's state (model, optimizer, scheduler, RNG of every process), the
moving average of the weights when the run keeps one (``vqa.weight_average``), and
``trainer_state.json`` (epoch, batches seen in it, losses so far), which is all that an exact
mid-epoch ``--resume`` needs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from timm.utils.model_ema import ModelEmaV3

from vqa.files import write_json
from vqa.weight_average import save_weight_average

STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoint"


def checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of ``run`` (``checkpoint/step-N``), oldest first.

    A checkpoint is complete once renamed from its ``.tmp`` name, which happens after all of
    its files, ``trainer_state.json`` last, are written.
    """
    complete = [
        path
        for path in (run / CHECKPOINT_DIR).glob("step-*")
        if path.suffix != ".tmp" and (path / STATE_FILE).is_file()
    ]
    return sorted(complete, key=lambda path: int(path.name.removeprefix("step-")))


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of ``run``, or None."""
    return next(reversed(checkpoints(run)), None)


def clear_checkpoints(accelerator: Accelerator, run: Path) -> int:
    """Remove the checkpoints that an earlier run left in ``run``; return how many there were.

    A new run (not ``--resume``) in that directory starts its steps from 0 again: its saves
    would collide with the old ``step-N`` directories, and a later ``--resume`` could load the
    old run's newer steps.
    """
    directory = run / CHECKPOINT_DIR
    found = len(checkpoints(run))
    if accelerator.is_main_process:
        shutil.rmtree(directory, ignore_errors=True)
    accelerator.wait_for_everyone()
    return found


def save_checkpoint(
    accelerator: Accelerator,
    run: Path,
    state: dict,
    keep: int,
    average: ModelEmaV3 | None = None,
) -> None:
    """Accelerate state, ``average`` (if any) and trainer state as ``checkpoint/step-N``; keep
    the newest ``keep``.

    Written beside as ``step-N.tmp`` and renamed once complete, so a kill at any moment
    leaves the previous checkpoints intact.
    """
    directory = run / CHECKPOINT_DIR
    final = directory / f"step-{state['global_step']:08d}"
    staging = directory / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        save_weight_average(average, staging)
        write_json(staging / STATE_FILE, state)
        os.replace(staging, final)
        for path in [*directory.glob("step-*.tmp"), *checkpoints(run)[:-keep]]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
