"""`vqa ablate`: the grid end to end, FLOP counting, the table's aggregation, resume."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import vqa.training
from vqa.ablation import (
    PLOT_FILES,
    REPORT_FILE,
    RESULTS_FILE,
    TABLE_FILE,
    AblationArguments,
    add_ablate_parser,
    count_flops,
    grid,
    read_results,
    run_ablation,
    summarise,
)
from vqa.configuration import HybridVQAConfig
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset

COLUMNS = (
    "mode",
    "k",
    "estimator",
    "seed",
    "accuracy",
    "accuracy_colour",
    "pointing_accuracy",
    "attention_entropy",
    "regions_used",
    "fusion_flops",
    "total_flops",
    "ms_per_question",
    "train_seconds",
    "final_loss",
    "loss_variance",
    "score_grad_variance",
    "score_grad_noise",
    "score_grad_batch_noise",
)


def tiny_grid(out: Path, data: Path, **overrides) -> AblationArguments:
    """Arguments of a fast ablation on the tiny preset: 1 epoch per run, no progress bars."""
    values = {
        "modes": ["soft", "hard", "hybrid"],
        "k": [4],
        "estimators": ["ste", "reinforce"],
        "seeds": [0],
        **overrides,
    }
    return AblationArguments(
        out=str(out), data=str(data), preset="tiny", epochs=1, progress=False, **values
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("ablation") / "data"
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(data, train=30, val=8, test=8, config=config, progress=False)
    return data


@pytest.fixture(scope="module")
def ablation(dataset, tmp_path_factory) -> tuple[Path, AblationArguments]:
    args = tiny_grid(tmp_path_factory.mktemp("ablation") / "out", dataset)
    return run_ablation(args), args


def test_results_have_every_measured_column(ablation):
    out, _ = ablation
    with (out / RESULTS_FILE).open(newline="") as file:
        header = next(csv.reader(file))
    assert set(COLUMNS) <= set(header), set(COLUMNS) - set(header)


def test_results_have_one_row_per_run_of_the_grid(ablation):
    out, args = ablation
    names = [row["name"] for row in read_results(out / RESULTS_FILE)]
    # soft once, hard and hybrid once per estimator: 1 + 2 + 2
    assert sorted(names) == sorted(spec.name for spec in grid(args))
    assert len(names) == 5


def test_table_report_and_plots_are_written(ablation):
    out, _ = ablation
    for name in (TABLE_FILE, REPORT_FILE):
        assert (out / name).read_text().startswith("# "), name
    for name in PLOT_FILES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_fusion_flops_of_hard_and_hybrid_are_below_soft_when_k_is_below_n():
    config = HybridVQAConfig(**get_preset("tiny").model, num_answers=5)
    assert config.fusion_k < config.num_regions
    model = HybridVQAModel(config)
    inputs = {
        "pixel_values": torch.randn(2, 3, config.image_size, config.image_size),
        "input_ids": torch.randint(5, 100, (4, 7)),
        "attention_mask": torch.ones(4, 7, dtype=torch.long),
        "image_index": torch.tensor([0, 0, 1, 1]),
    }
    fusion = {}
    for mode in ("soft", "hard", "hybrid"):
        model.set_fusion(mode=mode)
        fusion[mode], total = count_flops(model, inputs)
        assert 0 < fusion[mode] < total
    assert fusion["hard"] < fusion["soft"]
    assert fusion["hybrid"] < fusion["soft"]


def test_table_is_the_mean_and_std_over_seeds_of_each_configuration(tmp_path):
    results = tmp_path / RESULTS_FILE
    results.write_text(
        "name,mode,k,estimator,seed,accuracy,accuracy_colour,fusion_flops\n"
        "soft-seed0,soft,16,-,0,0.5,0.25,2000000\n"
        "hard-k4-ste-seed0,hard,4,ste,0,0.6,0.5,1000000\n"
        "hard-k4-ste-seed1,hard,4,ste,1,0.8,1.0,1000000\n"
    )
    table = summarise(results)
    # mean 0.7, sample std sqrt(((0.6-0.7)^2 + (0.8-0.7)^2) / 1) = 0.1414
    assert "| hard | 4 | ste | 2 | 0.700 ± 0.141 | 1.000 ± 0.000 |" in table
    assert "| soft | 16 | - | 1 | 0.500 | 2.000 |" in table  # one seed: no spread
    assert "| hard | 4 | ste | 2 | 0.750 ± 0.354 |" in table  # accuracy per question type


def test_resume_runs_nothing_twice(dataset, tmp_path, monkeypatch):
    trained = []
    real_train = vqa.training.train

    def counting_train(arguments):
        trained.append(Path(arguments.output).name)
        return real_train(arguments)

    monkeypatch.setattr(vqa.training, "train", counting_train)
    run_ablation(tiny_grid(tmp_path, dataset, modes=["soft"], seeds=[0]))
    run_ablation(tiny_grid(tmp_path, dataset, modes=["soft"], seeds=[0, 1], resume=True))
    run_ablation(tiny_grid(tmp_path, dataset, modes=["soft"], seeds=[0, 1], resume=True))
    assert trained == ["soft-seed0", "soft-seed1"]
    assert [row["name"] for row in read_results(tmp_path / RESULTS_FILE)] == trained


def test_existing_results_are_not_overwritten_without_resume(dataset, tmp_path):
    (tmp_path / RESULTS_FILE).write_text("name,mode,k,estimator,seed\nsoft-seed0,soft,16,-,0\n")
    with pytest.raises(FileExistsError, match="--resume"):
        run_ablation(tiny_grid(tmp_path, dataset, modes=["soft"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modes": []}, "modes: the list is empty"),
        ({"modes": ["soft", "sfot"]}, "modes: unknown mode 'sfot'"),
        ({"estimators": ["magic"]}, "estimators: unknown estimator 'magic'"),
        ({"estimators": []}, "estimators: the list is empty"),
        ({"k": [17]}, r"k: 17 is not between 1 and the number of regions \(16\)"),
        ({"k": [0]}, "k: 0 is not between 1"),
        ({"seeds": []}, "seeds: the list is empty"),
    ],
)
def test_bad_grid_names_the_argument_and_value(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        grid(tiny_grid(tmp_path, tmp_path, **overrides))


def test_soft_runs_once_per_seed_whatever_k_and_estimators():
    specs = grid(tiny_grid(Path("out"), Path("data"), modes=["soft"], k=[2, 4], seeds=[0, 1]))
    assert [spec.name for spec in specs] == ["soft-seed0", "soft-seed1"]


def test_ablate_parser_reads_comma_separated_lists():
    parser = argparse.ArgumentParser()
    add_ablate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["ablate", "--out", "o", "--modes", "soft,hybrid", "--k", "4, 8", "--seeds", "0,1"]
    )
    assert (args.modes, args.k, args.seeds, args.estimators) == (
        ["soft", "hybrid"],
        [4, 8],
        [0, 1],
        None,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["ablate", "--out", "o", "--k", "4,eight"])


def test_the_report_says_the_runs_were_told_where_to_look(ablation):
    out, _ = ablation  # the tiny preset trains with the pointing loss
    assert "trained with the pointing loss (weight 1)" in (out / REPORT_FILE).read_text()
    config = json.loads((out / "runs" / "soft-seed0" / "config.json").read_text())
    assert config["pointing_loss_weight"] == 1.0


def test_pointing_loss_weight_zero_trains_every_run_without_it(dataset, tmp_path):
    args = tiny_grid(tmp_path, dataset, modes=["soft"], pointing_loss_weight=0.0)
    run_ablation(args)
    config = json.loads((tmp_path / "runs" / "soft-seed0" / "config.json").read_text())
    assert config["pointing_loss_weight"] == 0.0
    assert "pointing loss" not in (tmp_path / REPORT_FILE).read_text()
    with pytest.raises(ValueError, match=r"pointing_loss_weight was None, now 2\.0"):
        run_ablation(dataclasses.replace(args, pointing_loss_weight=2.0, resume=True))


def test_a_negative_pointing_loss_weight_is_refused_before_anything_is_written(dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"pointing_loss_weight must be >= 0, got -1\.0"):
        run_ablation(tiny_grid(out, dataset, modes=["soft"], pointing_loss_weight=-1.0))
    assert not out.exists()
