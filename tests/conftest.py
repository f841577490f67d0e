"""Test configuration and shared fixtures: everything runs offline, on the CPU, with few threads.

Fixtures:
- ``tiny_fields``: ``HybridVQAConfig`` fields of the tiny preset's model (32 px, 16 regions).
- ``free_port``: a function that returns a loopback TCP port nothing listens on.
- ``dataset``: a directory of 16 training scenes (48 questions) and 3 validation scenes of 32 px,
  written once per test module (a module may define its own ``dataset`` instead).
- ``train_tiny``: a function that runs ``vqa train`` with the tiny preset and returns its status.
- ``tiny_run``: (run directory, dataset directory) of a tiny model trained once per session.
- ``tiny_selecting_run``: the run directory of a tiny model, trained on ``tiny_run``'s data,
  whose vision encoder keeps 8 of the 16 patches before its first block.

Helpers: ``stop_after_checkpoint`` makes the next training run stop, as if killed, right after
the checkpoint of a given step (``Interrupted``); ``dense_and_gathered`` runs an attention layer
on its straight-through (dense, with grad) and gathered (no grad) paths with the same noise.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture
def tiny_fields() -> dict:
    """The tiny preset's model with a 50-token vocabulary and three answers."""
    from vqa.presets import get_preset

    return {
        **get_preset("tiny").model,
        "text_vocab_size": 50,
        "id2label": {0: "red", 1: "blue", 2: "green"},
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 training images (48 questions), 3 validation images (9 questions), 32 pixels."""
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    out = tmp_path_factory.mktemp("data") / "scenes"
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(out, train=16, val=3, test=0, config=config, progress=False)
    return out


def find_free_port() -> int:
    """A TCP port that nothing listens on now, on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    return find_free_port


def run_train_tiny(data: Path, run: Path, *options: str) -> int:
    """``vqa train`` on ``data`` into ``run`` with the tiny preset; returns the exit status."""
    from vqa.cli import main

    command = ["train", "--data", str(data), "--output", str(run), "--preset", "tiny"]
    return main([*command, "--no-progress", *options])


@pytest.fixture(scope="session")
def train_tiny() -> Callable[..., int]:
    return run_train_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, dataset directory) of a tiny model trained on 40 scenes of 32 px."""
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny-model")
    data, run = root / "data", root / "run"
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(data, train=40, val=10, test=10, config=config, progress=False)
    assert run_train_tiny(data, run) == 0
    return run, data


@pytest.fixture(scope="session")
def tiny_selecting_run(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that selects in its vision encoder: 8 of 16 patches, after 0 blocks."""
    _, data = tiny_run
    run = tmp_path_factory.mktemp("tiny-selecting-model") / "run"
    assert run_train_tiny(data, run, "--select-after", "0", "--encoder-k", "8") == 0
    return run


class Interrupted(Exception):
    """Stands in for a run killed right after a checkpoint."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Raise ``Interrupted`` once, right after the checkpoint of optimizer step ``step``."""
    import vqa.training

    save, stops = vqa.training.save_checkpoint, [step]

    def save_then_stop(accelerator, run, state, keep, average=None):
        save(accelerator, run, state, keep, average)
        if state["global_step"] in stops:
            stops.remove(state["global_step"])
            raise Interrupted

    monkeypatch.setattr(vqa.training, "save_checkpoint", save_then_stop)


def dense_and_gathered(attention, *inputs) -> tuple:
    """``attention(*inputs)`` with grad (the dense straight-through path) and without (the
    gathered path), each after the same seed, so that Gumbel noise is the same in both."""
    torch.manual_seed(1)
    dense = attention(*inputs)
    torch.manual_seed(1)
    with torch.no_grad():
        gathered = attention(*inputs)
    return dense, gathered


def load_script(name: str) -> ModuleType:
    """The module of ``scripts/<name>.py``, which is not a package, loaded from its file."""
    path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
