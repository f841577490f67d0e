"""Time soft, hard and hybrid HybridAttention: a training step and an inference forward.

For every number of regions N (and every k for hard and hybrid) it times
  - train: forward + backward in training mode (gradients reach the parameters only),
  - infer: forward in eval mode under ``torch.inference_mode()``,
and prints one JSON object: the machine, the settings, and per (mode, n, k) the median time
in milliseconds with its ratio to soft attention at the same N. Soft ignores k (its k is null).
The settings of one N take turns within each repeat, so load that drifts hits them alike.

    python scripts/bench_attention.py   # N 64..4096, k 8 and 32, D 256, batch 32, 4 heads, Lq 1
    python scripts/bench_attention.py --n 256 1024 --k 8 --device cuda --repeats 20
    python scripts/bench_attention.py --out docs/results/bench-attention/cpu.json
    python scripts/bench_attention.py --table docs/results/bench-attention/cpu.json  # README
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hybrid_attention import ESTIMATORS, HybridAttention
from vqa.files import write_json
from vqa.machine import describe, machine, synchronize

Setting = tuple[str, int | None]  # (mode, k); k is None for soft


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, nargs="+", default=[64, 256, 1024, 4096], help="numbers of regions"
    )
    parser.add_argument(
        "--k", type=int, nargs="+", default=[8, 32], help="regions kept in hard and hybrid modes"
    )
    parser.add_argument("--dim", type=int, default=256, help="query, region and inner size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1, help="queries per example (Lq)")
    parser.add_argument(
        "--estimator", default="ste", choices=ESTIMATORS, help="selection estimator when training"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is kept")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    return parser.parse_args()


def markdown_table(result: dict) -> str:
    """The README's table: per N, soft's median ms and the ratio to soft of hard and hybrid."""
    rows: dict[int, dict] = {}
    for row in result["results"]:
        rows.setdefault(row["n"], {})[row["mode"], row["k"]] = row
    settings = sorted({key for by_setting in rows.values() for key in by_setting if key[1]})
    header = ["N", "soft train ms"] + [f"{mode} k={k}" for mode, k in settings]
    header += ["soft infer ms"] + [f"{mode} k={k}" for mode, k in settings]
    lines = ["| " + " | ".join(header) + " |", "|---:" * len(header) + "|"]
    for n, by_setting in sorted(rows.items()):
        cells = [str(n)]
        for phase in ("train", "infer"):
            cells.append(f"{by_setting['soft', None][f'{phase}_ms']:.3g}")
            cells += [
                f"{by_setting[key][f'{phase}_ratio_to_soft']:.2f}x" if key in by_setting else ""
                for key in settings
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nMeasured on {describe(result['machine'])}.")
    return "\n".join(lines)


def time_ms(run: Callable[[], None], device: torch.device) -> float:
    """Wall time of one call of ``run`` in milliseconds, waiting for the device around it."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return 1e3 * (time.perf_counter() - start)


def median_ms_interleaved(
    runs: dict[Setting, Callable[[], None]], device: torch.device, repeats: int, warmup: int
) -> dict[Setting, float]:
    """Median time of each run; the runs take turns so that drifting load hits them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(time_ms(run, device))
    return {name: statistics.median(samples) for name, samples in times.items()}


def benchmark_n(
    attn: HybridAttention, n: int, args: argparse.Namespace, device: torch.device
) -> list[dict]:
    """Results of soft (k = None), then hard and hybrid for every k <= n."""
    query = torch.randn(args.batch_size, args.queries, args.dim, device=device)
    regions = torch.randn(args.batch_size, n, args.dim, device=device)
    settings: list[Setting] = [("soft", None)] + [
        (mode, k) for mode in ("hard", "hybrid") for k in args.k if k <= n
    ]

    def step(mode: str, k: int | None, training: bool) -> Callable[[], None]:
        def run() -> None:
            attn.mode = mode
            if k is not None:
                attn.k = k
            attn.train(training)
            if training:
                attn.zero_grad(set_to_none=True)
                attn(query, regions).output.square().mean().backward()
            else:
                with torch.inference_mode():
                    attn(query, regions)

        return run

    train_ms, infer_ms = (
        median_ms_interleaved(
            {setting: step(*setting, training) for setting in settings},
            device,
            args.repeats,
            args.warmup,
        )
        for training in (True, False)
    )
    soft = ("soft", None)
    return [
        {
            "mode": mode,
            "n": n,
            "k": k,
            "train_ms": round(train_ms[mode, k], 3),
            "infer_ms": round(infer_ms[mode, k], 3),
            "train_ratio_to_soft": round(train_ms[mode, k] / train_ms[soft], 3),
            "infer_ratio_to_soft": round(infer_ms[mode, k] / infer_ms[soft], 3),
        }
        for mode, k in settings
    ]


def main() -> None:
    args = parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    attn = HybridAttention(args.dim, num_heads=args.num_heads, estimator=args.estimator)
    attn = attn.to(device)
    info = machine(device)
    results = [row for n in args.n for row in benchmark_n(attn, n, args, device)]
    settings = {
        key: getattr(args, key)
        for key in ("dim", "batch_size", "num_heads", "queries", "estimator", "repeats", "warmup")
    }
    result = {"machine": info, "settings": settings, "results": results}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
