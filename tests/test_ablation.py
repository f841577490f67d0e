"""`vqa ablate`: the grid end to end, FLOP counting, the table's aggregation, resume, the
statistical tests and verdicts of the report, the data that each plot draws, and the axes of
the selection inside the vision encoder."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

import vqa.presets
import vqa.training
from vqa.ablation import (
    PLOT_FILES,
    REPORT_FILE,
    RESULTS_FILE,
    RUNS_DIR,
    TABLE_FILE,
    AblationArguments,
    RunSpec,
    aggregate,
    count_flops,
    grid,
    plot_accuracy_vs_flops,
    plot_accuracy_vs_k,
    plot_attention_gallery,
    plot_pointing,
    plot_training_curves,
    read_results,
    run_ablation,
    summarise,
    variance_test,
    welch_test,
    write_report,
)
from vqa.cli import add_ablate_parser
from vqa.configuration import HybridVQAConfig
from vqa.data.formats import load_local_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset

COLUMNS = (
    "mode",
    "k",
    "estimator",
    "select_after",
    "encoder_k",
    "seed",
    "accuracy",
    "accuracy_colour",
    "pointing_accuracy",
    "attention_entropy",
    "regions_used",
    "encoder_flops",
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
    """Arguments of a fast ablation on the tiny preset: 1 epoch per run, 2 gradient passes per
    noise measurement (the fewest that give a variance), no progress bars."""
    values = {
        "modes": ["soft", "hard", "hybrid"],
        "k": [4],
        "estimators": ["ste", "reinforce"],
        "seeds": [0],
        **overrides,
    }
    return AblationArguments(
        out=str(out),
        data=str(data),
        preset="tiny",
        epochs=1,
        progress=False,
        grad_repeats=2,
        **values,
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


def test_settings_record_the_machine(ablation):
    out, _ = ablation
    machine = json.loads((out / "ablation.json").read_text())["machine"]
    assert {"device", "device_name", "cores", "threads", "matmul_gflops"} <= machine.keys()
    assert f"fp32 matmul {machine['matmul_gflops']} GFLOP/s" in (out / REPORT_FILE).read_text()


def test_gallery_shows_each_modes_weights_over_the_regions(ablation, dataset, tmp_path):
    out, _ = ablation
    stats = aggregate(read_results(out / RESULTS_FILE))
    rows = load_local_dataset(dataset, ["test"])["test"]
    figure = plot_attention_gallery(stats, out / RUNS_DIR, rows, tmp_path / "gallery.png")
    cells = [ax for ax in figure.axes if ax.images]  # the colour bar has no image
    columns = len({ax.get_title().split("\n")[0] for ax in cells})
    assert columns == 3  # soft, hard and hybrid: each mode's most accurate configuration
    for ax in cells:
        weights = ax.images[1].get_array()  # over the scene image: (side, side) region weights
        assert weights.shape == (4, 4)  # the tiny preset's N = 16 regions
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-4)


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


def test_resume_refuses_runs_with_other_hops(dataset, tmp_path, monkeypatch):
    args = tiny_grid(tmp_path, dataset, modes=["soft"])
    run_ablation(args)  # the tiny preset fuses in one hop
    tiny = get_preset("tiny")
    two_hops = dataclasses.replace(tiny, model={**tiny.model, "fusion_hops": 2})
    monkeypatch.setitem(vqa.presets.PRESETS, "tiny", two_hops)
    with pytest.raises(ValueError, match=r"fusion_hops was None, now 2"):
        run_ablation(dataclasses.replace(args, resume=True))


def test_a_negative_pointing_loss_weight_is_refused_before_anything_is_written(dataset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"pointing_loss_weight must be >= 0, got -1\.0"):
        run_ablation(tiny_grid(out, dataset, modes=["soft"], pointing_loss_weight=-1.0))
    assert not out.exists()


def write_results(path: Path, configurations: dict[tuple, dict[str, list[float]]]) -> Path:
    """Write a results.csv with one row per seed from ``{(mode, k, estimator): {column:
    per-seed values}}``; a key ``(mode, k, estimator, select_after, encoder_k)`` adds the
    encoder selection's columns (a results.csv without them is one of an older ablation)."""
    rows = []
    for (mode, k, estimator, *encoder), columns in configurations.items():
        seeds = len(next(iter(columns.values())))
        for seed in range(seeds):
            name = RunSpec(mode, k, estimator, seed, *encoder).name
            row = {"name": name, "mode": mode, "k": k, "estimator": estimator, "seed": seed}
            if encoder:
                row |= dict(zip(("select_after", "encoder_k"), encoder, strict=True))
            rows.append(row | {column: values[seed] for column, values in columns.items()})
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(c for r in rows for c in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


# Per-seed values of a constructed ablation: hard is clearly less accurate than soft and
# points worse (against the claim); hybrid overlaps soft; FLOPs do not depend on the seed.
CONSTRUCTED = {
    ("soft", 16, "-"): {
        "accuracy": [0.60, 0.62, 0.61],
        "pointing_accuracy": [0.50, 0.52, 0.51],
        "fusion_flops": [2e6, 2e6, 2e6],
        "total_flops": [5e6, 5e6, 5e6],
    },
    ("hard", 4, "ste"): {
        "accuracy": [0.40, 0.42, 0.41],
        "pointing_accuracy": [0.10, 0.12, 0.11],
        "fusion_flops": [1e6, 1e6, 1e6],
        "total_flops": [4e6, 4e6, 4e6],
    },
    ("hard", 8, "ste"): {
        "accuracy": [0.45, 0.47, 0.46],
        "pointing_accuracy": [0.20, 0.22, 0.21],
        "fusion_flops": [1.5e6, 1.5e6, 1.5e6],
        "total_flops": [4.5e6, 4.5e6, 4.5e6],
    },
    ("hybrid", 4, "ste"): {
        "accuracy": [0.55, 0.65, 0.60],
        "pointing_accuracy": [0.45, 0.55, 0.50],
        "fusion_flops": [1e6, 1e6, 1e6],
        "total_flops": [4e6, 4e6, 4e6],
    },
    ("hybrid", 8, "ste"): {
        "accuracy": [0.58, 0.62, 0.60],
        "pointing_accuracy": [0.48, 0.56, 0.52],
        "fusion_flops": [1.5e6, 1.5e6, 1.5e6],
        "total_flops": [4.5e6, 4.5e6, 4.5e6],
    },
}
SETTINGS = {
    "data": "synthetic",
    "preset": "tiny",
    "epochs": 1,
    "split": "test",
    "blind_accuracy": 0.30,
    "machine": {"device_name": "Test CPU", "cores": 2, "threads": 2, "matmul_gflops": 12.5},
}


def section(report: str, title: str) -> str:
    """The text of report.md under ``## title``, up to the next heading."""
    return report.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_welch_test_finds_clearly_different_means():
    difference = welch_test([0.40, 0.42, 0.41], [0.60, 0.62, 0.61])
    assert difference.direction == "lower"
    assert difference.p_value < 0.05


def test_welch_test_calls_overlapping_samples_a_tie():
    difference = welch_test([0.55, 0.65, 0.60], [0.60, 0.62, 0.61])
    assert difference.direction == "tie"
    assert difference.p_value > 0.5


def test_welch_test_is_not_run_with_one_seed():
    difference = welch_test([0.9], [0.1, 0.2])
    assert difference.direction == "not tested"
    assert math.isnan(difference.p_value)


def test_welch_test_decides_constant_samples_exactly():
    assert welch_test([1e6, 1e6], [2e6, 2e6]).direction == "lower"
    assert welch_test([1e6, 1e6], [1e6, 1e6]).direction == "tie"


def test_variance_test_finds_a_larger_spread_over_seeds():
    wide, narrow = [0.1, 0.9, 0.3, 0.7, 0.5], [0.50, 0.51, 0.49, 0.50, 0.505]
    assert variance_test(wide, narrow).direction == "higher"
    assert variance_test(narrow, narrow).direction == "tie"
    assert variance_test(wide, [0.5]).direction == "not tested"


@pytest.fixture
def report(tmp_path) -> str:
    """report.md of the constructed ablation (3 seeds per configuration)."""
    results = write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)
    return write_report(results, tmp_path / REPORT_FILE, SETTINGS)


