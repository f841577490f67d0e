"""How batches are loaded: worker processes and pinned memory, chosen for the machine.

Decoding and resizing images is the slow part of a batch. On a GPU machine, worker processes
do it while the device trains, and pinned memory lets the copies to the device overlap the
work; on a 2-core CPU, workers would only take cores from the model.
"""

from __future__ import annotations

import os

import torch


def default_workers() -> int:
    """Half the cores, at most 8; none on a machine of 2 cores or fewer."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def loader_options(num_workers: int | None, device: torch.device | str) -> dict:
    """``DataLoader`` keyword arguments: ``num_workers`` (None: :func:`default_workers`),
    ``persistent_workers`` (kept between epochs) and ``pin_memory`` (for a CUDA device)."""
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    return {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": torch.device(device).type == "cuda",
    }
