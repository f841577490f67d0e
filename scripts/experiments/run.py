"""Run training experiments, one JSON config per experiment; write one JSON result per config.

    python scripts/experiments/run.py scripts/experiments/configs/*.json \
        --out docs/results/experiments --questions 135000
    python scripts/experiments/run.py --table docs/results/experiments   # the README table
    python scripts/experiments/run.py --compare "A/seed*.json" "B/seed*.json"   # Welch's test
    python scripts/experiments/run.py --average-vs-raw "A/seed*.json"   # runs with ema_decay

A config names a preset and overrides of its training arguments and embedded data::

    {"description": "...", "preset": "default",
     "training": {"pointing_loss_weight": 0}, "synthetic": {"questions_per_image": 3}}

Every experiment trains on the embedded scenes for the same number of training questions
(``--questions``, rounded up to whole epochs), so the results compare sample efficiency; the
seconds are reported beside it, with the machine's measured matmul rate. Validation accuracy is
taken after every epoch. ``--threads`` sets torch's threads per run, so that two runs can share
a 2-core machine as the README's table was measured. ``--runs DIR`` keeps each trained model
(``DIR/<config>``, a ``vqa train`` run directory) for later probes, e.g.
``scripts/probe_regions.py``. ``--data DIR`` trains on a local-format dataset instead (for
example ``scripts/prepare_easy_vqa.py``'s); a config's ``synthetic`` sizes then do not apply.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from vqa.ablation import welch_test
from vqa.cache import synthetic_dataset
from vqa.files import write_json
from vqa.machine import machine
from vqa.presets import get_preset
from vqa.training import TrainingArguments, learning_curve, train

FAMILIES = ("colour", "shape", "exist", "count", "relate", "compare")
# The trained model's architecture, recorded because a preset's defaults change over time
# (the default preset's fusion_hops went from 1 to 2).
RECORDED_MODEL_FIELDS = (
    "fusion_mode",
    "fusion_estimator",
    "fusion_k",
    "fusion_heads",
    "fusion_hops",
    "fusion_sink",
)


def load_config(path: Path) -> dict:
    """A config file, with its name (the file's stem) and the keys it may leave out."""
    config = json.loads(path.read_text())
    unknown = set(config) - {"description", "preset", "training", "synthetic"}
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)}")
    return {"name": path.stem, "training": {}, "synthetic": {}, **config}


def data_dir(config: dict) -> Path:
    """The embedded scenes of the config's preset with its overrides (generated once, cached)."""
    sizes = {**get_preset(config["preset"]).synthetic, **config["synthetic"]}
    return synthetic_dataset(**sizes, progress=False)


def run_experiment(
    config: dict, questions: int, seed: int, run_dir: Path, data: Path | None = None
) -> dict:
    """Train one config for about ``questions`` training questions, on ``data`` (default: the
    config's embedded scenes); summarise every epoch."""
    source = "embedded scenes" if data is None else str(data)
    data = data or data_dir(config)
    with (data / "train.jsonl").open() as lines:
        per_epoch = sum(1 for _ in lines)
    epochs = math.ceil(questions / per_epoch)
    arguments = TrainingArguments(
        output=str(run_dir),
        data=str(data),
        preset=config["preset"],
        epochs=epochs,
        seed=seed,
        progress=False,
        **config["training"],
    )
    summary = train(arguments)
    curve = learning_curve(summary["history"])
    return {
        "name": config["name"],
        "description": config["description"],
        "preset": config["preset"],
        "training": config["training"],
        "synthetic": config["synthetic"],
        "model": {name: summary["config"][name] for name in RECORDED_MODEL_FIELDS},
        "data": source,
        "seed": seed,
        "train_questions_per_epoch": per_epoch,
        "curve": curve,
        "final": curve[-1],
    }


