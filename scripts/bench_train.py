"""Train a preset on the embedded dataset once per fusion mode; write and print one JSON object.

    python scripts/bench_train.py                  # default preset: soft, hard, hybrid
    python scripts/bench_train.py --modes hybrid --mixed-precision bf16 --out /tmp/b.json
    python scripts/bench_train.py --answers-only --peer   # as on data without boxes; + the peer
    python scripts/bench_train.py --table docs/results/bench-train/default.json  # README table

For each mode: validation accuracy after every epoch (overall, per question family, pointing),
training seconds and questions per second, so that accuracy after N training questions sits
beside the time it took. The machine's measured fp32 matmul rate is recorded with the times.
The JSON goes to ``--out`` (default ``docs/results/bench-train/<preset>.json``).

``--answers-only`` trains as ``vqa train`` does on a dataset without boxes: the region
attribute and pointing losses, the two that read the rows' boxes, are off, and the preset's
box-free recipe is on (``vqa.box_free``; the default preset's adds the window reconstruction
and recoloured-view contrast losses, which need only pixels, fuses in one hop rather than two,
and trains 10 epochs rather than 5 unless ``--epochs`` says otherwise) (default ``--out``:
``docs/results/bench-train/<preset>-answers-only.json``). Pointing is
still measured. ``--peer`` also trains the easy-VQA tutorial model (``vqa.peer``) on the same
data for as many epochs as the modes trained (or ``--peer-epochs``); it never reads boxes
either.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from vqa.cache import resolve_data_dir
from vqa.configuration import HybridVQAConfig
from vqa.files import write_json
from vqa.machine import describe, machine
from vqa.peer import train_peer
from vqa.presets import get_preset
from vqa.training import TrainingArguments, learning_curve, train

FAMILIES = ("colour", "shape", "exist", "count", "relate", "compare")
# The columns of the accuracy-within-seconds table.
SECONDS = (60, 120, 300, 600)
PEER_NAME = "peer (easy-VQA tutorial)"


def epoch_summary(history: list[dict]) -> dict:
    """The best epoch's scores, the epochs' training seconds and speed, and the curve."""
    best = max(history, key=lambda record: record.get("val_accuracy", -1.0))
    train_seconds = sum(record["train_seconds"] for record in history)
    questions = sum(record["train_questions"] for record in history)
    return {
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "val_accuracy": best.get("val_accuracy"),
        "val_accuracy_by_type": best.get("val_accuracy_by_type"),
        "pointing_accuracy": best.get("val_pointing_accuracy"),
        "regions_used": best.get("val_regions_used"),
        "train_seconds": round(train_seconds, 1),
        "questions_per_second": round(questions / train_seconds, 1),
        "curve": learning_curve(history),
    }


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
            answers_only=args.answers_only,
            image_group_size=args.image_group_size,
            progress=False,
        )
    )
    wall = time.perf_counter() - start
    config = summary["config"]
    scores = epoch_summary(summary["history"])
    return {
        "mode": mode,
        "k": config["fusion_k"],
        "estimator": config["fusion_estimator"],
        "heads": config["fusion_heads"],
        "hops": config["fusion_hops"],
        "region_loss_weight": config["region_loss_weight"],
        "pointing_loss_weight": config["pointing_loss_weight"],
        "reconstruction_loss_weight": config["reconstruction_loss_weight"],
        "contrast_loss_weight": config["contrast_loss_weight"],
        "device": summary["device"],
        "mixed_precision": summary["mixed_precision"],
        **scores,
        "wall_seconds": round(wall, 1),
    }


def bench_peer(args: argparse.Namespace, mode_epochs: int | None) -> dict:
    """Train the peer (``vqa.peer``) on the same data and image size, for ``--peer-epochs`` or
    as many epochs as the modes trained (``mode_epochs``); summarise as a mode."""
    preset = get_preset(args.preset)
    epochs = args.peer_epochs or mode_epochs or args.epochs or preset.training["epochs"]
    start = time.perf_counter()
    summary = train_peer(
        resolve_data_dir(args.data, preset, progress=False),
        epochs=epochs,
        batch_size=args.peer_batch_size,
        lr=args.peer_lr,
        seed=args.seed,
        group_size=args.image_group_size,
        image_size=preset.model.get("image_size", HybridVQAConfig.image_size),
        progress=False,
    )
    wall = time.perf_counter() - start
    scores = epoch_summary(summary["history"])
    return {
        "model": "peer",
        "parameters": summary["parameters"],
        **summary["arguments"],
        "device": summary["device"],
        **scores,
        "wall_seconds": round(wall, 1),
    }


def row_name(row: dict) -> str:
    """How a table names a mode's row or the peer's."""
    if row.get("model") == "peer":
        return PEER_NAME
    return row["mode"] if row["mode"] == "soft" else f"{row['mode']} ({row['estimator']})"


def table_rows(result: dict) -> list[dict]:
    """The modes' rows of a result, then the peer's when it has one."""
    return result["results"] + ([result["peer"]] if result.get("peer") else [])


def pointing_cell(pointing: float | None) -> str:
    """Pointing accuracy, or "–" where nothing was pointed at: the peer (None), or data
    without target boxes (nan)."""
    return "–" if pointing is None or math.isnan(pointing) else f"{pointing:.2f}"


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def families(rows: list[dict]) -> list[str]:
    """The question families of the table: the embedded scenes' six, or, for another dataset,
    the question types its rows were scored by."""
    types = {name for row in rows for name in row["val_accuracy_by_type"] or {}}
    return list(FAMILIES) if types <= set(FAMILIES) else sorted(types)


def scores_table(rows: list[dict]) -> list[str]:
    """The README's table: one line per row, its best epoch's scores."""
    columns = families(rows)
    header = ["mode", "val accuracy", *columns, "pointing", "train s", "questions/s"]
    lines = [markdown_row(header), "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        by_type = row["val_accuracy_by_type"] or {}
        pointing = row["pointing_accuracy"]
        cells = [
            row_name(row),
            f"{row['val_accuracy']:.3f}",
            *(f"{by_type[family]:.2f}" if family in by_type else "" for family in columns),
            pointing_cell(pointing),
            f"{row['train_seconds']:.0f}",
            f"{row['questions_per_second']:.0f}",
        ]
        lines.append(markdown_row(cells))
    return lines


def point_within(curve: list[dict], seconds: float) -> dict | None:
    """The last epoch of ``curve`` that ended within ``seconds`` of training, or None."""
    within = [point for point in curve if point["train_seconds"] <= seconds]
    return within[-1] if within else None


def curve_tables(rows: list[dict]) -> list[str]:
    """Accuracy after the same training questions, and within the same training seconds."""
    counts = sorted({point["questions"] for row in rows for point in row["curve"]})
    lines = [
        "",
        "Validation accuracy after N training questions (a column per epoch):",
        "",
        markdown_row(["mode", *(f"{count:,}" for count in counts)]),
        "|---|" + "---:|" * len(counts),
    ]
    for row in rows:
        by_count = {point["questions"]: point["val_accuracy"] for point in row["curve"]}
        cells = [f"{by_count[count]:.3f}" if count in by_count else "" for count in counts]
        lines.append(markdown_row([row_name(row), *cells]))
    lines += [
        "",
        "Validation accuracy within T seconds of training (at the last epoch that ended by "
        "then, and when it ended):",
        "",
        markdown_row(["mode", *(f"{seconds} s" for seconds in SECONDS)]),
        "|---|" + "---:|" * len(SECONDS),
    ]
    for row in rows:
        points = [point_within(row["curve"], seconds) for seconds in SECONDS]
        cells = [
            "–" if at is None else f"{at['val_accuracy']:.3f} ({at['train_seconds']:.0f} s)"
            for at in points
        ]
        lines.append(markdown_row([row_name(row), *cells]))
    return lines


def markdown_table(result: dict) -> str:
    """The README's tables of one benchmark result: one row per mode, and the peer's. When
    the rows have learning curves, also accuracy after N questions and within T seconds."""
    rows = table_rows(result)
    lines = scores_table(rows)
    if all(row.get("curve") for row in rows):
        lines += curve_tables(rows)
    lines.append(f"\nMeasured on {describe(result['machine'])}.")
    return "\n".join(lines)


def boxes_table(with_boxes: dict, answers_only: dict, seconds: float = 600) -> str:
    """One table of what the defaults reach with boxes and from the answers alone: per mode
    of either result (and the peer, which never reads boxes), each result's final validation
    accuracy, pointing and training seconds ("–" where a result lacks the mode), and the
    answers-only accuracy within ``seconds`` of training."""
    header = [
        "mode",
        "with boxes",
        "pointing",
        "train s",
        "answers only",
        "pointing",
        "train s",
        f"answers only within {seconds:g} s",
    ]
    lines = [markdown_row(header), "|---|" + "---:|" * (len(header) - 1)]
    boxed = {row_name(row): row for row in table_rows(with_boxes)}
    unboxed = {row_name(row): row for row in table_rows(answers_only)}
    names = dict.fromkeys([*boxed, *unboxed])  # each once, in order of appearance
    for name in sorted(names, key=lambda name: name == PEER_NAME):  # the peer last
        other, row = boxed.get(name), unboxed.get(name)
        within = point_within((row or {}).get("curve") or [], seconds)
        cells = [name]
        for result in (other, row):
            if result is None:
                cells += ["–", "–", "–"]
                continue
            pointing = result["pointing_accuracy"]
            cells += [
                f"{result['val_accuracy']:.3f}",
                pointing_cell(pointing),
                f"{result['train_seconds']:.0f}",
            ]
        cells.append(
            "–"
            if within is None
            else f"{within['val_accuracy']:.3f} ({within['train_seconds']:.0f} s)"
        )
        lines.append(markdown_row(cells))
    lines += [
        "",
        f"With boxes: {describe(with_boxes['machine'])}. Answers only: "
        f"{describe(answers_only['machine'])}.",
    ]
    return "\n".join(lines)


def default_out(args: argparse.Namespace) -> Path:
    suffix = "-answers-only" if args.answers_only else ""
    return Path(f"docs/results/bench-train/{args.preset}{suffix}.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--modes", default="soft,hard,hybrid", help="'' for none (--peer only)")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    parser.add_argument(
        "--answers-only",
        action="store_true",
        help="as on data without boxes: region attribute and pointing losses off, the preset's "
        "box-free recipe on",
    )
    parser.add_argument(
        "--image-group-size",
        type=int,
        help="at most N questions about one image in a row, for the modes and the peer "
        "(default: all of them)",
    )
    parser.add_argument("--peer", action="store_true", help="also train the tutorial model")
    parser.add_argument("--peer-epochs", type=int, help="default: the modes' epochs")
    parser.add_argument("--peer-batch-size", type=int, default=32, help="the tutorial's")
    parser.add_argument("--peer-lr", type=float, default=5e-4, help="the tutorial's Adam lr")
    parser.add_argument("--runs", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="the JSON result (default: docs/results/...)")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a result")
    parser.add_argument(
        "--boxes-table",
        type=Path,
        nargs=2,
        metavar=("WITH_BOXES", "ANSWERS_ONLY"),
        help="print one table of two results: with boxes and --answers-only",
    )
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.boxes_table:
        print(boxes_table(*(json.loads(path.read_text()) for path in args.boxes_table)))
        return
    measured_on = machine()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.runs or scratch)
        modes = [mode for mode in args.modes.split(",") if mode]
        results = [bench_mode(mode, args, root / mode) for mode in modes]
    result = {
        "machine": measured_on,
        "preset": args.preset,
        "data": args.data,
        "seed": args.seed,
        "mixed_precision": args.mixed_precision,
        "answers_only": args.answers_only,
        "image_group_size": args.image_group_size,
        "results": results,
    }
    if args.peer:
        result["peer"] = bench_peer(args, results[0]["epochs"] if results else None)
    write_json(args.out or default_out(args), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
