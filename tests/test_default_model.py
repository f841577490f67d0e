"""The default model that ships with the package (scripts/build_default_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vqa.cache import BUILD_FILE, MODEL_VERSION, SHIPPED_MODEL_DIR, model_directory
from vqa.data.sources import load_vqa_dataset
from vqa.demo import ensure_default_model, examples_dir
from vqa.evaluation import evaluate
from vqa.inference import load_model

REBUILD = "rebuild it: python scripts/build_default_model.py"


@pytest.fixture(scope="module")
def build() -> dict:
    return json.loads((SHIPPED_MODEL_DIR / BUILD_FILE).read_text())


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    """The default dataset's test split, generated into a cache of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYBRID_VQA_CACHE", str(tmp_path_factory.mktemp("cache")))
        return str(examples_dir())


def test_the_shipped_model_fits_this_code(build):
    assert build["model_version"] == MODEL_VERSION, f"the shipped model is stale: {REBUILD}"


def test_the_shipped_weights_are_a_few_megabytes_of_float16():
    weights = SHIPPED_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size < 6 * 2**20
    with safe_open(weights, "pt") as tensors:
        floats = {tensors.get_slice(name).get_dtype() for name in tensors.keys()} - {"I64", "BOOL"}  # noqa: SIM118
    assert floats == {"F16"}


def test_the_shipped_model_answers_the_held_out_scenes_at_its_recorded_accuracy(build, examples):
    model, processor = load_model(SHIPPED_MODEL_DIR, device="cpu")
    rows = load_vqa_dataset(examples, ["test"])["test"]
    scores = evaluate(model, processor, rows, progress=False)
    recorded = build["test"]
    assert scores["questions"] == recorded["questions"]
    # Another CPU's kernels may round a near-tie the other way: a few questions of ~2,300.
    assert scores["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.003)
    for family, accuracy in recorded["accuracy_by_type"].items():
        assert scores["accuracy_by_type"][family] == pytest.approx(accuracy, abs=0.02), family
    assert recorded["accuracy"] > 0.85  # what the default recipe reaches with boxes


def test_the_demo_uses_the_shipped_model_without_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo trained although a model ships")

    monkeypatch.setattr("vqa.demo.train", refuse)
    assert ensure_default_model() == SHIPPED_MODEL_DIR


def test_a_stale_shipped_model_is_not_used(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr("vqa.cache.MODEL_VERSION", MODEL_VERSION + 1)
    monkeypatch.setattr("vqa.demo.default_model_dir", lambda: tmp_path / "model")
    monkeypatch.setattr("vqa.demo.train", lambda arguments: trained.append(arguments.output))
    assert ensure_default_model() == tmp_path / "model"
    assert trained == [str(tmp_path / "model")]


def test_default_names_the_default_model_on_the_command_line(examples, capsys):
    from vqa.cli import main

    assert model_directory("default") == str(SHIPPED_MODEL_DIR)
    image = next(Path(examples, "images", "test").iterdir())
    command = [
        "predict",
        "--model",
        "default",
        "--image",
        str(image),
        "--question",
        "is there a red circle?",
    ]
    assert main([*command, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"]


def test_default_without_a_default_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("vqa.cache.shipped_model", lambda: None)
    monkeypatch.setattr("vqa.cache.default_model_dir", lambda: tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"no default model: .*vqa demo --retrain"):
        model_directory("default")
    assert model_directory("runs/mine") == "runs/mine"


def test_fine_tuning_the_default_model_trains_float32_weights():
    from vqa.arguments import TrainingArguments
    from vqa.data.answers import AnswerVocab
    from vqa.init_from import model_from_run

    args = TrainingArguments(output="unused", init_from=model_directory("default"))
    model, _ = model_from_run(args, AnswerVocab.build([["red"], ["blue"]]))
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
