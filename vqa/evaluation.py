"""Evaluate a model on a dataset: accuracy (overall, per question and answer type), pointing,
latency; and the predictions in the official VQA results format."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqa.files import write_text_atomic
from vqa.loading import loader_options
from vqa.machine import synchronize
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
    """Per-question scores (B,) of one batch: accuracy (nan for a question without answers),
    pointing hit (nan if no target), regions used and attention entropy of the head-averaged
    weights."""
    predictions = output.logits.argmax(-1).tolist()
    accuracy = [
        answer_accuracy(processor.answers.decode(p), row["answers"]) if row["answers"] else math.nan
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


def row_labels(output: HybridVQAOutput, meta: list[dict], processor: HybridVQAProcessor) -> list:
    """Per question of one batch: (question_id, question_type, answer_type, predicted answer)."""
    predictions = output.logits.argmax(-1).tolist()
    return [
        (row["question_id"], row["question_type"], row["answer_type"], processor.answers.decode(p))
        for p, row in zip(predictions, meta, strict=True)
    ]


def regions_histogram(regions_used: list[float]) -> dict[str, int]:
    """How many questions used each number of regions, ``{"3": 12, "5": 40, ...}`` by count
    (the distribution of k, per question, under an adaptive k)."""
    counts = Counter(round(regions) for regions in regions_used)
    return {str(regions): counts[regions] for regions in sorted(counts)}


def scored_by_type(accuracy: list[float], types: list[str]) -> dict[str, float]:
    """``accuracy_by_type`` over the questions that have answers (accuracy not nan)."""
    kept = [
        (score, kind) for score, kind in zip(accuracy, types, strict=True) if not math.isnan(score)
    ]
    return accuracy_by_type([score for score, _ in kept], [kind for _, kind in kept])


@torch.no_grad()
def evaluate(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    dataset: Dataset | IterableDataset,
    *,
    accelerator: Accelerator | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_bad_image: str = "fail",
    progress: bool = True,
    predictions: bool = False,
    histograms_by_type: bool = False,
) -> dict:
    """Score ``model`` on every row of ``dataset`` (common-format rows, see vqa.data.formats).

    It runs on the model's device, or with ``accelerator`` on that accelerator's device. Under
    Accelerate ``model`` may be the prepared (DDP / FSDP) model; each process scores its share
    and ``gather_for_metrics`` counts every row exactly once. A streamed dataset
    (``IterableDataset``) is read once, in order. Questions without answers (e.g. VQAv2
    test-dev) are predicted but not scored.

    ``num_workers`` processes load the batches (None: ``vqa.loading.default_workers``). An
    image that does not decode fails the evaluation, or with ``on_bad_image="skip"`` its
    questions are left out and counted in ``skipped_questions``.

    Returns:
        {"questions", "scored_questions", "accuracy", "accuracy_by_type",
         "accuracy_by_answer_type", "pointing_accuracy", "regions_used",
         "regions_used_by_type", "regions_used_histogram", "attention_entropy",
         "ms_per_question"}, with ``predictions`` also "predictions": [{"question_id",
         "answer"}] in dataset order, and with ``histograms_by_type`` also
         "regions_used_histogram_by_type": {question type: its regions_used_histogram}.
        Accuracy is nan when no question has answers; pointing accuracy is nan without
        targets.
    """
    if accelerator is None:
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    else:
        model.to(accelerator.device)
    core = extract_model_from_parallel(model)  # the HybridVQAModel inside a DDP/FSDP wrapper
    device = next(core.parameters()).device
    collator = VQACollator(processor, on_bad_image=on_bad_image)
    loader = accelerator.prepare_data_loader(
        DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=collator,
            # a stream is read in order by one process
            **loader_options(0 if isinstance(dataset, IterableDataset) else num_workers, device),
        ),
        device_placement=False,  # the batches go to the model's device below
    )
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    labels: list[tuple] = []
    seconds = 0.0
    bar = tqdm(loader, desc="Evaluating", disable=not (progress and accelerator.is_main_process))
    for inputs, meta in bar:
        inputs.pop("labels")
        inputs = {name: value.to(device, non_blocking=True) for name, value in inputs.items()}
        synchronize(device)  # the inputs are there: time the model alone
        start = time.perf_counter()
        output = model(**inputs)
        synchronize(device)  # CUDA returns once the work is queued, not done
        seconds += time.perf_counter() - start
        scores = score_batch(output, meta, processor, core.config.patch_size)
        for name, values in accelerator.gather_for_metrics(
            {name: values.to(accelerator.device) for name, values in scores.items()}
        ).items():
            collected.setdefault(name, []).append(values.cpu())
        labels += accelerator.gather_for_metrics(
            row_labels(output, meta, processor), use_gather_object=True
        )
    model.train(was_training)
    if not labels:
        raise ValueError("the dataset to evaluate on is empty")
    scores = {name: torch.cat(values) for name, values in collected.items()}
    accuracy = scores["accuracy"].tolist()
    by_type = scored_by_type(accuracy, [question_type for _, question_type, _, _ in labels])
    by_answer_type = scored_by_type(accuracy, [answer_type for _, _, answer_type, _ in labels])
    by_answer_type.pop("overall")
    regions = scores["regions_used"].tolist()
    kinds = [kind for _, kind, _, _ in labels]
    regions_by_type = accuracy_by_type(regions, kinds)
    regions_by_type.pop("overall")
    result = {
        "questions": len(labels),
        "scored_questions": sum(not math.isnan(score) for score in accuracy),
        "accuracy": by_type.pop("overall"),
        "accuracy_by_type": by_type,
        "accuracy_by_answer_type": by_answer_type,
        "pointing_accuracy": nanmean(scores["pointing"]),
        "regions_used": float(scores["regions_used"].mean()),
        "regions_used_by_type": regions_by_type,
        "regions_used_histogram": regions_histogram(regions),
        "attention_entropy": float(scores["entropy"].mean()),
        "ms_per_question": 1000 * seconds / len(labels) * accelerator.num_processes,
        "skipped_questions": int(
            accelerator.reduce(
                torch.tensor(collator.skipped_rows, device=accelerator.device), "sum"
            )
        ),
    }
    if histograms_by_type:
        result["regions_used_histogram_by_type"] = {
            kind: regions_histogram(
                [used for used, of in zip(regions, kinds, strict=True) if of == kind]
            )
            for kind in regions_by_type
        }
    if predictions:
        result["predictions"] = [{"question_id": q, "answer": a} for q, _, _, a in labels]
    return result


def write_results(predictions: list[dict], path: str | Path) -> None:
    """Write predictions in the official VQA results format, ``[{"question_id", "answer"}]``,
    atomically (the file appears complete or not at all)."""
    write_text_atomic(Path(path), json.dumps(predictions) + "\n")