def markdown_table(results_dir: Path) -> str:
    """The table of the README: the last epoch of every result in ``results_dir``."""
    header = ["experiment", "questions", "accuracy", *FAMILIES, "pointing", "train s", "GFLOP/s"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        final, by_type = result["final"], result["final"]["val_accuracy_by_type"] or {}
        cells = [
            f"{result['description']} (`{path.name}`)",
            f"{final['questions']:,}",
            f"{final['val_accuracy']:.3f}",
            *(f"{by_type[family]:.2f}" if family in by_type else "" for family in FAMILIES),
            f"{final['val_pointing_accuracy']:.2f}",
            f"{final['train_seconds']:.0f}",
            f"{result['machine']['matmul_gflops']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final_accuracies(pattern: str) -> list[float]:
    """The final validation accuracy of every result file that ``pattern`` (a glob) matches."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"--compare: no result file matches {pattern!r}")
    return [json.loads(Path(path).read_text())["final"]["val_accuracy"] for path in paths]


def compare(subject: str, reference: str) -> dict:
    """Each side's final accuracies with their mean and standard deviation (None for a single
    result), and Welch's t-test of subject against reference."""
    sides = {"subject": final_accuracies(subject), "reference": final_accuracies(reference)}
    summary = {
        name: {
            "files": pattern,
            "accuracies": values,
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
        for (name, values), pattern in zip(sides.items(), (subject, reference), strict=True)
    }
    test = welch_test(sides["subject"], sides["reference"])
    summary["test"] = {"name": test.test, "p_value": test.p_value, "verdict": test.direction}
    return summary


def average_against_raw(pattern: str) -> dict:
    """For runs trained with ``ema_decay``: per file and epoch the weight average's validation
    accuracy against the trained weights' (``val_raw_accuracy``) in the same run, and the
    paired two-sided t-test of the final epochs (scipy's ``ttest_rel``; None for one run)."""
    from scipy.stats import ttest_rel

    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"--average-vs-raw: no result file matches {pattern!r}")
    runs = []
    for path in paths:
        curve = json.loads(Path(path).read_text())["curve"]
        if "val_raw_accuracy" not in curve[-1]:
            raise SystemExit(f"--average-vs-raw: {path} was trained without ema_decay")
        runs.append(
            {
                "file": path,
                "average": [point["val_accuracy"] for point in curve],
                "raw": [point["val_raw_accuracy"] for point in curve],
            }
        )
    average, raw = [run["average"][-1] for run in runs], [run["raw"][-1] for run in runs]
    differences = [a - b for a, b in zip(average, raw, strict=True)]
    p_value = float(ttest_rel(average, raw).pvalue) if len(runs) > 1 else math.nan
    return {
        "runs": runs,
        "final_difference_mean": statistics.fmean(differences),
        "final_differences": differences,
        # None for one run, or differences all equal (no variance to test against)
        "test": {
            "name": "paired t-test (two-sided)",
            "p_value": None if math.isnan(p_value) else p_value,
        },
    }


def result_path(out: Path, name: str, seed: int) -> Path:
    """``OUT/NAME.json``, unless that holds another seed's result (runs of several seeds into
    one ``--out``): then ``OUT/NAME-seedSEED.json``, so that no seed overwrites another."""
    path = out / f"{name}.json"
    if path.is_file() and json.loads(path.read_text()).get("seed") != seed:
        return out / f"{name}-seed{seed}.json"
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="config JSON files")
    parser.add_argument("--out", type=Path, default=Path("docs/results/experiments"))
    parser.add_argument("--questions", type=int, default=135_000, help="training questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--table", type=Path, metavar="DIR", help="print the table of DIR")
    parser.add_argument(
        "--data", type=Path, help="a local-format dataset (default: the config's embedded scenes)"
    )
    parser.add_argument(
        "--runs", type=Path, help="keep each trained run in RUNS/<config> (default: deleted)"
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="Welch's test of two globs of results"
    )
    parser.add_argument(
        "--average-vs-raw",
        metavar="GLOB",
        help="runs trained with ema_decay: the weight average against the trained weights",
    )
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.table))
        return
    if args.compare:
        print(json.dumps(compare(*args.compare), indent=1))
        return
    if args.average_vs_raw:
        print(json.dumps(average_against_raw(args.average_vs_raw), indent=1))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [load_config(path) for path in args.configs]  # all checked before any training
    for config in configs:
        with tempfile.TemporaryDirectory() as scratch:
            run_dir = args.runs / config["name"] if args.runs else Path(scratch)
            result = run_experiment(config, args.questions, args.seed, run_dir, args.data)
        result["machine"] = machine()
        path = result_path(args.out, config["name"], args.seed)
        write_json(path, result)
        print(f"wrote {path}")
        print(json.dumps(result["final"]))


if __name__ == "__main__":
    main()
