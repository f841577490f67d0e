"""Answer accuracy and attention metrics: pure functions of predictions, answers and weights.

Accuracy follows the official VQA evaluation (vqaEval.py of github.com/GT-Vision-Lab/VQA).
Attention metrics treat each ViT patch token as one region with a pixel box, so "did the
model look at the right place" becomes a box-overlap test against ground-truth object boxes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from vqa.data.answers import normalize_answer


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA accuracy of one prediction against the human answers of one question.

    Both sides are normalised with `normalize_answer`. For each human answer left out in
    turn, the prediction scores min(1, matches among the others / 3); the result is the
    mean over the left-out answers. With the 10 answers of VQAv2 that gives 0.3, 0.6, 0.9
    and 1.0 for 1, 2, 3 and 4+ matching humans. Other counts generalise the same way; a
    single answer is an exact match after normalisation (1.0 or 0.0).

    The official script normalises the prediction fully but the human answers only by
    stripping punctuation (when they differ), as VQAv2's answers were normalised when the
    dataset was made; normalising both gives the same numbers there and stays right on data
    whose answers were never normalised ("Two" vs "2").
    """
    answers = [normalize_answer(answer) for answer in human_answers]
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    if len(answers) == 1:
        return float(answers[0] == predicted)
    matches = sum(answer == predicted for answer in answers)
    # Leaving out answer i leaves `matches` agreeing humans, less one when answer i agreed.
    return sum(min(1.0, (matches - (a == predicted)) / 3) for a in answers) / len(answers)


def answer_accuracy(prediction: str, row_answers: str | Sequence[str]) -> float:
    """Accuracy on one row: exact match (after normalisation) for a single answer, given as a
    string or a one-element list, and `vqa_accuracy` for several."""
    if isinstance(row_answers, str):
        row_answers = [row_answers]
    return vqa_accuracy(prediction, row_answers)


def accuracy_by_type(scores: Sequence[float], types: Sequence[str]) -> dict[str, float]:
    """Mean score per question (or answer) type, plus "overall", the mean of all scores.

    Args:
        scores: one accuracy per question.
        types: the type of each question, aligned with `scores`.

    Returns:
        {type: mean score} in type order, then "overall" (nan when there are no scores).
    """
    if len(scores) != len(types):
        raise ValueError(f"got {len(scores)} scores but {len(types)} types")
    if "overall" in types:
        raise ValueError('"overall" is reserved for the mean over all types')
    by_type: dict[str, list[float]] = defaultdict(list)
    for score, kind in zip(scores, types, strict=True):
        by_type[kind].append(score)
    means = {kind: sum(group) / len(group) for kind, group in sorted(by_type.items())}
    means["overall"] = sum(scores) / len(scores) if scores else math.nan
    return means


def patch_boxes(image_size: tuple[int, int] | int, patch_size: int) -> torch.Tensor:
    """Pixel boxes of the ViT patch grid, in the order of the ViT's patch tokens.

    Args:
        image_size: (height, width) of the model input, as in timm and transformers, or one
            int for a square image. Pixels past the last whole patch are dropped, as the
            stride-`patch_size` convolution of a patch embedding drops them.
        patch_size: side of a square patch in pixels.

    Returns:
        (N, 4) float boxes [x0, y0, x1, y1], N = (height // p) * (width // p), row-major:
        token r * columns + c covers grid row r (y) and column c (x). Target boxes must be in
        the same pixel space, i.e. scaled to the model input size.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if patch_size < 1 or height < patch_size or width < patch_size:
        raise ValueError(f"no whole {patch_size}px patch fits in a {height}x{width} image")
    rows, columns = height // patch_size, width // patch_size
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    x0, y0 = column.flatten() * patch_size, row.flatten() * patch_size  # (N,), (N,)
    return torch.stack([x0, y0, x0 + patch_size, y0 + patch_size], dim=-1).float()


def boxes_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether boxes intersect with positive area; boxes that only touch do not overlap.

    Args:
        a: (..., 4) boxes [x0, y0, x1, y1].
        b: (..., 4) boxes, broadcastable with `a`.

    Returns:
        bool tensor of the broadcast leading shape.
    """
    left = torch.maximum(a[..., 0], b[..., 0])
    top = torch.maximum(a[..., 1], b[..., 1])
    right = torch.minimum(a[..., 2], b[..., 2])
    bottom = torch.minimum(a[..., 3], b[..., 3])
    return (right > left) & (bottom > top)


def pointing_hit(region_box: torch.Tensor, target_boxes: torch.Tensor) -> bool:
    """Whether a region box (4,) overlaps any of the target boxes (T, 4); False when T = 0."""
    return bool(boxes_overlap(region_box, target_boxes.reshape(-1, 4)).any())


def top_region(weights: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the highest-weighted region: (..., N) -> (...) long.

    Ties (every selected region of hard attention weighs 1/k) go to the highest ``scores``
    (..., N) when given, else to the lowest index.
    """
    if scores is None:
        return weights.argmax(dim=-1)
    tied = weights == weights.max(dim=-1, keepdim=True).values
    return scores.float().masked_fill(~tied, float("-inf")).argmax(dim=-1)


def rank_regions(weights: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Region indices ordered by weight, then by score, best first: (N,) -> (N,) long."""
    by_score = scores.float().argsort(descending=True, stable=True)
    return by_score[weights[by_score].argsort(descending=True, stable=True)]


def pointing_accuracy(
    top_region_index: torch.Tensor,
    target_boxes: Sequence[torch.Tensor],
    region_boxes: torch.Tensor,
) -> float:
    """Share of questions whose highest-weighted region overlaps one of their target boxes.

    Args:
        top_region_index: (B,) long, e.g. `top_region(weights)`.
        target_boxes: B tensors (T_i, 4) of target boxes in the pixel space of `region_boxes`.
        region_boxes: (N, 4) region boxes, e.g. `patch_boxes(...)`.

    Returns:
        Hits / questions that have at least one target. Questions without targets (no
        grounding, e.g. "is there a cube?" when there is none) are left out; nan when no
        question has a target, so an average over batches can tell "no data" from 0.
    """
    if len(target_boxes) != len(top_region_index):
        raise ValueError(f"got {len(top_region_index)} questions but {len(target_boxes)} targets")
    hits = []
    for index, targets in zip(top_region_index.tolist(), target_boxes, strict=True):
        targets = torch.as_tensor(targets).reshape(-1, 4)  # also accepts lists from JSON rows
        if len(targets) > 0:
            hits.append(pointing_hit(region_boxes[index], targets))
    return sum(hits) / len(hits) if hits else math.nan


def attention_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of attention weights over regions: (..., N) -> (...).

    Weights are taken as given (they should sum to 1 over N); unselected regions of hard or
    hybrid attention carry weight 0 and add nothing (0 * log 0 = 0). log N for uniform
    weights over N regions, 0 for one region.
    """
    return -torch.special.xlogy(weights, weights).sum(dim=-1)


def regions_used(weights: torch.Tensor) -> torch.Tensor:
    """Number of regions with positive weight: (..., N) -> (...) long."""
    return (weights > 0).sum(dim=-1)
