"""Train a preset on the embedded dataset once per fusion mode; write and print one JSON object.

    python scripts/bench_train.py                  # default preset: soft, hard, hybrid
    python scripts/bench_train.py --modes hybrid --mixed-precision bf16 --out /tmp/b.json
    python scripts/bench_train.py --table docs/results/bench-train/default.json  # README table

For each mode: validation accuracy after every epoch (overall, per question family, pointing),
training seconds and questions per second, so that accuracy after N training questions sits
beside the time it took. The machine's measured fp32 matmul rate is recorded with the times.
The JSON goes to ``--out`` (default ``docs/results/bench-train/<preset>.json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vqa.files import write_json
from vqa.machine import describe, machine
from vqa.training import TrainingArguments, learning_curve, train

FAMILIES = ("colour", "shape", "exist", "count", "relate", "compare")


def bench_mode(mode: str, args: argparse.Namespace, run_dir: Path) -> dict:
    """Train one mode into ``run_dir``; summarise every epoch and the best one."""
    start = time.perf_counter()
    summary = train(
        TrainingArguments(
            output=str(run_dir),
            data=args.data,
            preset=args.preset,
            mode=mode,
            epochs=args.epochs,
            seed=args.seed,
            mixed_precision=args.mixed_precision,
            progress=False,
        )
    )
    wall = time.perf_counter() - start
    history = summary["history"]
    best = max(history, key=lambda record: record.get("val_accuracy", -1.0))
    train_seconds = sum(record["train_seconds"] for record in history)
    questions = sum(record["train_questions"] for record in history)
    return {
        "mode": mode,
        "k": summary["config"]["fusion_k"],
        "estimator": summary["config"]["fusion_estimator"],
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"],
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "val_accuracy": best.get("val_accuracy"),
        "val_accuracy_by_type": best.get("val_accuracy_by_type"),
        "pointing_accuracy": best.get("val_pointing_accuracy"),
        "regions_used": best.get("val_regions_used"),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "questions_per_second": round(questions / train_seconds, 1),
        "curve": learning_curve(history),
    }


def markdown_table(result: dict) -> str:
    """The README's table of one benchmark result: one row per mode."""
    header = ["mode", "val accuracy", *FAMILIES, "pointing", "train s", "questions/s"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in result["results"]:
        by_type = row["val_accuracy_by_type"] or {}
        name = row["mode"] if row["mode"] == "soft" else f"{row['mode']} ({row['estimator']})"
        cells = [
            name,
            f"{row['val_accuracy']:.3f}",
            *(f"{by_type[family]:.2f}" if family in by_type else "" for family in FAMILIES),
            f"{row['pointing_accuracy']:.2f}",
            f"{row['train_seconds']:.0f}",
            f"{row['questions_per_second']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nMeasured on {describe(result['machine'])}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--modes", default="soft,hard,hybrid")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    parser.add_argument("--runs", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="the JSON result (default: docs/results/...)")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    measured_on = machine()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.runs or scratch)
        results = [bench_mode(mode, args, root / mode) for mode in args.modes.split(",")]
    result = {
        "machine": measured_on,
        "preset": args.preset,
        "data": args.data,
        "seed": args.seed,
        "mixed_precision": args.mixed_precision,
        "results": results,
    }
    write_json(args.out or Path(f"docs/results/bench-train/{args.preset}.json"), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
