"""Evaluate a model on a dataset: accuracy (overall, per question type), pointing, latency."""

from __future__ import annotations

import math
import time

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqa.metrics import (
    accuracy_by_type,
    answer_accuracy,
    attention_entropy,
    patch_boxes,
    pointing_hit,
    top_region,
)
from vqa.modeling import HybridVQAModel, HybridVQAOutput
from vqa.processing import HybridVQAProcessor, VQACollator


def score_batch(
    output: HybridVQAOutput, meta: list[dict], processor: HybridVQAProcessor, patch_size: int
) -> dict[str, torch.Tensor]:
    """Per-question scores (B,) of one batch: accuracy, pointing hit (nan if no target),
    regions used and attention entropy of the head-averaged weights."""
    predictions = output.logits.argmax(-1).tolist()
    accuracy = [
        answer_accuracy(processor.answers.decode(p), row["answers"])
        for p, row in zip(predictions, meta, strict=True)
    ]
    weights = output.attention_weights.float().mean(1).cpu()  # (B, N)
    scores = output.attention_scores.float().mean(1).cpu()  # (B, N)
    boxes = patch_boxes(processor.image_size, patch_size)
    hits = [
        float(pointing_hit(boxes[index], row["target_boxes"]))
        if len(row["target_boxes"])
        else math.nan
        for index, row in zip(top_region(weights, scores).tolist(), meta, strict=True)
    ]
    return {
        "accuracy": torch.tensor(accuracy),
        "pointing": torch.tensor(hits),
        "regions_used": (weights > 0).sum(-1).float(),
        "entropy": attention_entropy(weights),
    }


def nanmean(values: torch.Tensor) -> float:
    """Mean over the non-nan entries; nan when there are none."""
    kept = values[~values.isnan()]
    return float(kept.mean()) if len(kept) else math.nan


@torch.no_grad()
def evaluate(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    dataset: Dataset,
    *,
    accelerator: Accelerator | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Score ``model`` on every row of ``dataset`` (common-format rows, see vqa.data.formats).

    Under Accelerate each process scores its share and ``gather_for_metrics`` counts every
    row exactly once.

    Returns:
        {"questions", "accuracy", "accuracy_by_type", "pointing_accuracy", "regions_used",
         "attention_entropy", "ms_per_question"}; pointing accuracy is nan without targets.
    """
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    types = sorted(set(dataset["question_type"]))
    loader = accelerator.prepare(
        DataLoader(dataset, batch_size=batch_size, collate_fn=VQACollator(processor))
    )
    was_training = model.training
    model.to(accelerator.device).eval()
    collected: dict[str, list[torch.Tensor]] = {}
    seconds = 0.0
    bar = tqdm(loader, desc="Evaluating", disable=not (progress and accelerator.is_main_process))
    for inputs, meta in bar:
        inputs.pop("labels")
        start = time.perf_counter()
        output = model(**inputs)
        seconds += time.perf_counter() - start
        scores = score_batch(output, meta, processor, model.config.patch_size)
        scores["type"] = torch.tensor([types.index(row["question_type"]) for row in meta])
        for name, values in accelerator.gather_for_metrics(
            {name: values.to(accelerator.device) for name, values in scores.items()}
        ).items():
            collected.setdefault(name, []).append(values.cpu())
    model.train(was_training)
    rows = {name: torch.cat(values) for name, values in collected.items()}
    by_type = accuracy_by_type(rows["accuracy"].tolist(), [types[i] for i in rows["type"].tolist()])
    return {
        "questions": len(rows["accuracy"]),
        "accuracy": by_type.pop("overall"),
        "accuracy_by_type": by_type,
        "pointing_accuracy": nanmean(rows["pointing"]),
        "regions_used": float(rows["regions_used"].mean()),
        "attention_entropy": float(rows["entropy"].mean()),
        "ms_per_question": 1000 * seconds / max(len(dataset), 1) * accelerator.num_processes,
    }
