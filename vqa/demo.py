"""``vqa demo``: train the default model once (cached), show it answering, then open the app."""

from __future__ import annotations

import json
from pathlib import Path

from vqa.cache import default_model_dir, synthetic_dataset
from vqa.presets import get_preset
from vqa.training import TrainingArguments, train


def ensure_default_model(retrain: bool = False) -> Path:
    """The cached default model directory, trained with the default preset if missing."""
    directory = default_model_dir()
    if retrain or not (directory / "model.safetensors").is_file():
        print(f"Training the default model into {directory} (once; it is cached).")
        train(TrainingArguments(output=str(directory), preset="default", resume=not retrain))
    return directory


def default_dataset_dir() -> Path:
    """The cached embedded dataset that the default model is trained on."""
    return synthetic_dataset(**get_preset("default").synthetic, progress=False)


def example_rows(count: int = 3) -> list[dict]:
    """A few test rows of the embedded dataset, to ask about."""
    data_dir = default_dataset_dir()
    with (data_dir / "test.jsonl").open() as lines:
        rows = [json.loads(next(lines)) for _ in range(count)]
    for row in rows:
        row["image"] = str(data_dir / row["image"])
    return rows


def run_demo(retrain: bool = False, port: int = 7860) -> None:
    """Train if needed, answer a few example questions, then serve the app until Ctrl+C."""
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
    print(f'\nAsk your own: vqa predict --model {directory} --image IMAGE --question "..."')
    print("or in the app, which opens now:")
    serve(directory, port=port, examples_dir=default_dataset_dir())
