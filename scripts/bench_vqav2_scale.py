"""Time and memory of reading the official VQAv2 files at full size; write and print one JSON.

    python scripts/bench_vqav2_scale.py                      # full size, in a temporary directory
    python scripts/bench_vqav2_scale.py --work /tmp/vqa2     # keep (and reuse) the generated files
    python scripts/bench_vqav2_scale.py --scale 0.01 --out /tmp/small.json   # a quick check

Writes official-format files of VQAv2's size into ``--work``: 443,757 training questions about
82,783 images and 214,354 validation questions about 40,504 images, 10 human answers each, under
the official names, and one tiny 8x8 JPEG per image named ``COCO_<subtype>_<id:012d>.jpg``
(hard links to a few distinct files). Then, each in a fresh process, measures the wall time and
the peak resident memory (``ru_maxrss`` of that child, from ``os.wait4``) of:
- ``first_load``: ``load_vqa_dataset(train, val)`` with an empty cache (the conversion);
- ``second_load``: the same again (memory-mapping the cache);
- ``train_cold``: ``vqa train --data WORK --preset tiny --epochs 1`` up to its first optimizer
  step, with an empty cache (it converts the files first);
- ``train_warm``: the same with the cache from ``first_load``.
The training child stops at the first call of ``vqa.training.apply_update``; its phases (data,
processor, vocabulary filter, model, loader) are timed where ``vqa.run_setup`` has them.
Targets: first step within 20 s with the cache, 120 s without; peak memory under 1.5 GiB.
The JSON, with the machine's description (``vqa.machine.machine``), goes to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from vqa.files import write_json

SPLITS = {  # subtype: (questions, images, first image id), VQAv2's sizes
    "train2014": (443_757, 82_783, 1),
    "val2014": (214_354, 40_504, 1_000_000),
}
TARGETS = {"first_step_warm_s": 20.0, "first_step_cold_s": 120.0, "peak_rss_mib": 1536.0}
OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "vqav2-scale" / "result.json"
MARKER = "BENCH_RESULT "  # the line of a child's output that holds its JSON
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "brown", "gray", "orange", "pink"]
OBJECTS = [f"{kind}{n}" for kind in ("dog", "car", "plate", "table", "sign") for n in range(40)]
OTHER_ANSWERS = [f"{a} {b}" for a in COLOURS + OBJECTS[:90] for b in OBJECTS] + COLOURS


def question_and_answers(rng: random.Random) -> tuple[str, str, str, list[str]]:
    """One question with its type, answer type and 10 human answers, in VQAv2's proportions."""
    thing = rng.choice(OBJECTS)
    kind = rng.random()
    if kind < 0.38:
        majority = rng.choice(["yes", "no"])
        answers = [majority] * 8 + [rng.choice(["yes", "no"]) for _ in range(2)]
        return f"Is there a {thing} in the picture?", "is there a", "yes/no", answers
    if kind < 0.50:
        count = str(rng.randint(0, 10))
        answers = [count] * 7 + [str(rng.randint(0, 10)) for _ in range(3)]
        return f"How many {thing}s are there?", "how many", "number", answers
    if kind < 0.70:
        colour = rng.choice(COLOURS)
        answers = [colour] * 8 + [rng.choice(COLOURS) for _ in range(2)]
        return f"What color is the {thing}?", "what color is the", "other", answers
    answer = rng.choice(OTHER_ANSWERS)
    answers = [answer] * 6 + [rng.choice(OTHER_ANSWERS) for _ in range(4)]
    return f"What is next to the {thing}?", "what is", "other", answers


def write_list_document(path: Path, header: dict, key: str, entries, trailer: dict) -> None:
    """``{**header, key: [entries...], **trailer}``, written entry by entry, never whole."""
    with path.open("w", encoding="utf-8") as file:
        file.write(json.dumps(header)[:-1] + f', "{key}": [')
        for index, entry in enumerate(entries):
            file.write(("," if index else "") + json.dumps(entry))
        file.write("], " + json.dumps(trailer)[1:] if trailer else "]}")


