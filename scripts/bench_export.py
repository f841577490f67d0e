"""PyTorch vs onnxruntime on the CPU: latency of a trained model at batch 1 and batch 32.

Exports ``--model RUN`` with ``vqa.export`` (in the run's fusion mode, or ``--mode`` / ``--k``)
into a temporary directory, then times the PyTorch model (eval, ``torch.inference_mode``) and
an onnxruntime CPU session of the exported graph on the same inputs (one drawn scene and one
question, repeated to the batch size), with the same number of threads. The two take turns
within each repeat, so load that drifts hits them alike; the median is kept. Prints one JSON
object.

    python scripts/bench_export.py --model RUN
    python scripts/bench_export.py --model RUN --mode hard --k 8 --repeats 50 --out RESULT.json

Output: ``{"model", "mode", "k", "threads", "export_seconds", "results": [{"batch_size",
"torch_ms", "onnxruntime_ms", "torch_ms_per_question", "onnxruntime_ms_per_question",
"speedup", "max_abs_logit_difference"}], "machine"}``; ``speedup`` is torch / onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from hybrid_attention import MODES
from vqa.export import export_run
from vqa.files import write_json
from vqa.inference import load_model
from vqa.machine import machine

QUESTION = "what colour is the large circle?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="run or model directory")
    parser.add_argument("--mode", choices=MODES, help="fusion mode (default: the model's)")
    parser.add_argument("--k", type=int, help="regions kept (default: the model's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=20, help="timed runs; the median is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser.parse_args()


def scene() -> Image.Image:
    """A 64-pixel scene like the embedded dataset's: shapes on grey."""
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 30, 30), fill=(220, 30, 30))
    draw.rectangle((38, 36, 52, 50), fill=(30, 70, 230))
    draw.polygon([(12, 54), (20, 40), (28, 54)], fill=(240, 210, 0))
    return image


def time_ms(run: Callable[[], object]) -> float:
    """Wall time of one call of ``run`` in milliseconds (the CPU: no device to wait for)."""
    start = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    import onnxruntime

    args = parse_args()
    torch.set_num_threads(args.threads)
    measured_on = machine("cpu")
    model, processor = load_model(args.model, "cpu")
    model.set_fusion(mode=args.mode, k=args.k)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    results = []
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        exported = export_run(
            args.model, Path(directory) / "onnx", mode=args.mode, fusion={"k": args.k}
        )
        export_seconds = time.perf_counter() - start
        session = onnxruntime.InferenceSession(
            str(exported.model_file), options, providers=["CPUExecutionProvider"]
        )
        for batch_size in args.batch_sizes:
            inputs = processor([scene()] * batch_size, [QUESTION] * batch_size)
            feed = {name: value.numpy() for name, value in inputs.items()}
            run_torch = partial(model, **inputs)
            run_onnx = partial(session.run, ["logits"], feed)
            with torch.inference_mode():
                logits = run_torch().logits
                difference = (logits - torch.from_numpy(run_onnx()[0])).abs().max().item()
                for _ in range(args.warmup):
                    run_torch(), run_onnx()
                times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
                for _ in range(args.repeats):
                    times["torch"].append(time_ms(run_torch))
                    times["onnxruntime"].append(time_ms(run_onnx))
            medians = {name: statistics.median(values) for name, values in times.items()}
            results.append(
                {
                    "batch_size": batch_size,
                    "torch_ms": round(medians["torch"], 3),
                    "onnxruntime_ms": round(medians["onnxruntime"], 3),
                    "torch_ms_per_question": round(medians["torch"] / batch_size, 3),
                    "onnxruntime_ms_per_question": round(medians["onnxruntime"] / batch_size, 3),
                    "speedup": round(medians["torch"] / medians["onnxruntime"], 2),
                    "max_abs_logit_difference": difference,
                }
            )
    result = {
        "model": str(args.model),
        "mode": exported.mode,
        "k": exported.k,
        "threads": args.threads,
        "repeats": args.repeats,
        "export_seconds": round(export_seconds, 1),
        "results": results,
        "machine": measured_on,
    }
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