def test_report_names_its_tests_and_the_machine(report):
    introduction = report.split("\n## ")[0]
    assert "Means are compared with Welch's t-test" in introduction
    assert "Test CPU (2 cores, torch threads: 2; fp32 matmul 12.5 GFLOP/s)" in introduction
    assert "It beats the baseline by 0.310 (one-sample t-test, p = " in introduction


def test_report_holds_for_flops_that_are_lower_at_every_seed(report):
    compute = section(report, "Compute")
    assert "**Verdict: holds**" in compute
    row = "| hard k=4 ste vs soft | fusion MFLOP/q | 1.000 ± 0.000 | 2.000 ± 0.000 | lower | 0 |"
    assert row in compute  # constant over seeds: p = 0


def test_report_holds_for_a_significant_difference_and_ties_equal_spreads(report):
    accuracy = section(report, "Accuracy")
    assert "| hard is less accurate (accuracy) | holds | 2 | 0 | 0 | 0 |" in accuracy
    # the same std (0.01) everywhere: the F-test finds no difference in stability
    row = "| hard is less stable over seeds (std of accuracy) | inconclusive | 0 | 2 | 0 | 0 |"
    assert row in accuracy
    assert "**Verdict: mixed**" in accuracy


def test_report_lists_a_significant_difference_against_the_claim(report):
    interpretability = section(report, "Interpretability")
    assert "**Verdict: contradicted**" in interpretability
    line = "- hard k=4 ste vs soft: pointing 0.110 ± 0.010 vs 0.510 ± 0.010 (claimed: higher; p = "
    assert line in interpretability