def write_split(work: Path, subtype: str, questions: int, images: int, first_id: int) -> None:
    """The questions file, the annotations file and the image directory of one split."""
    rng = random.Random(subtype)
    image_dir = work / subtype
    image_dir.mkdir(parents=True, exist_ok=True)
    bank = []  # a few distinct tiny JPEGs; every image is a hard link to one of them
    for index, colour in enumerate(COLOURS):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
        bank.append(work / f".bank-{subtype}-{index}.jpg")
        bank[-1].write_bytes(buffer.getvalue())
    base, extra = divmod(questions, images)  # the first `extra` images get one question more
    counts = [base + 1 if index < extra else base for index in range(images)]
    for index in range(images):
        target = image_dir / f"COCO_{subtype}_{first_id + index:012d}.jpg"
        if not target.exists():
            os.link(bank[index % len(bank)], target)
    rows = []  # (image_id, question_id, question, question_type, answer_type, answers)
    for index, count in enumerate(counts):
        image_id = first_id + index
        for number in range(count):
            rows.append((image_id, image_id * 1000 + number, *question_and_answers(rng)))
    header = {"info": {"description": "synthetic VQAv2-sized files"}, "license": {}}
    write_list_document(
        work / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
        {**header, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype},
        "questions",
        ({"image_id": r[0], "question": r[2], "question_id": r[1]} for r in rows),
        {},
    )
    write_list_document(
        work / f"v2_mscoco_{subtype}_annotations.json",
        {**header, "data_subtype": subtype},
        "annotations",
        (
            {
                "question_type": r[3],
                "multiple_choice_answer": r[5][0],
                "answers": [
                    {"answer": answer, "answer_confidence": "yes", "answer_id": number + 1}
                    for number, answer in enumerate(r[5])
                ],
                "image_id": r[0],
                "answer_type": r[4],
                "question_id": r[1],
            }
            for r in rows
        ),
        {"data_type": "mscoco"},
    )


def generate(work: Path, scale: float) -> dict:
    """Write the files (unless ``work`` already holds them at this scale); describe them."""
    sizes = {  # lists, as they read back from generated.json
        subtype: [max(1, round(questions * scale)), max(1, round(images * scale)), first]
        for subtype, (questions, images, first) in SPLITS.items()
    }
    stamp = work / "generated.json"
    seconds = 0.0
    if not stamp.is_file() or json.loads(stamp.read_text()) != sizes:
        start = time.perf_counter()
        for subtype, (questions, images, first) in sizes.items():
            write_split(work, subtype, questions, images, first)
        stamp.write_text(json.dumps(sizes))
        seconds = time.perf_counter() - start
    files = sorted(work.glob("v2_*.json"))
    return {
        "splits": {
            subtype: {"questions": questions, "images": len(list((work / subtype).iterdir()))}
            for subtype, (questions, _, _) in sizes.items()
        },
        "file_mib": {path.name: round(path.stat().st_size / 2**20, 1) for path in files},
        "generate_seconds": round(seconds, 1),
    }


def run_child(arguments: list[str], env: dict, log: Path) -> dict:
    """Run this script as ``--child ...`` in a fresh process; its JSON, wall time and peak RSS."""
    start = time.time()
    with log.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, __file__, *arguments],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - start
    lines = [line for line in output.splitlines() if line.startswith(MARKER)]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"child {arguments} failed ({child.returncode}); see {log}")
    result = json.loads(lines[-1][len(MARKER) :])
    result.update(
        wall_seconds=round(wall, 2),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
    )
    for key in [key for key in result if key.endswith("_at")]:  # times since this start
        result[f"seconds_to_{key.removesuffix('_at')}"] = round(result.pop(key) - start, 2)
    return result


def peak_rss() -> dict:
    """This process's peak resident memory so far."""
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def child_generate(work: str, scale: str) -> None:
    """Write the files (see :func:`generate`) and report what they are."""
    print(MARKER + json.dumps(generate(Path(work), float(scale))), flush=True)


