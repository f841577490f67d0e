"""Train a preset on the embedded dataset once per fusion mode; print one JSON object.

    python scripts/bench_train.py                       # default preset, soft / hard / hybrid
    python scripts/bench_train.py --modes hybrid --mixed-precision bf16

For each mode: val accuracy overall and per question family, pointing accuracy, regions used,
training wall seconds, and training questions per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from vqa.training import TrainingArguments, train


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def bench_mode(mode: str, args: argparse.Namespace, run_dir: Path) -> dict:
    """Train one mode into ``run_dir``; summarise its best epoch."""
    start = time.perf_counter()
    summary = train(TrainingArguments(
        output=str(run_dir), data=args.data, preset=args.preset, mode=mode, epochs=args.epochs,
        seed=args.seed, mixed_precision=args.mixed_precision, progress=False,
    ))
    wall = time.perf_counter() - start
    history = summary["history"]
    best = max(history, key=lambda record: record.get("val_accuracy", -1.0))
    train_seconds = sum(record["train_seconds"] for record in history)
    questions = sum(record["train_questions"] for record in history)
    return {
        "mode": mode,
        "k": summary["config"]["fusion_k"],
        "estimator": summary["config"]["fusion_estimator"],
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "val_accuracy": best.get("val_accuracy"),
        "val_accuracy_by_type": best.get("val_accuracy_by_type"),
        "pointing_accuracy": best.get("val_pointing_accuracy"),
        "regions_used": best.get("val_regions_used"),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "questions_per_second": round(questions / train_seconds, 1),
        "curve": [round(record.get("val_accuracy", float("nan")), 4) for record in history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--modes", default="soft,hard,hybrid")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out or scratch)
        results = [bench_mode(mode, args, root / mode) for mode in args.modes.split(",")]
    print(json.dumps({
        "machine": machine(), "preset": args.preset, "mixed_precision": args.mixed_precision,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
