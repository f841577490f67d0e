"""The GPU check: training under bf16 and fp16, synchronised evaluation latency, benchmarks.

    python scripts/device_check.py --out DIR            # on a GPU machine, about 4 minutes
    python scripts/device_check.py --smoke --out DIR    # the same steps in seconds, on a CPU

For the default preset and the larger ``full`` one, under bf16 and under fp16, it trains a few
epochs (a few hundred steps) on freshly generated scenes and records whether the loss fell,
questions per second, peak GPU memory and what precision the run chose; then it scores the
last model with ``vqa.evaluation.evaluate`` (latency synchronised with the device), profiles
one epoch of the default preset (host time, data loading, GPU kernel time), times its training
step alone at batch 48, 192 and 768, times ``HybridAttention`` with
``scripts/bench_attention.py`` and the whole model with the selection inside the encoder with
``scripts/bench_encoder.py``. A stage that fails is recorded with its error and the others
still run; the JSON in ``DIR/device_check.json`` is rewritten after every stage, so a run cut
short keeps what it measured. ``--stages`` runs a part. It prints the JSON and exits non-zero
if a stage failed. ``scripts/device_check.sh`` runs it on the device machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

from vqa.data.sources import load_vqa_dataset
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.evaluation import evaluate
from vqa.files import write_json
from vqa.inference import load_model
from vqa.machine import machine
from vqa.presets import get_preset
from vqa.run_setup import setup_run
from vqa.training import TrainingArguments, make_accelerator, resolve_precision, train

PACKAGES = ("torch", "transformers", "accelerate", "timm", "datasets", "pyarrow")


def peak_memory_mb() -> float | None:
    """The peak GPU memory allocated since the last reset, in MiB (None on a CPU)."""
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def train_check(data: Path, preset: str, precision: str, run: Path, epochs: int) -> dict:
    """``epochs`` of ``preset`` under ``precision``: loss trend, speed, memory, precision used."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = train(
        TrainingArguments(
            output=str(run),
            data=str(data),
            preset=preset,
            mixed_precision=precision,
            epochs=epochs,
            progress=False,
        )
    )
    history = summary["history"]
    steps = [loss for record in history for loss in record["step_losses"]]
    losses = [loss for loss in steps if loss == loss]  # finite ones
    window = max(1, len(losses) // 10)
    first, last = statistics.mean(losses[:window]), statistics.mean(losses[-window:])
    seconds = sum(record["train_seconds"] for record in history)
    questions = sum(record["train_questions"] for record in history)
    return {
        "preset": preset,
        "requested_precision": precision,
        "mixed_precision": summary["mixed_precision"],
        "device": summary["device"],
        "epochs": epochs,
        "steps": len(steps),
        "skipped_steps": sum(record["skipped_steps"] for record in history),
        "first_loss": round(first, 4),
        "last_loss": round(last, 4),
        "loss_fell": last < first,
        "questions_per_second": round(questions / seconds, 1),
        "train_seconds": round(seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "val_accuracy": history[-1].get("val_accuracy"),
        "peak_memory_mb": peak_memory_mb(),
    }


def profile_check(data: Path, preset: str, run: Path) -> dict:
    """One epoch of ``preset`` under ``torch.profiler``: where a training step's time goes.

    Returns the wall seconds, the host seconds spent waiting for batches (the DataLoader's
    ``__next__``), the seconds the GPU ran kernels, and the 15 operators that took the most host
    time, so a host-bound step (the GPU idle between small kernels) shows as kernel seconds far
    below the wall seconds.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        train_check(data, preset, "bf16", run, epochs=1)
    wall = time.perf_counter() - start
    events = profiler.key_averages()
    loading = [event for event in events if event.key.startswith("enumerate(DataLoader)")]
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:15]
    return {
        "preset": preset,
        "wall_seconds": round(wall, 1),
        "data_loading_seconds": round(sum(e.self_cpu_time_total for e in loading) / 1e6, 3),
        "kernel_seconds": round(sum(e.self_device_time_total for e in events) / 1e6, 2),
        "host_operator_seconds": round(sum(e.self_cpu_time_total for e in events) / 1e6, 2),
        "top_host_operators": [
            {
                "name": event.key[:80],
                "calls": event.count,
                "self_host_ms": round(event.self_cpu_time_total / 1e3, 1),
                "self_kernel_ms": round(event.self_device_time_total / 1e3, 1),
            }
            for event in top
        ],
    }


def synchronize() -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_throughput(data: Path, preset: str, batch: int, run: Path, steps: int) -> dict:
    """Questions per second of ``preset``'s training step (forward, backward, AdamW) under bf16
    at ``batch`` questions, on batches already on the device: the model's own throughput, without
    data loading or the training loop's bookkeeping. The median of ``steps`` timed steps."""
    args = TrainingArguments(
        output=str(run), data=str(data), preset=preset, mixed_precision="bf16", batch_size=batch
    )
    accelerator = make_accelerator(args)
    setup = setup_run(args, get_preset(preset), accelerator)
    model, optimizer = accelerator.prepare(setup.model, setup.optimizer)
    batches = [inputs for inputs, _ in setup.loader][: max(1, len(setup.loader) - 1)]  # full ones
    batches = [
        {
            key: value.to(accelerator.device) if torch.is_tensor(value) else value
            for key, value in b.items()
        }
        for b in batches
    ]
    model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + 3):  # three warm-up steps
        synchronize()
        start = time.perf_counter()
        output = model(**batches[step % len(batches)])
        accelerator.backward(output.loss)
        optimizer.step()
        optimizer.zero_grad()
        synchronize()
        times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times[3:])
    return {
        "batch": batch,
        "ms_per_step": round(step_seconds * 1e3, 2),
        "questions_per_second": round(batch / step_seconds, 1),
        "peak_memory_mb": peak_memory_mb(),
    }