def child_load(work: str) -> None:
    """Load train and val, report the seconds and the rows."""
    from vqa.data.sources import load_vqa_dataset

    start = time.perf_counter()
    rows = load_vqa_dataset(work, ["train", "val"])
    seconds = time.perf_counter() - start
    report = {"load_seconds": round(seconds, 2), "rows": {k: len(v) for k, v in rows.items()}}
    print(MARKER + json.dumps(report), flush=True)


def child_train(work: str, run: str) -> None:
    """``vqa train`` on ``work`` until its first optimizer step; report when it came."""
    import vqa.run_setup
    import vqa.training
    from vqa.cli import main

    imports_done_at = time.time()
    phases: dict[str, dict] = {"imports": peak_rss()}  # seconds, peak memory so far at the end

    def timed(module: object, name: str) -> None:
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name] = {"seconds": round(time.perf_counter() - start, 2), **peak_rss()}

        setattr(module, name, wrapper)

    steps = ("load_splits", "build_processor", "answerable_rows", "build_model", "build_loader")
    for name in steps:  # the steps before the first batch, where this version has them
        if hasattr(vqa.run_setup, name):
            timed(vqa.run_setup, name)

    def first_step(*args, **kwargs):
        report = {"imports_done_at": imports_done_at, "first_step_at": time.time()}
        print(MARKER + json.dumps({**report, "phases": phases}), flush=True)
        raise SystemExit(0)

    vqa.training.apply_update = first_step
    main(["train", "--data", work, "--output", run, "--preset", "tiny", "--epochs", "1"])
    raise SystemExit("training ended before its first optimizer step")


def bench(args: argparse.Namespace) -> dict:
    """Generate the files, run the four measurements, and collect them with the machine's info."""
    load_at_start = os.getloadavg()[0]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vqav2-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("cache-load", "cache-train", "run-cold", "run-warm"):
        shutil.rmtree(work / stale, ignore_errors=True)
    load = ["--child", "load", str(work)]
    steps = {  # name: (cache directory, child arguments), run in this order
        "first_load": ("cache-load", load),
        "second_load": ("cache-load", load),
        "train_cold": ("cache-train", ["--child", "train", str(work), str(work / "run-cold")]),
        "train_warm": ("cache-load", ["--child", "train", str(work), str(work / "run-warm")]),
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        # Every step runs in a child, and this process stays small until they are done: Linux
        # starts a child's ru_maxrss at its parent's peak (execve keeps the high-water mark).
        data = run_child(["--child", "generate", str(work), str(args.scale)], env, work / "gen.log")
        print(json.dumps(data), file=sys.stderr)
        results = {}
        for name, (cache, arguments) in steps.items():
            child_env = {**env, "HYBRID_VQA_CACHE": str(work / cache)}
            results[name] = run_child(arguments, child_env, work / f"{name}.log")
            print(name, json.dumps(results[name]), file=sys.stderr)
        cache_bytes = sum(p.stat().st_size for p in (work / "cache-load").rglob("*.arrow"))
        data["cache_mib"] = round(cache_bytes / 2**20, 1)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    from vqa.machine import machine  # imports torch, which children would start from: only now

    peak = max(result["peak_rss_mib"] for result in results.values())
    warm = results["train_warm"]["seconds_to_first_step"]
    cold = results["train_cold"]["seconds_to_first_step"]
    return {
        "scale": args.scale,
        "load_average_1m_at_start": round(load_at_start, 2),
        "data": data,
        **results,
        "targets": TARGETS,
        "targets_met": {
            "first_step_warm_s": warm <= TARGETS["first_step_warm_s"],
            "first_step_cold_s": cold <= TARGETS["first_step_cold_s"],
            "peak_rss_mib": peak <= TARGETS["peak_rss_mib"],
        },
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="directory for the generated files (default: a temp dir)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of VQAv2's size")
    parser.add_argument("--out", default=str(OUT), help="where to write the JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        {"generate": child_generate, "load": child_load, "train": child_train}[kind](*rest)
        return
    result = bench(args)
    write_json(Path(args.out), result)
    print(json.dumps(result))
    from vqa.machine import describe

    print(describe(result["machine"]), file=sys.stderr)


if __name__ == "__main__":
    main()