def test_report_counts_overlapping_accuracies_as_ties_that_hold_for_not_lower(report):
    hybrid = section(report, "Hybrid")
    assert "| hybrid is as accurate as soft | holds | 0 | 2 | 0 | 0 |" in hybrid


def test_report_with_one_seed_tests_nothing(tmp_path):
    one_seed = {
        config: {column: values[:1] for column, values in columns.items()}
        for config, columns in CONSTRUCTED.items()
    }
    results = write_results(tmp_path / RESULTS_FILE, one_seed)
    report = write_report(results, tmp_path / REPORT_FILE, SETTINGS)
    accuracy = section(report, "Accuracy")
    assert "| hard is less accurate (accuracy) | inconclusive | 0 | 0 | 2 | 0 |" in accuracy
    row = "| hard k=4 ste vs soft | accuracy | 0.400 | 0.600 | lower | n/a | not tested |"
    assert row in accuracy
    assert "With one seed the difference could not be tested" in report
    assert "**Verdict: contradicted**" not in report


@pytest.fixture
def constructed(tmp_path) -> tuple[list[dict], dict[tuple, dict[str, float]]]:
    """The aggregated constructed ablation, and the mean of each column per configuration
    computed here, apart from the code under test."""
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)))
    means = {
        config: {column: statistics.fmean(values) for column, values in columns.items()}
        for config, columns in CONSTRUCTED.items()
    }
    return stats, means


