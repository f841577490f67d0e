"""`vqa ablate --answers-only` (and `--region-loss-weight`): an ablation in which no run reads a
box, as on data without boxes; the flags, their errors, and a tiny ablation end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vqa.ablation import REPORT_FILE, RUNS_DIR, SETTINGS_FILE, AblationArguments, run_ablation
from vqa.cli import add_ablate_parser, main
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

# A tiny answers-only grid: soft and hybrid, one seed, one epoch.
GRID = {
    "preset": "tiny",
    "modes": ["soft", "hybrid"],
    "k": [4],
    "estimators": ["ste"],
    "seeds": [0],
    "epochs": 1,
    "progress": False,
}


def parse(monkeypatch, *flags: str) -> AblationArguments:
    """What ``vqa ablate --out o FLAGS`` hands to ``run_ablation``."""
    import vqa.ablation

    parser = argparse.ArgumentParser()
    add_ablate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ablate", "--out", "o", *flags])
    given = []
    monkeypatch.setattr(vqa.ablation, "run_ablation", lambda a: given.append(a) or Path("o"))
    args.run(args)
    return given[0]


def test_answers_only_turns_both_box_reading_losses_off(monkeypatch):
    chosen = parse(monkeypatch, "--answers-only")
    assert (chosen.region_loss_weight, chosen.pointing_loss_weight) == (0.0, 0.0)


def test_without_answers_only_the_weights_are_the_given_ones_or_the_presets(monkeypatch):
    chosen = parse(monkeypatch, "--region-loss-weight", "0.5")
    assert (chosen.region_loss_weight, chosen.pointing_loss_weight) == (0.5, None)
    chosen = parse(monkeypatch)
    assert (chosen.region_loss_weight, chosen.pointing_loss_weight) == (None, None)


@pytest.mark.parametrize("flag", ["--pointing-loss-weight", "--region-loss-weight"])
def test_answers_only_with_a_box_reading_loss_is_one_clear_error(flag, tmp_path, capsys):
    code = main(["ablate", "--out", str(tmp_path / "o"), "--answers-only", flag, "1"])
    assert code != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"--answers-only turns every box-reading loss off, but {flag} 1" in line
    assert not (tmp_path / "o").exists()


def test_a_negative_region_loss_weight_is_refused(tmp_path):
    args = AblationArguments(out=str(tmp_path / "o"), preset="tiny", region_loss_weight=-1.0)
    with pytest.raises(ValueError, match=r"region_loss_weight must be >= 0, got -1\.0"):
        run_ablation(args)


@pytest.fixture(scope="module")
def answers_only_ablation(tmp_path_factory) -> Path:
    """A tiny answers-only ablation: soft and hybrid, one seed, one epoch."""
    root = tmp_path_factory.mktemp("answers_only")
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(root / "data", train=30, val=8, test=8, config=config, progress=False)
    args = AblationArguments(
        out=str(root / "out"),
        data=str(root / "data"),
        region_loss_weight=0.0,
        pointing_loss_weight=0.0,
        grad_repeats=2,
        **GRID,
    )
    return run_ablation(args)


def test_no_run_of_an_answers_only_ablation_reads_a_box(answers_only_ablation):
    runs = sorted((answers_only_ablation / RUNS_DIR).iterdir())
    assert len(runs) == 2
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        assert (config["region_loss_weight"], config["pointing_loss_weight"]) == (0.0, 0.0)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["arguments"]["region_loss_weight"] == 0.0
    settings = json.loads((answers_only_ablation / SETTINGS_FILE).read_text())
    assert settings["region_loss_weight"] == 0.0
    assert "pointing_loss_weight" not in settings  # recorded only when used


def test_the_report_says_every_run_learned_from_the_answers_alone(answers_only_ablation):
    report = (answers_only_ablation / REPORT_FILE).read_text()
    assert "Every run learned from the answers alone" in report
    assert "Every run was trained with the pointing loss" not in report


def test_resume_refuses_other_loss_weights(answers_only_ablation, tmp_path):
    settings = json.loads((answers_only_ablation / SETTINGS_FILE).read_text())
    args = AblationArguments(
        out=str(answers_only_ablation),
        data=settings["data"],
        pointing_loss_weight=0.0,
        resume=True,
        **GRID,
    )
    with pytest.raises(ValueError, match=r"region_loss_weight was 0\.0, now None"):
        run_ablation(args)
