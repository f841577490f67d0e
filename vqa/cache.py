"""Where data and models live: the cache of generated datasets, the default model (shipped with
the package, or trained into the cache), and the dataset directory that a ``--data`` value or a
trained run points at."""

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
MODEL_VERSION = 5


def default_model_dir() -> Path:
    """Where ``vqa demo`` keeps the model it trains with the default preset."""
    return cache_dir() / "models" / f"default-v{MODEL_VERSION}"


SHIPPED_MODEL_DIR = Path(__file__).parent / "default_model"
BUILD_FILE = "build.json"  # how the shipped model was built, and what it scored
DEFAULT_MODEL = "default"  # the name that --model and --init-from take for the default model


def shipped_model() -> Path | None:
    """The default model shipped with the package (``scripts/build_default_model.py``), if it
    is there and was built for this ``MODEL_VERSION``."""
    try:
        build = json.loads((SHIPPED_MODEL_DIR / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if build.get("model_version") != MODEL_VERSION:
        return None
    return SHIPPED_MODEL_DIR if (SHIPPED_MODEL_DIR / "model.safetensors").is_file() else None


def model_directory(value: str) -> str:
    """A ``--model`` / ``--init-from`` value as a directory: ``"default"`` is the shipped default
    model, else the one ``vqa demo --retrain`` trained into the cache; other values (and a
    directory that happens to be called ``default``) are returned as they are."""
    if value != DEFAULT_MODEL or Path(value).exists():
        return value
    if (shipped := shipped_model()) is not None:
        return str(shipped)
    trained = default_model_dir()
    if (trained / "model.safetensors").is_file():
        return str(trained)
    raise FileNotFoundError(
        "no default model: the package ships none for this version and none was trained "
        "(run `vqa demo --retrain` or `python scripts/build_default_model.py`)"
    )
