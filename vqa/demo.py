"""``vqa demo``: open the app on the default model, which ships with the package.

The default model (``vqa/default_model/``, built by ``scripts/build_default_model.py``) answers
at once; ``--retrain`` trains a new one with the default preset into the cache instead (about
15 minutes on 2 cores), and so does a package whose shipped model is missing or was built for
another ``MODEL_VERSION``. The app's example scenes are the default dataset's test split, which
is generated on its own in seconds (the splits are drawn independently of each other).
"""

from __future__ import annotations

import json
from pathlib import Path

from vqa.cache import DEFAULT_MODEL, default_model_dir, shipped_model, synthetic_dataset
from vqa.presets import get_preset
from vqa.training import TrainingArguments, train


def ensure_default_model(retrain: bool = False) -> Path:
    """The shipped default model, or (``retrain``, or none that fits) one trained into the
    cache with the default preset, once."""
    if not retrain and (shipped := shipped_model()) is not None:
        return shipped
    directory = default_model_dir()
    if retrain or not (directory / "model.safetensors").is_file():
        print(f"Training the default model into {directory} (once; it is cached).")
        train(TrainingArguments(output=str(directory), preset="default", resume=not retrain))
    return directory


def examples_dir() -> Path:
    """The default dataset's test split alone: the same scenes and questions as the full
    dataset's test split, generated in seconds."""
    sizes = {**get_preset("default").synthetic, "train": 0, "val": 0}
    return synthetic_dataset(**sizes, progress=False)


def example_rows(count: int = 3) -> list[dict]:
    """A few test rows of the embedded dataset, to ask about."""
    data_dir = examples_dir()
    with (data_dir / "test.jsonl").open() as lines:
        rows = [json.loads(next(lines)) for _ in range(count)]
    for row in rows:
        row["image"] = str(data_dir / row["image"])
    return rows


def run_demo(retrain: bool = False, port: int = 7860) -> None:
    """Answer a few example questions, then serve the app until Ctrl+C (training first only
    with ``retrain`` or when no shipped model fits)."""
    from PIL import Image

    from vqa.app import serve
    from vqa.inference import load_model, predict

    directory = ensure_default_model(retrain)
    model, processor = load_model(directory)
    print(f"\nModel: {directory}")
    for row in example_rows():
        with Image.open(row["image"]) as image:
            result = predict(model, processor, image, row["question"])
        answer, probability = result.answers[0]
        print(f"  {row['question']}  ->  {answer} ({probability:.0%}); truth: {row['answer']}")
    name = DEFAULT_MODEL if directory == shipped_model() else directory
    print(f'\nAsk your own: vqa predict --model {name} --image IMAGE --question "..."')
    print("or in the app, which opens now:")
    serve(directory, port=port, examples_dir=examples_dir())
