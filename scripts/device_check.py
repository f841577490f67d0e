"""The GPU check: training under bf16 and fp16, synchronised evaluation latency, attention timing.

    python scripts/device_check.py --out DIR            # on a GPU machine, about 5 minutes
    python scripts/device_check.py --smoke --out DIR    # the same steps in seconds, on a CPU

For the default preset and the larger ``full`` one, under bf16 and under fp16, it trains one
epoch (a few hundred steps) on freshly generated scenes and records whether the loss fell,
questions per second, peak GPU memory and what precision the run chose; then it scores the
last model with ``vqa.evaluation.evaluate`` (latency synchronised with the device) and times
``HybridAttention`` with ``scripts/bench_attention.py``. It prints one JSON object and writes
it to ``DIR/device_check.json``. ``scripts/device_check.sh`` runs it on the device machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vqa.data.sources import load_vqa_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.evaluation import evaluate
from vqa.files import write_json
from vqa.inference import load_model
from vqa.machine import machine
from vqa.training import TrainingArguments, train


def peak_memory_mb() -> float | None:
    """The peak GPU memory allocated since the last reset, in MiB (None on a CPU)."""
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def train_check(data: Path, preset: str, precision: str, run: Path) -> dict:
    """One epoch of ``preset`` under ``precision``: loss trend, speed, memory, precision used."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = train(
        TrainingArguments(
            output=str(run),
            data=str(data),
            preset=preset,
            mixed_precision=precision,
            epochs=1,
            progress=False,
        )
    )
    (record,) = summary["history"]
    losses = [loss for loss in record["step_losses"] if loss == loss]  # finite ones
    window = max(1, len(losses) // 10)
    first, last = statistics.mean(losses[:window]), statistics.mean(losses[-window:])
    return {
        "preset": preset,
        "requested_precision": precision,
        "mixed_precision": summary["mixed_precision"],
        "device": summary["device"],
        "steps": len(record["step_losses"]),
        "skipped_steps": record["skipped_steps"],
        "first_loss": round(first, 4),
        "last_loss": round(last, 4),
        "loss_fell": last < first,
        "questions_per_second": round(record["train_questions"] / record["train_seconds"], 1),
        "train_seconds": round(record["train_seconds"], 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": record.get("val_accuracy"),
        "peak_memory_mb": peak_memory_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script")
    args = parser.parse_args()
    scenes, presets = (40, ["tiny"]) if args.smoke else (4000, ["default", "full"])
    result: dict = {"machine": machine(), "smoke": args.smoke}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "scenes"
        start = time.perf_counter()
        write_synthetic_dataset(
            data,
            train=scenes,
            val=scenes // 10,
            test=0,
            seed=0,
            progress=False,
            config=SyntheticConfig(questions_per_image=6),
        )
        result["data_seconds"] = round(time.perf_counter() - start, 1)
        result["training"] = [
            train_check(data, preset, precision, Path(scratch) / f"{preset}-{precision}")
            for preset in presets
            for precision in ("bf16", "fp16")
        ]
        model, processor = load_model(Path(scratch) / f"{presets[-1]}-bf16")
        rows = load_vqa_dataset(data, ["val"])["val"]
        scores = evaluate(model, processor, rows, batch_size=256, progress=False)
        result["evaluation"] = {
            key: scores[key] for key in ("questions", "accuracy", "ms_per_question")
        }
    attention = args.out / "bench_attention.json"
    command = [sys.executable, "scripts/bench_attention.py", "--out", str(attention)]
    command += ["--n", "64", "256"] if args.smoke else ["--repeats", "20"]
    if torch.cuda.is_available():
        command += ["--device", "cuda"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    result["attention"] = json.loads(attention.read_text())["results"]
    write_json(args.out / "device_check.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
