"""``scripts/experiments``: ``run.py --compare`` tests two sets of results with Welch's t-test,
``--average-vs-raw`` pairs the weight average of each run with its trained weights, and
``flops.py`` counts what a training question costs under each config."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).parents[1] / "scripts" / "experiments"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_results(directory: Path, name: str, accuracies: list[float]) -> None:
    for seed, accuracy in enumerate(accuracies):
        path = directory / f"seed{seed}" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"final": {"val_accuracy": accuracy}}))


def test_compare_reports_each_side_and_welch_verdict(tmp_path):
    run = load("run")
    write_results(tmp_path, "new", [0.80, 0.82, 0.81])
    write_results(tmp_path, "old", [0.40, 0.42, 0.41, 0.43])
    result = run.compare(str(tmp_path / "seed*/new.json"), str(tmp_path / "seed*/old.json"))
    assert result["subject"]["accuracies"] == [0.80, 0.82, 0.81]
    assert result["subject"]["mean"] == pytest.approx(0.81)
    assert result["reference"]["std"] == pytest.approx(0.012910, abs=1e-5)
    assert result["test"]["name"] == "Welch's t-test"
    assert result["test"]["verdict"] == "higher" and result["test"]["p_value"] < 1e-4
    overlapping = run.compare(str(tmp_path / "seed*/old.json"), str(tmp_path / "seed*/old.json"))
    assert overlapping["test"]["verdict"] == "tie"


def test_compare_names_a_pattern_that_matches_nothing(tmp_path):
    run = load("run")
    with pytest.raises(SystemExit, match="no result file matches"):
        run.compare(str(tmp_path / "missing*.json"), str(tmp_path / "*.json"))


def write_averaged_run(path: Path, average: list[float], raw: list[float]) -> None:
    curve = [{"val_accuracy": a, "val_raw_accuracy": r} for a, r in zip(average, raw, strict=True)]
    path.write_text(json.dumps({"curve": curve}))


def test_average_vs_raw_pairs_each_run_s_two_weights(tmp_path):
    run = load("run")
    write_averaged_run(tmp_path / "seed0.json", [0.30, 0.52], [0.31, 0.50])
    write_averaged_run(tmp_path / "seed1.json", [0.28, 0.61], [0.27, 0.58])
    write_averaged_run(tmp_path / "seed2.json", [0.33, 0.47], [0.30, 0.46])
    result = run.average_against_raw(str(tmp_path / "seed*.json"))
    assert [entry["raw"] for entry in result["runs"]][1] == [0.27, 0.58]
    assert result["final_differences"] == pytest.approx([0.02, 0.03, 0.01])
    assert result["final_difference_mean"] == pytest.approx(0.02)
    # differences 0.02, 0.03, 0.01: t = 0.02 / (0.01 / sqrt 3) = 3.46 on 2 degrees of freedom
    assert result["test"]["p_value"] == pytest.approx(0.0742, abs=1e-3)
    (tmp_path / "plain.json").write_text(json.dumps({"curve": [{"val_accuracy": 0.5}]}))
    with pytest.raises(SystemExit, match="trained without ema_decay"):
        run.average_against_raw(str(tmp_path / "plain.json"))


def test_film_costs_more_per_question_only_in_the_encoder(monkeypatch, capsys):
    configs = EXPERIMENTS / "configs"
    argv = ["flops.py", str(configs / "answers-only.json"), str(configs / "answers-only-film.json")]
    monkeypatch.setattr(sys, "argv", argv)
    load("flops").main()
    plain, film = json.loads(capsys.readouterr().out)
    assert plain["ratio_to_first"] == 1.0
    assert film["after_encoders_mflops"] == pytest.approx(plain["after_encoders_mflops"])
    # four questions per image: FiLM encodes the image four times, the plain model once
    assert film["mflops_per_question"] > 1.5 * plain["mflops_per_question"]


def test_flops_refuses_a_config_whose_k_it_would_not_apply(tmp_path, monkeypatch):
    config = tmp_path / "adaptive.json"
    config.write_text(json.dumps({"preset": "default", "training": {"k": "auto"}}))
    monkeypatch.setattr(sys, "argv", ["flops.py", str(config)])
    with pytest.raises(
        SystemExit, match=r"adaptive\.json: flops\.py does not apply the training option 'k'"
    ):
        load("flops").main()


def test_an_experiment_records_the_architecture_it_trained(tiny_run, tmp_path):
    _, data = tiny_run
    config = {
        "name": "two-hops",
        "description": "the tiny preset with two hops",
        "preset": "tiny",
        "training": {"hops": 2, "batch_size": 20},
        "synthetic": {},
    }
    result = load("run").run_experiment(config, 40, 0, tmp_path / "run", data=data)
    assert result["model"]["fusion_hops"] == 2 and result["model"]["fusion_heads"] == 1
    assert result["model"]["fusion_mode"] == "hybrid"
    assert [point["questions"] for point in result["curve"]] == [
        result["train_questions_per_epoch"]
    ]


def test_a_second_seed_into_the_same_out_gets_its_own_file(tmp_path):
    run = load("run")
    assert run.result_path(tmp_path, "recipe", 1) == tmp_path / "recipe.json"
    (tmp_path / "recipe.json").write_text(json.dumps({"seed": 0}))
    assert run.result_path(tmp_path, "recipe", 0) == tmp_path / "recipe.json"
    assert run.result_path(tmp_path, "recipe", 2) == tmp_path / "recipe-seed2.json"