def test_accuracy_vs_k_draws_one_line_per_mode_and_estimator(constructed, tmp_path):
    stats, means = constructed
    figure = plot_accuracy_vs_k(stats, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figure.axes[0]
    drawn = {
        container.get_label(): (
            list(container.lines[0].get_xdata()),
            list(container.lines[0].get_ydata()),
        )
        for container in ax.containers
    }
    assert drawn.keys() == {"hard ste", "hybrid ste"}
    for mode in ("hard", "hybrid"):
        xs, ys = drawn[f"{mode} ste"]
        assert xs == [4, 8]
        assert ys == pytest.approx([means[(mode, k, "ste")]["accuracy"] for k in (4, 8)])
    soft = [line for line in ax.lines if line.get_label() == "soft (all 16)"]
    assert len(soft) == 1
    assert list(soft[0].get_ydata()) == pytest.approx([means[("soft", 16, "-")]["accuracy"]] * 2)


def test_accuracy_vs_flops_draws_each_configuration_at_its_flops(constructed, tmp_path):
    stats, means = constructed
    figure = plot_accuracy_vs_flops(stats, tmp_path / "plot.png")
    # left: FLOPs after the encoders; right: FLOPs of the whole model
    for ax, metric in zip(figure.axes, ("fusion_flops", "total_flops"), strict=True):
        points = sorted(
            (c.lines[0].get_xdata()[0], c.lines[0].get_ydata()[0]) for c in ax.containers
        )
        expected = sorted((m[metric] * 1e-6, m["accuracy"]) for m in means.values())
        assert [x for x, _ in points] == pytest.approx([x for x, _ in expected]), metric
        assert [y for _, y in points] == pytest.approx([y for _, y in expected]), metric


def test_pointing_draws_one_bar_per_configuration(constructed, tmp_path):
    stats, means = constructed
    figure = plot_pointing(stats, tmp_path / "plot.png")
    ax = figure.axes[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([m["pointing_accuracy"] for m in means.values()])
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == ["soft", "hard k=4 ste", "hard k=8 ste", "hybrid k=4 ste", "hybrid k=8 ste"]


def test_training_curves_draw_the_mean_over_seeds_per_configuration(tmp_path):
    losses = {  # seed 1 trained one step longer: the curves are cut to the shorter
        "soft-seed0": [3.0, 2.0, 1.0],
        "soft-seed1": [2.0, 1.0, 0.0, 9.0],
        "hard-k4-ste-seed0": [4.0, 3.0, 2.0],
    }
    for name, steps in losses.items():
        run = tmp_path / RUNS_DIR / name
        run.mkdir(parents=True)
        history = [{"step_answer_losses": steps[:2]}, {"step_answer_losses": steps[2:]}]
        (run / "metrics.json").write_text(json.dumps({"history": history}))
    results = write_results(
        tmp_path / RESULTS_FILE,
        {("soft", 16, "-"): {"accuracy": [0.5, 0.5]}, ("hard", 4, "ste"): {"accuracy": [0.4]}},
    )
    figure = plot_training_curves(
        aggregate(read_results(results)), tmp_path / RUNS_DIR, tmp_path / "curves.png"
    )
    drawn = {
        ax.get_title(): {line.get_label(): list(line.get_ydata()) for line in ax.lines}
        for ax in figure.axes
    }
    assert drawn == {"soft": {"soft": [2.5, 1.5, 0.5]}, "hard": {"hard k=4 ste": [4.0, 3.0, 2.0]}}


# The selection inside the vision encoder (select_after, encoder_k)


def test_encoder_axes_cross_hard_and_hybrid_runs_but_not_soft():
    args = tiny_grid(
        Path("out"),
        Path("data"),
        k=[4],
        estimators=["ste"],
        select_after=[0, 1],
        encoder_k=[8, 0.5],
    )
    assert [spec.name for spec in grid(args)] == [
        "soft-seed0",
        "hard-k4-ste-enc0x8-seed0",
        "hard-k4-ste-enc0x0.5-seed0",
        "hard-k4-ste-enc1x8-seed0",
        "hard-k4-ste-enc1x0.5-seed0",
        "hybrid-k4-ste-enc0x8-seed0",
        "hybrid-k4-ste-enc0x0.5-seed0",
        "hybrid-k4-ste-enc1x8-seed0",
        "hybrid-k4-ste-enc1x0.5-seed0",
    ]


def test_run_names_mention_the_encoder_selection_only_when_there_is_one():
    assert RunSpec("hybrid", 16, "ste", 0).name == "hybrid-k16-ste-seed0"
    assert RunSpec("hybrid", 16, "ste", 0, 1, 16).name == "hybrid-k16-ste-enc1x16-seed0"
    assert RunSpec("hard", 4, "ste", 2, 1, 0.25).name == "hard-k4-ste-enc1x0.25-seed2"


def test_a_count_of_one_and_a_ratio_of_one_are_different_encoder_k():
    args = tiny_grid(Path("o"), Path("d"), modes=["hard"], k=[1], estimators=["ste"])
    specs = grid(dataclasses.replace(args, select_after=[0], encoder_k=[1, 1.0, 1]))
    assert [spec.name for spec in specs] == [
        "hard-k1-ste-enc0x1-seed0",
        "hard-k1-ste-enc0x1.0-seed0",
    ]


def test_select_after_alone_keeps_the_presets_encoder_k():
    specs = grid(
        tiny_grid(Path("o"), Path("d"), modes=["hard"], estimators=["ste"], select_after=[1])
    )
    preset_k = HybridVQAConfig(**get_preset("tiny").model).encoder_k
    assert [(spec.select_after, spec.encoder_k) for spec in specs] == [(1, preset_k)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_k": [8]}, r"encoder_k: \[8\] needs select_after"),
        ({"select_after": []}, "select_after: the list is empty"),
        (
            {"select_after": [2]},
            r"select_after: 2 is not between 0 and the 1 ViT blocks of the 'tiny'",
        ),
        ({"select_after": [-1]}, "select_after: -1 is not between 0"),
        ({"select_after": [0], "encoder_k": []}, "encoder_k: the list is empty"),
        (
            {"select_after": [0], "encoder_k": [17]},
            r"encoder_k: 17 is neither a count between 1 and the number of regions \(16\)",
        ),
        ({"select_after": [0], "encoder_k": [1.5]}, "encoder_k: 1.5 is neither a count"),
        (
            {"select_after": [0], "encoder_k": [2]},
            r"encoder_k: 2 keeps 2 of the 16 patch tokens, fewer than the fusion keeps \(k=4\)",
        ),
        ({"select_after": [0], "encoder_k": [0.125]}, r"encoder_k: 0.125 keeps 2 of the 16"),
    ],
)
def test_bad_encoder_selection_names_the_argument_and_value(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        grid(tiny_grid(tmp_path, tmp_path, **overrides))


def test_ablate_parser_reads_the_encoder_axes_and_passes_them_on(monkeypatch):
    import vqa.ablation

    parser = argparse.ArgumentParser()
    add_ablate_parser(parser.add_subparsers(dest="command"))
    command = ["ablate", "--out", "o", "--select-after", "1,2", "--encoder-k", "16,0.25"]
    args = parser.parse_args(command)
    assert (args.select_after, args.encoder_k) == ([1, 2], [16, 0.25])
    given = []
    monkeypatch.setattr(vqa.ablation, "run_ablation", lambda a: given.append(a) or Path("o"))
    args.run(args)
    assert (given[0].select_after, given[0].encoder_k) == ([1, 2], [16, 0.25])
    with pytest.raises(SystemExit):
        parser.parse_args(["ablate", "--out", "o", "--encoder-k", "16,many"])


def test_results_without_the_encoder_columns_read_as_no_selection(tmp_path):
    rows = read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED))
    soft = rows[0]
    assert (soft["select_after"], soft["encoder_k"]) == (None, None)
    assert soft["encoder_flops"] == 5e6 - 2e6  # total minus what runs after the encoders


