"""`vqa ablate` with the k rule as an axis: fixed k against adaptive k (top-p, a learned
budget). The axis and its errors, the grid, a tiny ablation end to end (the distribution of k
per question type, FLOPs, report and plot), and the report's answers for constructed results."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from vqa.ablation import (
    PLOT_FILES,
    REGIONS_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    RUNS_DIR,
    TABLE_FILE,
    AblationArguments,
    RunSpec,
    aggregate,
    grid,
    plot_accuracy_vs_mean_k,
    read_results,
    run_ablation,
    write_report,
)
from vqa.ablation.claims import equal_cost_accuracy, fixed_curve
from vqa.cli import add_ablate_parser
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

SETTINGS = {"data": "synthetic", "preset": "tiny", "epochs": 1, "split": "test"}


def tiny_grid(out: Path, data: Path, **overrides) -> AblationArguments:
    """A fast ablation of hybrid runs on the tiny preset (N = 16 regions): one seed, ste."""
    values = {"modes": ["hybrid"], "estimators": ["ste"], "seeds": [0], **overrides}
    return AblationArguments(
        out=str(out),
        data=str(data),
        preset="tiny",
        epochs=1,
        progress=False,
        grad_repeats=2,
        **values,
    )


def section(report: str, title: str) -> str:
    """The text of report.md under ``## title``, up to the next heading."""
    return report.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_ablate_parser_reads_the_k_rule_axis_and_passes_it_on(monkeypatch):
    import vqa.ablation

    parser = argparse.ArgumentParser()
    add_ablate_parser(parser.add_subparsers(dest="command"))
    command = ["ablate", "--out", "o", "--k-rule", "fixed, top_p,budget", "--top-p", "0.8,0.9"]
    args = parser.parse_args([*command, "--k-penalty", "0,0.01", "--k-max", "8"])
    assert (args.k_rule, args.top_p, args.k_penalty, args.k_max) == (
        ["fixed", "top_p", "budget"],
        [0.8, 0.9],
        [0.0, 0.01],
        8,
    )
    given = []
    monkeypatch.setattr(vqa.ablation, "run_ablation", lambda a: given.append(a) or Path("o"))
    args.run(args)
    chosen = given[0]
    assert (chosen.k_rule, chosen.top_p, chosen.k_penalty, chosen.k_max) == (
        ["fixed", "top_p", "budget"],
        [0.8, 0.9],
        [0.0, 0.01],
        8,
    )
    for option, value in (("--top-p", "0.9,most"), ("--k-penalty", "low"), ("--k-max", "8.5")):
        with pytest.raises(SystemExit):
            parser.parse_args(["ablate", "--out", "o", option, value])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k_rule": []}, "k_rule: the list is empty"),
        (
            {"k_rule": ["fixed", "nucleus"]},
            "k_rule: unknown rule 'nucleus'; choose from fixed, top_p, budget",
        ),
        ({"k_rule": ["top_p"], "top_p": [1.5]}, r"top_p: 1\.5 is not in \(0, 1\]"),
        ({"k_rule": ["top_p"], "top_p": [0.0]}, r"top_p: 0\.0 is not in \(0, 1\]"),
        ({"k_rule": ["budget"], "k_penalty": [-0.1]}, r"k_penalty: -0\.1 is not a number >= 0"),
        (
            {"k_rule": ["top_p"], "k_max": 17},
            r"k_max: 17 is not between 1 and the number of regions \(16\) of the 'tiny' preset",
        ),
        ({"k_rule": ["budget"], "k_max": 0}, "k_max: 0 is not between 1"),
        ({"top_p": [0.9]}, r"top_p: \[0\.9\] needs the top_p rule in k_rule"),
        ({"k_rule": ["top_p"], "k_penalty": [0.1]}, r"k_penalty: \[0\.1\] needs the budget rule"),
        ({"k_max": 8}, "k_max: 8 needs the top_p or budget rule in k_rule"),
        ({"k_rule": ["top_p"], "k": [4]}, r"k: \[4\] needs the fixed rule in k_rule"),
        (
            {"k_rule": ["top_p"], "k_max": 12, "select_after": [0], "encoder_k": [8]},
            r"encoder_k: 8 keeps 8 of the 16 patch tokens, fewer than the fusion keeps \(k=12\)",
        ),
    ],
)
def test_a_bad_k_rule_axis_names_the_argument_and_value(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        grid(tiny_grid(tmp_path, tmp_path, **overrides))


def test_the_k_rule_crosses_hard_and_hybrid_runs_but_not_soft():
    args = tiny_grid(
        Path("out"),
        Path("data"),
        modes=["soft", "hard", "hybrid"],
        k=[4],
        k_rule=["fixed", "top_p", "budget"],
        top_p=[0.8, 0.9],
        k_penalty=[0.01],
        k_max=8,
        seeds=[0, 1],
    )
    names = [spec.name for spec in grid(args)]
    per_mode = ["k4", "topp0.8-kmax8", "topp0.9-kmax8", "budget0.01-kmax8"]
    assert names == [
        name
        for seed in (0, 1)
        for name in (
            f"soft-seed{seed}",
            *(f"{mode}-{k}-ste-seed{seed}" for mode in ("hard", "hybrid") for k in per_mode),
        )
    ]
    top_p = grid(args)[2]
    assert (top_p.k, top_p.k_rule, top_p.top_p, top_p.k_penalty) == (8, "top_p", 0.8, None)


def test_adaptive_rules_default_to_the_presets_settings():
    specs = grid(tiny_grid(Path("out"), Path("data"), k_rule=["top_p", "budget"]))
    assert [spec.name for spec in specs] == [
        "hybrid-topp0.9-kmax16-ste-seed0",
        "hybrid-budget0-kmax16-ste-seed0",
    ]


def test_without_the_k_rule_the_grid_is_as_before():
    specs = grid(tiny_grid(Path("out"), Path("data"), modes=["soft", "hybrid"], k=[2, 4]))
    assert [spec.name for spec in specs] == [
        "soft-seed0",
        "hybrid-k2-ste-seed0",
        "hybrid-k4-ste-seed0",
    ]
    assert {spec.k_rule for spec in specs} == {"fixed"}


@pytest.fixture(scope="module")
def adaptive_ablation(tmp_path_factory) -> Path:
    """A tiny ablation of hybrid runs: fixed k 4 and 8, top-p 0.5 and a learned budget, both
    with k_max 8."""
    root = tmp_path_factory.mktemp("k_rule")
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(root / "data", train=30, val=8, test=8, config=config, progress=False)
    args = tiny_grid(
        root / "out",
        root / "data",
        k=[4, 8],
        k_rule=["fixed", "top_p", "budget"],
        top_p=[0.5],
        k_penalty=[0.01],
        k_max=8,
    )
    return run_ablation(args)


def test_results_have_the_rule_columns(adaptive_ablation):
    rows = {row["name"]: row for row in read_results(adaptive_ablation / RESULTS_FILE)}
    assert set(rows) == {
        "hybrid-k4-ste-seed0",
        "hybrid-k8-ste-seed0",
        "hybrid-topp0.5-kmax8-ste-seed0",
        "hybrid-budget0.01-kmax8-ste-seed0",
    }
    fixed, top_p = rows["hybrid-k4-ste-seed0"], rows["hybrid-topp0.5-kmax8-ste-seed0"]
    assert (fixed["k_rule"], fixed["top_p"], fixed["k_penalty"]) == ("fixed", None, None)
    assert (top_p["k"], top_p["k_rule"], top_p["top_p"], top_p["k_penalty"]) == (
        8,
        "top_p",
        0.5,
        None,
    )
    budget = rows["hybrid-budget0.01-kmax8-ste-seed0"]
    assert (budget["k_rule"], budget["k_penalty"]) == ("budget", 0.01)
    config = json.loads((adaptive_ablation / RUNS_DIR / top_p["name"] / "config.json").read_text())
    assert (config["fusion_k_rule"], config["fusion_top_p"], config["fusion_k_max"]) == (
        "top_p",
        0.5,
        8,
    )


def test_each_run_writes_its_mean_k_and_distribution_per_question_type(adaptive_ablation):
    rows = {row["name"]: row for row in read_results(adaptive_ablation / RESULTS_FILE)}
    name = "hybrid-topp0.5-kmax8-ste-seed0"
    row = rows[name]
    regions = json.loads((adaptive_ablation / RUNS_DIR / name / REGIONS_FILE).read_text())
    histogram, by_type = regions["histogram"], regions["histogram_by_type"]
    assert sum(histogram.values()) == row["questions"]
    assert all(1 <= int(k) <= 8 for k in histogram)
    assert sum(sum(counts.values()) for counts in by_type.values()) == row["questions"]
    for kind, counts in by_type.items():
        mean = sum(int(k) * n for k, n in counts.items()) / sum(counts.values())
        assert row[f"regions_used_{kind}"] == pytest.approx(mean)
        assert row[f"regions_spread_{kind}"] >= 0
    assert 1 <= row["regions_used"] <= 8
    fixed = rows["hybrid-k4-ste-seed0"]  # a fixed k: every question keeps exactly k
    assert (fixed["regions_used"], fixed["regions_spread"]) == (4, 0)


def test_flops_follow_the_regions_each_question_kept(adaptive_ablation):
    rows = {row["name"]: row for row in read_results(adaptive_ablation / RESULTS_FILE)}
    top_p, k4, k8 = (
        rows[name]
        for name in ("hybrid-topp0.5-kmax8-ste-seed0", "hybrid-k4-ste-seed0", "hybrid-k8-ste-seed0")
    )
    assert k4["fusion_flops"] < k8["fusion_flops"]
    # counted one question at a time, each on its own k slots, not on k_max
    if top_p["regions_used"] < 8:
        assert top_p["fusion_flops"] < k8["fusion_flops"]
    if top_p["regions_used"] > 4:
        assert top_p["fusion_flops"] > k4["fusion_flops"]


def test_report_table_and_plot_cover_the_adaptive_runs(adaptive_ablation):
    report = (adaptive_ablation / REPORT_FILE).read_text()
    adaptive = section(report, "Adaptive k")
    assert "**At equal mean cost**" in adaptive
    assert "- hybrid top_p=0.5 k_max=8 ste: mean k " in adaptive
    assert "k_max = 8)" in adaptive
    assert "**Regions per question type**" in adaptive
    assert "so these FLOPs follow the kept k" in report
    table = (adaptive_ablation / TABLE_FILE).read_text()
    assert "| mode | k | k rule | estimator | seeds |" in table
    assert "| hybrid | 8 | top_p=0.5 | ste | 1 |" in table
    assert "## Regions used (mean k) per question type" in table
    plot = adaptive_ablation / PLOT_FILES["accuracy_vs_mean_k"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_results(path: Path, configurations: dict[tuple, dict[str, list[float]]]) -> Path:
    """A results.csv with one row per seed from ``{(mode, k, k_rule, setting): {column:
    per-seed values}}``, the setting being top_p or the budget's k_penalty (None for fixed)."""
    rows = []
    for (mode, k, rule, setting), columns in configurations.items():
        top_p, penalty = (setting, None) if rule == "top_p" else (None, setting)
        for seed in range(len(columns["accuracy"])):
            spec = RunSpec(mode, k, "ste", seed, k_rule=rule, top_p=top_p, k_penalty=penalty)
            row = {"name": spec.name, "mode": mode, "k": k, "k_rule": rule, "top_p": top_p}
            row |= {"k_penalty": penalty, "estimator": "ste", "seed": seed}
            rows.append(row | {column: values[seed] for column, values in columns.items()})
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(c for r in rows for c in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fixed(k: int, accuracy: list[float]) -> dict[str, list[float]]:
    """Per-seed columns of a fixed-k configuration: every question keeps k regions."""
    kept = [float(k)] * len(accuracy)
    columns = {"accuracy": accuracy, "regions_used": kept, "fusion_flops": [k * 1e5] * 3}
    return columns | {f"regions_used_{kind}": kept for kind in ("count", "compare", "colour")}


def adaptive(accuracy: list[float], mean_k: list[float], **families: list[float]) -> dict:
    """Per-seed columns of an adaptive-k configuration with k_max 8."""
    return {
        "accuracy": accuracy,
        "regions_used": mean_k,
        "fusion_flops": [8e5] * 3,
        **{f"regions_used_{kind}": values for kind, values in families.items()},
        **{f"regions_spread_{kind}": [1.5] * 3 for kind in families},
    }


# Fixed k 4 and 8 at 0.50 and 0.60 (seeds 0..2 add 0.01 each): at a mean k of 6 fixed k is
# worth 0.55, 0.56, 0.57. Top-p 0.9 beats that, top-p 0.8 ties with it, the budget is worse,
# and top-p 0.5 keeps fewer regions than any fixed k of the grid.
CONSTRUCTED = {
    ("hybrid", 4, "fixed", None): fixed(4, [0.50, 0.51, 0.52]),
    ("hybrid", 8, "fixed", None): fixed(8, [0.60, 0.61, 0.62]),
    ("hybrid", 8, "top_p", 0.9): adaptive(
        [0.70, 0.71, 0.72],
        [6.0, 6.0, 6.0],
        count=[7.9, 8.0, 7.8],
        compare=[6.0, 6.1, 5.9],
        colour=[3.0, 3.1, 2.9],
    ),
    ("hybrid", 8, "top_p", 0.8): adaptive(
        [0.52, 0.60, 0.56],
        [6.0, 6.0, 6.0],
        count=[4.0, 5.0, 3.0],
        compare=[2.0, 3.0, 4.0],
        colour=[3.5, 3.0, 3.6],
    ),
    ("hybrid", 8, "budget", 0.01): adaptive(
        [0.40, 0.41, 0.42],
        [6.0, 6.0, 6.0],
        count=[2.0, 2.1, 1.9],
        compare=[3.0, 3.1, 2.9],
        colour=[5.0, 5.1, 4.9],
    ),
    ("hybrid", 8, "top_p", 0.5): adaptive([0.45, 0.46, 0.47], [2.0, 2.5, 3.0]),
}


@pytest.fixture
def report(tmp_path) -> str:
    results = write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)
    return section(write_report(results, tmp_path / REPORT_FILE, SETTINGS), "Adaptive k")


def line(report: str, label: str) -> str:
    """The first line of ``report`` that starts with ``- label:``."""
    return next(text for text in report.splitlines() if text.startswith(f"- {label}:"))


def test_adaptive_k_that_is_more_accurate_at_the_same_mean_k_beats_fixed_k(report):
    text = line(report, "hybrid top_p=0.9 k_max=8 ste")
    assert text.startswith(
        "- hybrid top_p=0.9 k_max=8 ste: mean k 6.0 ± 0.0 (fusion MFLOP/q 0.800 ± 0.000; "
        "k_max = 8); accuracy 0.710 ± 0.010 vs 0.560 ± 0.010 for fixed k at the "
        "same mean k (Welch's t-test, p = "
    )
    assert text.endswith("): **adaptive k beats fixed k**.")


def test_adaptive_k_within_the_noise_of_fixed_k_is_a_tie(report):
    text = line(report, "hybrid top_p=0.8 k_max=8 ste")
    assert "accuracy 0.560 ± 0.040 vs 0.560 ± 0.010" in text
    assert text.endswith("**a tie, within the noise**.")


def test_adaptive_k_below_fixed_k_at_the_same_mean_k_is_worse(report):
    text = line(report, "hybrid budget=0.01 k_max=8 ste")
    assert text.endswith("**adaptive k is worse than fixed k**.")


def test_a_mean_k_outside_the_fixed_k_of_the_grid_is_not_compared(report):
    text = line(report, "hybrid top_p=0.5 k_max=8 ste")
    assert "**not compared**: its mean k is not within the fixed k of the grid" in text
    assert "(fixed k of the same mode and estimator: 4, 8)" in text


def test_the_verdict_counts_each_equal_cost_comparison(report):
    row = (
        "| adaptive k is at least as accurate as fixed k at the same mean k (accuracy) | mixed "
        "| 1 | 1 | 0 | 1 |"  # beats holds, a tie agrees with "not lower", the budget is worse
    )
    assert row in report


def test_counting_and_comparison_questions_against_colour_ones(report):
    beats = line(report, "hybrid top_p=0.9 k_max=8 ste")  # the first: the equal-cost line
    families = [text for text in report.splitlines() if text.startswith("- hybrid top_p=0.9")]
    assert families[0] == beats
    assert families[1].startswith(
        "- hybrid top_p=0.9 k_max=8 ste: count − colour = +4.9 regions (7.9 ± 0.1 vs 3.0 ± 0.1; "
        "Welch's t-test, p = "
    )
    assert "**counting questions take more regions**" in families[1]
    assert "compare − colour = +3.0 regions" in families[1]
    assert "**comparison questions take more regions**" in families[1]
    tie = [text for text in report.splitlines() if text.startswith("- hybrid top_p=0.8")][1]
    assert tie.count("**a tie, within the noise**") == 2
    fewer = [text for text in report.splitlines() if text.startswith("- hybrid budget=0.01")][1]
    assert "**counting questions take fewer regions**" in fewer
    assert "**comparison questions take fewer regions**" in fewer
    assert (
        "| counting questions keep more regions than colour questions (mean k) | mixed |" in report
    )


def test_the_table_of_regions_per_question_type_shows_the_spread_over_questions(report):
    assert "| configuration | count | compare | colour |" in report
    assert (
        "| hybrid top_p=0.9 k_max=8 ste | 7.9 ± 0.1 (1.5) | 6.0 ± 0.1 (1.5) | 3.0 ± 0.1 (1.5) |"
        in report
    )


def test_the_fixed_k_reference_is_interpolated_seed_by_seed(tmp_path):
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)))
    top_p = next(entry for entry in stats if entry.get("top_p") == 0.5)
    curve = fixed_curve(top_p, stats)
    assert [entry["k"] for entry in curve] == [4, 8]
    moved = {**top_p, "values": {**top_p["values"], "regions_used": (5.0, 6.0, 7.0)}}
    assert equal_cost_accuracy(moved, curve) == pytest.approx((0.525, 0.56, 0.595))
    assert equal_cost_accuracy(top_p, curve) is None  # a mean k of 2 is below k = 4


