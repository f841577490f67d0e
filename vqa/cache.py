"""Where generated datasets and the default model are cached between runs."""

from __future__ import annotations

import os
from pathlib import Path

from vqa.data.synthetic import DATASET_VERSION, SyntheticConfig, write_synthetic_dataset


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


# Bumped when the model's architecture changes, so `vqa demo` trains a new default model
# instead of loading weights that no longer fit (2: layer-normalised fusion inputs; 3: the
# region attribute head; 4: the pointing loss and sine-cosine region positions).
MODEL_VERSION = 4


def default_model_dir() -> Path:
    """Where ``vqa demo`` keeps the model it trains with the default preset."""
    return cache_dir() / "models" / f"default-v{MODEL_VERSION}"