# A constructed ablation with a selection inside the encoder: hard k=4 ste without one, and
# with one that keeps 8 tokens after 1 block (its encoder FLOPs given per case).
def selecting(encoder_flops: float) -> dict[tuple, dict[str, list[float]]]:
    soft, hard = CONSTRUCTED[("soft", 16, "-")], CONSTRUCTED[("hard", 4, "ste")]
    fusion = 0.8e6
    return {
        ("soft", 16, "-"): soft | {"ms_per_question": [1.0, 1.1, 0.9]},
        ("hard", 4, "ste"): hard | {"ms_per_question": [0.6, 0.65, 0.55]},
        ("hard", 4, "ste", 1, 8): hard
        | {
            "fusion_flops": [fusion] * 3,
            "encoder_flops": [encoder_flops] * 3,
            "total_flops": [encoder_flops + fusion] * 3,
            "ms_per_question": [0.5, 0.55, 0.45],
        },
    }


def test_report_without_an_encoder_selection_says_the_saving_is_only_after_the_encoders(report):
    compute = section(report, "Compute")
    assert "total FLOPs below soft's: holds;" in compute
    assert (
        "No run selects patch tokens inside the vision encoder (`--select-after`): every mode "
        "encodes all N patches, so any saving of hard attention is only after the encoders, in "
        "the fusion, reasoner and head (40% of soft's total FLOPs: the most it can save)."
    ) in compute
    row = "| hard computes less in the encoders when it selects inside them (encoder FLOPs) |"
    assert f"{row} not measured | 0 | 0 | 0 | 0 |" in compute


def test_report_says_the_saving_comes_from_the_encoder_when_its_flops_are_lower(tmp_path):
    results = write_results(tmp_path / RESULTS_FILE, selecting(encoder_flops=2e6))
    compute = section(write_report(results, tmp_path / REPORT_FILE, SETTINGS), "Compute")
    assert (
        "total FLOPs below soft's: holds; ms per question below soft's: holds; "
        "**hard is cheaper: holds**."
    ) in compute
    assert (
        "Hard configurations that select patch tokens inside the vision encoder: 1 of 2; their "
        "encoder FLOPs below soft's: holds; FLOPs after the encoders below soft's: holds; the "
        "saving comes from the encoder and after it."
    ) in compute
    row = (
        "| hard k=4 ste enc=1x8 vs soft | encoder MFLOP/q | 2.00 ± 0.00 | 3.00 ± 0.00 | lower | 0 |"
    )
    assert row in compute