def test_the_fixed_k_reference_is_placed_by_the_regions_each_fixed_run_used(tmp_path):
    # Two hops: each fixed run's selections together cover more than its k.
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)))
    top_p = next(entry for entry in stats if entry.get("top_p") == 0.5)
    curve = [
        {**entry, "values": {**entry["values"], "regions_used": (2.0 * entry["k"],) * 3}}
        for entry in fixed_curve(top_p, stats)
    ]
    at_eight = {**top_p, "values": {**top_p["values"], "regions_used": (8.0, 8.0, 8.0)}}
    below = {**top_p, "values": {**top_p["values"], "regions_used": (5.0, 6.0, 7.0)}}
    lowest = curve[0]["values"]["accuracy"]
    assert equal_cost_accuracy(at_eight, curve) == pytest.approx(lowest)
    assert equal_cost_accuracy(below, curve) is None  # below the 8 regions that k = 4 used


def test_an_adaptive_rule_is_its_own_configuration_beside_fixed_k_max(tmp_path):
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)))
    at_eight = [
        (entry["k_rule"], entry["top_p"], entry["k_penalty"]) for entry in stats if entry["k"] == 8
    ]
    assert at_eight == [
        ("fixed", None, None),
        ("top_p", 0.9, None),
        ("top_p", 0.8, None),
        ("budget", None, 0.01),
        ("top_p", 0.5, None),
    ]


