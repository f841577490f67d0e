"""Build the default model that ships with the package (``vqa/default_model/``).

    python scripts/build_default_model.py            # about 15 minutes on 2 cores

It trains the default preset on the embedded scenes (``vqa train --preset default``), stores
the weights in float16 (about 4 MB; ``vqa.inference.load_model`` computes in float32), and
evaluates the stored model on the test split of the default dataset. ``build.json`` records the
``MODEL_VERSION`` it was built for, the command, the machine and the test scores;
``tests/test_default_model.py`` checks that the shipped weights still answer those scenes at
that accuracy, and ``vqa demo`` uses the model only while its ``MODEL_VERSION`` matches the
code's. The run's model card (README.md), metrics.json and curves.png ship with it, the card
with the test scores added. The directory is replaced in one rename, never half-written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from vqa.cache import BUILD_FILE, MODEL_VERSION, SHIPPED_MODEL_DIR
from vqa.data.sources import load_vqa_dataset
from vqa.data.synthetic import DATASET_VERSION
from vqa.demo import examples_dir
from vqa.evaluation import evaluate
from vqa.files import staged_directory, write_json
from vqa.inference import load_model
from vqa.machine import machine
from vqa.model_card import update_model_card_metrics
from vqa.training import TrainingArguments, train

RUN_FILES = ("metrics.json", "README.md", "curves.png")
COMMAND = "python scripts/build_default_model.py"
RECORDED_SCORES = ("questions", "accuracy", "accuracy_by_type", "pointing_accuracy")


def store_half(run: Path, out: Path) -> None:
    """The run's model with float16 weights, its processor files and its records, into ``out``."""
    model, processor = load_model(run, device="cpu")
    model.half().save_pretrained(out)
    processor.save_pretrained(out)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, out / name)


def test_scores(model_dir: Path) -> dict:
    """``vqa eval``'s scores of the stored model on the default dataset's test split."""
    model, processor = load_model(model_dir, device="cpu")
    rows = load_vqa_dataset(str(examples_dir()), ["test"])["test"]
    scores = evaluate(model, processor, rows, progress=False)
    return {**scores, "mode": model.fusion.mode, "k": model.fusion.k, "split": "test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "run"
        summary = train(TrainingArguments(output=str(run), preset="default", seed=args.seed))
        with staged_directory(args.out, overwrite=True) as staging:
            store_half(run, staging)
            scores = test_scores(staging)
            update_model_card_metrics(staging, "test", scores, data="synthetic")
            history = summary["history"]
            write_json(
                staging / BUILD_FILE,
                {
                    "model_version": MODEL_VERSION,
                    "dataset_version": DATASET_VERSION,
                    "command": COMMAND + (f" --seed {args.seed}" if args.seed else ""),
                    "weights": "float16",
                    "train_seconds": round(sum(r["train_seconds"] for r in history), 1),
                    "val_accuracy": history[-1].get("val_accuracy"),
                    "test": {key: scores[key] for key in RECORDED_SCORES},
                    "machine": machine(torch.device("cpu")),
                },
            )
            for path in staging.iterdir():  # package data: readable by everyone
                path.chmod(0o644)
    print(json.dumps(json.loads((args.out / BUILD_FILE).read_text()), indent=2))


if __name__ == "__main__":
    main()