def test_report_says_the_saving_is_only_after_the_encoders_when_the_selection_costs_more(
    tmp_path,
):
    results = write_results(tmp_path / RESULTS_FILE, selecting(encoder_flops=3.5e6))
    compute = section(write_report(results, tmp_path / REPORT_FILE, SETTINGS), "Compute")
    assert "encoder FLOPs below soft's: contradicted;" in compute
    assert "the saving is only after the encoders (after a selection inside the encoder" in compute


def test_table_has_an_encoder_column_when_a_run_selects_inside_the_encoder(tmp_path):
    table = summarise(write_results(tmp_path / RESULTS_FILE, selecting(encoder_flops=2e6)))
    assert "| mode | k | estimator | encoder | seeds | accuracy |" in table
    assert "| soft | 16 | - | - | 3 |" in table
    assert "| hard | 4 | ste | 1x8 | 3 |" in table


def test_accuracy_vs_k_draws_a_line_per_encoder_selection(tmp_path):
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, selecting(2e6))))
    figure = plot_accuracy_vs_k(stats, tmp_path / "plot.png")
    labels = {container.get_label() for container in figure.axes[0].containers}
    assert labels == {"hard ste", "hard ste enc=1x8"}


@pytest.fixture(scope="module")
def encoder_ablation(dataset, tmp_path_factory) -> tuple[Path, dict]:
    """An ablation made before the encoder axes (soft, its results.csv without the new
    columns), resumed with hard runs that keep 8 of the 16 patch tokens after block 0; and
    the soft run's row as it was before the resume."""
    out = tmp_path_factory.mktemp("encoder") / "out"
    run_ablation(tiny_grid(out, dataset, modes=["soft"]))
    results = out / RESULTS_FILE
    with results.open(newline="") as file:
        old = list(csv.DictReader(file))
    new_columns = ("select_after", "encoder_k", "encoder_flops")
    with results.open("w", newline="") as file:
        writer = csv.DictWriter(file, [c for c in old[0] if c not in new_columns])
        writer.writeheader()
        writer.writerows({c: v for c, v in row.items() if c not in new_columns} for row in old)
    args = tiny_grid(
        out, dataset, modes=["soft", "hard"], estimators=["ste"], select_after=[0], encoder_k=[8]
    )
    return run_ablation(dataclasses.replace(args, resume=True)), old[0]


def test_a_run_with_an_encoder_selection_writes_its_columns(encoder_ablation):
    out, _ = encoder_ablation
    with (out / RESULTS_FILE).open(newline="") as file:
        rows = {row["name"]: row for row in csv.DictReader(file)}
    assert rows.keys() == {"soft-seed0", "hard-k4-ste-enc0x8-seed0"}
    soft, hard = rows["soft-seed0"], rows["hard-k4-ste-enc0x8-seed0"]
    assert (soft["select_after"], soft["encoder_k"]) == ("", "")
    assert (hard["select_after"], hard["encoder_k"]) == ("0", "8")
    for row in (soft, hard):
        encoder, fusion, total = (
            float(row[c]) for c in ("encoder_flops", "fusion_flops", "total_flops")
        )
        assert encoder > 0
        assert encoder == pytest.approx(total - fusion)


def test_resuming_an_older_ablation_with_the_encoder_axes_keeps_its_runs(encoder_ablation):
    out, before = encoder_ablation
    soft = next(row for row in read_results(out / RESULTS_FILE) if row["name"] == "soft-seed0")
    assert soft["train_seconds"] == float(before["train_seconds"])  # not trained again


def test_a_run_with_an_encoder_selection_trains_a_model_that_selects(encoder_ablation):
    out, _ = encoder_ablation
    run = out / RUNS_DIR / "hard-k4-ste-enc0x8-seed0"
    config = json.loads((run / "config.json").read_text())
    assert (config["encoder_select_after"], config["encoder_k"]) == (0, 8)


def test_the_resumed_report_judges_the_encoder_selection(encoder_ablation):
    out, _ = encoder_ablation
    compute = section((out / REPORT_FILE).read_text(), "Compute")
    assert "select patch tokens inside the vision encoder: 1 of 1;" in compute
    assert "| hard k=4 ste enc=0x8 vs soft | encoder MFLOP/q |" in compute
