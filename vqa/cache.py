"""Where data and models live: the cache of generated datasets and of the default model, and
the dataset directory that a ``--data`` value or a trained run points at."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vqa.data.synthetic import DATASET_VERSION, SyntheticConfig, write_synthetic_dataset
from vqa.presets import Preset, get_preset


def cache_dir() -> Path:
    """``$HYBRID_VQA_CACHE``, else ``$XDG_CACHE_HOME/hybrid-vqa``, else ``~/.cache/hybrid-vqa``."""
    if os.environ.get("HYBRID_VQA_CACHE"):
        return Path(os.environ["HYBRID_VQA_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "hybrid-vqa"


def synthetic_dataset(
    *,
    train: int,
    val: int,
    test: int,
    image_size: int,
    questions_per_image: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """The embedded scene dataset of these sizes, generated on first use and then reused."""
    name = f"synthetic-v{DATASET_VERSION}-s{image_size}-n{train}-{val}-{test}"
    name += f"-q{questions_per_image}-seed{seed}"
    directory = cache_dir() / "datasets" / name
    if not (directory / "dataset_info.json").is_file():
        write_synthetic_dataset(
            directory,
            train=train,
            val=val,
            test=test,
            seed=seed,
            config=SyntheticConfig(image_size=image_size, questions_per_image=questions_per_image),
            overwrite=True,
            progress=progress,
        )
    return directory


def resolve_data_dir(data: str, preset: Preset, progress: bool = True) -> Path:
    """A dataset location: ``data`` itself, or the cached embedded dataset for ``synthetic``."""
    if data == "synthetic":
        return synthetic_dataset(**preset.synthetic, progress=progress)
    return Path(data)


def training_data_dir(run_dir: str | Path) -> Path | None:
    """The local dataset directory a run was trained on, as its ``metrics.json`` records it.

    None when the run records none, or its data was not a local directory (a hub id, a file).
    For the embedded scenes this is the cached dataset (made again if the cache was cleared).
    """
    try:
        arguments = json.loads((Path(run_dir) / "metrics.json").read_text())["arguments"]
        data, preset = arguments["data"], get_preset(arguments["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data != "synthetic" and not Path(data).is_dir():
        return None
    return resolve_data_dir(data, preset)


# Bumped when the model's architecture changes, so `vqa demo` trains a new default model
# instead of loading weights that no longer fit.
MODEL_VERSION = 4


def default_model_dir() -> Path:
    """Where ``vqa demo`` keeps the model it trains with the default preset."""
    return cache_dir() / "models" / f"default-v{MODEL_VERSION}"