def stage(result: dict, name: str, out: Path, work: Callable[[], object]) -> None:
    """Run ``work``, store what it returns (or its error) under ``result[name]`` with its
    seconds, and rewrite ``out/device_check.json``."""
    start = time.perf_counter()
    try:
        result[name] = work()
    except Exception as error:  # a device check reports a failing stage and goes on
        result[name] = {"error": repr(error), "traceback": traceback.format_exc()[-3000:]}
        result.setdefault("failed", []).append(name)
    result.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - start, 1)
    write_json(out / "device_check.json", result)


def run_benchmark(script: str, out: Path, options: list[str]) -> dict:
    """Run ``scripts/SCRIPT`` on the GPU (when there is one); its JSON result."""
    command = [sys.executable, f"scripts/{script}", "--out", str(out), *options]
    if torch.cuda.is_available():
        command += ["--device", "cuda"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


STAGES = ("train", "evaluation", "profile", "throughput", "attention", "encoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="what to run (all)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # 600 scenes with up to 10 questions each: about 2700 training questions, so 4 epochs are
    # about 225 steps of the default preset. The device's CPU wrote a scene in about 75 ms on
    # 2026-12-04 (2500 scenes took 208 s), so more scenes would not leave time for the rest.
    scenes, epochs, presets = (40, 1, ["tiny"]) if args.smoke else (600, 4, ["default", "full"])
    batches = [4, 16] if args.smoke else [48, 192, 768]
    result: dict = {
        "machine": machine(),
        "packages": {name: version(name) for name in PACKAGES},
        "auto_precision": resolve_precision("auto"),
        "smoke": args.smoke,
    }
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "scenes"

        def generate() -> dict:
            config = SyntheticConfig(questions_per_image=10)
            write_synthetic_dataset(
                data, train=scenes, val=scenes // 10, test=0, seed=0, progress=False, config=config
            )
            return {"scenes": scenes, "questions_per_image": config.questions_per_image}

        def evaluation() -> dict:
            model, processor = load_model(Path(scratch) / f"{presets[-1]}-bf16")
            rows = load_vqa_dataset(data, ["val"])["val"]
            scores = evaluate(model, processor, rows, batch_size=256, progress=False)
            keys = ("questions", "accuracy", "ms_per_question")
            return {"device": str(model.device), **{key: scores[key] for key in keys}}

        if {"train", "evaluation", "profile", "throughput"} & set(args.stages):
            stage(result, "data", args.out, generate)
        if "train" in args.stages or "evaluation" in args.stages:  # evaluation scores a run
            for preset in presets:
                for precision in ("bf16", "fp16"):
                    run = Path(scratch) / f"{preset}-{precision}"
                    stage(
                        result,
                        f"train {preset} {precision}",
                        args.out,
                        lambda preset=preset, precision=precision, run=run: train_check(
                            data, preset, precision, run, epochs
                        ),
                    )
        if "evaluation" in args.stages:
            stage(result, "evaluation", args.out, evaluation)
        if "profile" in args.stages:
            stage(
                result,
                "profile",
                args.out,
                lambda: profile_check(data, presets[0], Path(scratch) / "profile"),
            )
        if "throughput" in args.stages:
            stage(
                result,
                "throughput",
                args.out,
                lambda: [
                    step_throughput(data, presets[0], batch, Path(scratch) / f"step-{batch}", 10)
                    for batch in batches
                ],
            )
    if "attention" in args.stages:
        attention_options = ["--n", "64", "256"] if args.smoke else ["--repeats", "20"]
        stage(
            result,
            "attention",
            args.out,
            lambda: run_benchmark(
                "bench_attention.py", args.out / "bench_attention.json", attention_options
            )["results"],
        )
    if "encoder" in args.stages:
        encoder_options = (
            ["--only", "default 64px", "--repeats", "2"]
            if args.smoke
            else ["--repeats", "5", "--batch", "1", "32", "256"]
        )
        stage(
            result,
            "encoder",
            args.out,
            lambda: run_benchmark(
                "bench_encoder.py", args.out / "bench_encoder.json", encoder_options
            )["cases"],
        )
    print(json.dumps(result, indent=2))
    if result.get("failed"):
        sys.exit(f"device check: failed stages: {', '.join(result['failed'])}")


if __name__ == "__main__":
    main()