def test_results_without_the_rule_columns_read_as_fixed_k(tmp_path):
    results = tmp_path / RESULTS_FILE
    results.write_text("name,mode,k,estimator,seed,accuracy\nhard-k4-ste-seed0,hard,4,ste,0,0.5\n")
    row = read_results(results)[0]
    assert (row["k_rule"], row["top_p"], row["k_penalty"]) == ("fixed", None, None)
    assert "Adaptive k" not in write_report(results, tmp_path / REPORT_FILE, SETTINGS)


def test_accuracy_vs_mean_k_draws_fixed_k_as_a_line_and_adaptive_k_as_points(tmp_path):
    stats = aggregate(read_results(write_results(tmp_path / RESULTS_FILE, CONSTRUCTED)))
    figure = plot_accuracy_vs_mean_k(stats, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = {
        container.get_label(): (
            list(container.lines[0].get_xdata()),
            list(container.lines[0].get_ydata()),
        )
        for container in figure.axes[0].containers
    }
    assert drawn["hybrid ste (fixed k)"][0] == [4, 8]
    assert drawn["hybrid ste (fixed k)"][1] == pytest.approx([0.51, 0.61])
    assert drawn["hybrid top_p=0.9 k_max=8 ste"] == ([6.0], [pytest.approx(0.71)])
    assert drawn["hybrid top_p=0.5 k_max=8 ste"][0] == [pytest.approx(2.5)]
    assert len(drawn) == 1 + 4
