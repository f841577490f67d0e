"""The model card (``RUN/README.md``) and training curves (``RUN/curves.png``) of a run."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from vqa.arguments import TrainingArguments, from_namespace
from vqa.cli import build_parser, main
from vqa.curves import moving_average, plot_training_curves
from vqa.model_card import augmentation, training_command
from vqa.presets import get_preset

OPTIONS = ("--epochs", "2", "--lr", "0.002", "--mode", "hard", "--k", "2", "--seed", "3")
OPTIONS += ("--augment-shift", "0.25")


@pytest.fixture(scope="module")
def two_epochs(tiny_run, train_tiny, tmp_path_factory) -> Path:
    """A tiny run of 2 epochs with options that differ from the defaults and the preset's."""
    _, data = tiny_run
    run = tmp_path_factory.mktemp("card") / "hard-k2"
    assert train_tiny(data, run, *OPTIONS) == 0
    return run


@pytest.fixture(scope="module")
def without_val(train_tiny, tmp_path_factory) -> Path:
    """A tiny run on data that has no validation split."""
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    root = tmp_path_factory.mktemp("no-val")
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(root / "data", train=20, val=0, test=0, config=config, progress=False)
    assert train_tiny(root / "data", root / "run") == 0
    return root / "run"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> tuple[Path, Path]:
    """(a copy of the tiny run without its checkpoints, its dataset): eval may write into it."""
    run, data = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint"))
    return copy, data


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def results_by_split(card: ModelCard) -> dict[str, dict[str, float]]:
    """{split: {metric type: value}} of the card's model-index."""
    results: dict[str, dict[str, float]] = {}
    for result in card.data.eval_results or []:
        results.setdefault(result.dataset_split, {})[result.metric_type] = result.metric_value
    return results


def card_command(card: ModelCard) -> str:
    """The ``vqa train`` line of the card's Training section."""
    (line,) = [line for line in card.text.splitlines() if line.startswith("vqa train ")]
    return line


def test_card_metadata_holds_the_best_epochs_validation_scores(two_epochs):
    metrics = metrics_of(two_epochs)
    best = metrics["history"][metrics["best_epoch"] - 1]
    card = ModelCard.load(two_epochs / "README.md")
    assert card.data.pipeline_tag == "visual-question-answering"
    assert "hard-attention" in card.data.tags
    assert card.data.datasets is None  # a local directory, not a hub id
    scores = results_by_split(card)["val"]
    assert scores["accuracy"] == pytest.approx(metrics["best_accuracy"], abs=5e-5)
    assert scores["pointing_accuracy"] == pytest.approx(best["val_pointing_accuracy"], abs=5e-5)


def test_card_command_reproduces_the_runs_non_default_options(two_epochs):
    metrics = metrics_of(two_epochs)
    words = shlex.split(card_command(ModelCard.load(two_epochs / "README.md")))
    flags = {word for word in words if word.startswith("--")}
    assert flags == {"--data", "--output", "--preset", "--no-progress", *OPTIONS[::2]}
    args = from_namespace(TrainingArguments, build_parser().parse_args(words[1:]))
    assert asdict(args.resolved(get_preset(args.preset))) == metrics["arguments"]


def test_card_names_the_augmentation(two_epochs, tiny_run):
    lines = ModelCard.load(two_epochs / "README.md").text.splitlines()
    assert "- Augmentation: shift within the empty margin, up to 25%" in lines
    lines = ModelCard.load(tiny_run[0] / "README.md").text.splitlines()
    assert "- Augmentation: none" in lines
    both = augmentation({"augment_mirror": True, "augment_shift": 0.125})
    assert (
        both
        == "left-right mirror with its words swapped, shift within the empty margin, up to 12.5%"
    )


def test_training_command_of_the_defaults_names_only_the_output():
    arguments = asdict(TrainingArguments(output="runs/x").resolved(get_preset("default")))
    assert training_command(arguments) == "vqa train --output runs/x"


def test_card_lists_every_epoch_and_links_the_curves(two_epochs):
    lines = ModelCard.load(two_epochs / "README.md").text.splitlines()
    assert "![Training curves](curves.png)" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("| epoch | train loss |"))
    rows = lines[header + 2 : lines.index("", header)]
    best = metrics_of(two_epochs)["best_epoch"]
    assert [row.split("|")[1].strip() for row in rows] == [
        f"**{epoch}**" if epoch == best else str(epoch) for epoch in (1, 2)
    ]


def test_curves_hold_the_step_losses_and_the_per_epoch_accuracies(two_epochs, tmp_path):
    assert (two_epochs / "curves.png").read_bytes().startswith(b"\x89PNG")
    metrics = metrics_of(two_epochs)
    history = metrics["history"]
    figure = plot_training_curves(metrics, tmp_path / "curves.png")
    losses, accuracy, pointing = (
        {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
        for axes in figure.axes
    )
    assert losses["loss per batch"] == [loss for r in history for loss in r["step_losses"]]
    assert accuracy["overall"] == [record["val_accuracy"] for record in history]
    assert pointing["overall"] == [record["val_pointing_accuracy"] for record in history]
    colour = [record["val_accuracy_by_type"]["colour"] for record in history]
    assert accuracy["colour"] == colour


def test_eval_update_card_adds_the_split_and_a_second_run_replaces_it(run_copy, capsys):
    run, data = run_copy
    command = ["eval", "--model", str(run), "--data", str(data), "--split", "test", "--json"]
    for _ in range(2):
        capsys.readouterr()
        assert main([*command, "--update-card"]) == 0
        scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        card = ModelCard.load(run / "README.md")
        results = results_by_split(card)
        assert results["test"]["accuracy"] == pytest.approx(scores["accuracy"], abs=5e-5)
        assert len(card.data.eval_results) == 4  # val and test, accuracy and pointing
        assert card.text.count("### `test` split of") == 1
    assert set(results) == {"val", "test"}


def test_eval_without_update_card_leaves_the_card_alone(run_copy):
    run, data = run_copy
    before = (run / "README.md").read_bytes()
    assert (
        main(["eval", "--model", str(run), "--data", str(data), "--split", "test", "--json"]) == 0
    )
    assert (run / "README.md").read_bytes() == before


def test_eval_with_another_fusion_adds_to_the_text_but_not_the_model_index(run_copy):
    run, data = run_copy
    command = ["eval", "--model", str(run), "--data", str(data), "--split", "test", "--json"]
    assert main([*command, "--mode", "soft", "--update-card"]) == 0
    card = ModelCard.load(run / "README.md")
    assert set(results_by_split(card)) == {"val"}
    assert "### `test` split of synthetic scenes (vqa data synthetic) (soft)" in card.text


def test_run_without_validation_split_gets_a_card_and_curves_without_accuracy(
    without_val, tmp_path
):
    card = ModelCard.load(without_val / "README.md")
    assert card.data.eval_results is None
    assert "no validation split" in card.text
    assert (without_val / "curves.png").is_file()
    figure = plot_training_curves(metrics_of(without_val), tmp_path / "curves.png")
    assert figure.axes[0].get_lines()
    assert not figure.axes[1].get_lines() and not figure.axes[2].get_lines()


def test_moving_average_is_trailing_and_skips_non_finite_losses():
    nan = float("nan")
    assert moving_average([1.0, 2.0, 3.0, nan, 5.0], 2) == [1.0, 1.5, 2.5, 3.0, 5.0]
    assert math.isnan(moving_average([nan, 1.0], 1)[0])
