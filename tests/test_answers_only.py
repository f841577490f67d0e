"""From answers alone, with nothing that reads boxes, a trivially learnable task is learned.

The data are colour questions about one-object scenes with the objects and targets removed, so
no auxiliary loss can apply: only the answers teach the model. The answer is the colour of the
only object, which a model that learns anything from pixels reads in a few epochs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset


def colour_questions_without_boxes(data: Path) -> None:
    """Keep only the colour questions of ``data``'s splits, without objects or targets."""
    for split in ("train", "val", "test"):
        path = data / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        kept = []
        for row in rows:
            if row["question_type"] == "colour":
                row.pop("objects", None)
                row.pop("targets", None)
                kept.append(row)
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))


def blind_accuracy(data: Path) -> float:
    """Validation accuracy of always answering the most frequent training answer."""
    train = [json.loads(line)["answer"] for line in (data / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line)["answer"] for line in (data / "val.jsonl").read_text().splitlines()]
    common = Counter(train).most_common(1)[0][0]
    return sum(answer == common for answer in val) / len(val)


def test_colour_of_the_only_object_is_learned_from_answers_alone(tmp_path, train_tiny):
    data, run = tmp_path / "data", tmp_path / "run"
    config = SyntheticConfig(image_size=32, max_objects=1, questions_per_image=2)
    write_synthetic_dataset(data, train=1000, val=200, test=10, config=config, progress=False)
    colour_questions_without_boxes(data)
    options = ("--epochs", "10", "--batch-size", "16", "--lr", "1e-3", "--mode", "hybrid")
    assert train_tiny(data, run, *options) == 0

    assert json.loads((run / "config.json").read_text())["region_attributes"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [epoch["train_loss"] for epoch in metrics["history"]]
    assert losses[-1] < 0.25 * losses[0]
    blind = blind_accuracy(data)
    assert blind < 0.3
    assert metrics["best_accuracy"] > blind + 0.5
