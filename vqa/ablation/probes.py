"""Measurements of one trained run beyond ``vqa.evaluation.evaluate`` (which gives accuracy,
pointing, entropy and the latency ms/q): counted FLOPs, the noise of the gradient that trains
the selection scores, the training loss at the end, and a blind baseline of the data.

torch and the VQA stack are imported inside the functions, so that ``vqa --help`` stays fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset
    from torch import Tensor, device

    from vqa.modeling import HybridVQAModel
    from vqa.processing import HybridVQAProcessor

# The part whose cost depends on the selection (hop_queries: the queries of later hops).
FUSION_MODULES = ("hop_queries", "fusion", "reasoner", "head")
LOSS_TAIL = 0.2  # share of the last training steps whose answer loss gives final loss / variance


def collate(
    processor: HybridVQAProcessor,
    rows: Dataset,
    indices: Iterable[int],
    device: device | str = "cpu",
) -> dict[str, Tensor]:
    """Model inputs (with ``labels``) for the rows at ``indices``, on ``device``."""
    from vqa.processing import VQACollator

    inputs, _ = VQACollator(processor)([rows[int(i)] for i in indices])
    return {name: value.to(device) for name, value in inputs.items()}


def one_question(inputs: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """The model inputs of question ``index`` of a batch, asked alone: its image and its
    question tokens without the batch's padding.

    Args:
        inputs: ``pixel_values`` (U, C, H, W), ``input_ids`` (B, L), and optionally
            ``attention_mask`` (B, L) and ``image_index`` (B,) (without it, image b is
            question b's).
        index: which question.

    Returns:
        ``pixel_values`` (1, C, H, W), ``input_ids`` and ``attention_mask`` (1, L_index).
    """
    image_index = inputs.get("image_index")
    image = index if image_index is None else int(image_index[index])
    ids = inputs["input_ids"][index]
    if inputs.get("attention_mask") is not None:
        ids = ids[inputs["attention_mask"][index].bool()]
    return {
        "pixel_values": inputs["pixel_values"][image : image + 1],
        "input_ids": ids[None],
        "attention_mask": ids.new_ones(1, len(ids)),
    }


def counted_forward(model: HybridVQAModel, inputs: dict[str, Tensor]) -> tuple[float, float]:
    """FLOPs of one eval-mode forward pass: (``FUSION_MODULES``, whole model).

    Counted by ``FlopCounterMode`` with PyTorch's fused ``TransformerEncoderLayer`` fast path
    off: the counter has no formula for that fused kernel (it would count the reasoner as 0),
    and the plain path does the same arithmetic.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    fastpath, was_training = torch.backends.mha.get_fastpath_enabled(), model.training
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(**inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    by_module = counter.get_flop_counts()
    prefix = type(model).__name__
    fusion = sum(sum(by_module.get(f"{prefix}.{name}", {}).values()) for name in FUSION_MODULES)
    return fusion, counter.get_total_flops()


def count_flops(model: HybridVQAModel, inputs: dict[str, Tensor]) -> tuple[float, float]:
    """FLOPs per question of eval-mode forward passes: (after the encoders, total).

    The encoders are counted on the batch, whose questions share their images as they do in
    training and evaluation. What depends on the selection (``FUSION_MODULES``) is counted one
    question at a time (:func:`one_question`), so each question pays for its own tokens and,
    with an adaptive k, for exactly its own k: in a batch, every question would run on the
    batch's largest k. The mean kept k is ``vqa.evaluation``'s ``regions_used``.

    Args:
        model: the model; its fusion mode and k (or adaptive rule) decide what runs.
        inputs: a batch of B questions without labels: ``pixel_values`` (U, C, H, W),
            ``input_ids`` and ``attention_mask`` (B, L), ``image_index`` (B,).

    Returns:
        (FLOPs of ``model.fusion`` + ``model.reasoner`` + ``model.head`` per question, those
        plus the encoders' FLOPs of the batch divided by B).
    """
    questions = inputs["input_ids"].shape[0]
    batch_fusion, batch_total = counted_forward(model, inputs)
    fusion = sum(counted_forward(model, one_question(inputs, i))[0] for i in range(questions))
    return fusion / questions, (batch_total - batch_fusion + fusion) / questions


def regions_spread(histogram: dict[str, int]) -> float:
    """Standard deviation over the questions of the regions each used (its k), from
    ``vqa.evaluation.regions_histogram``'s ``{"3": 12, "5": 40}``; nan without questions."""
    values = [int(regions) for regions, count in histogram.items() for _ in range(count)]
    return statistics.pstdev(values) if values else math.nan


def score_gradient_noise(
    model: HybridVQAModel, fixed: dict[str, Tensor], batches: Sequence[dict[str, Tensor]]
) -> tuple[float, float, float]:
    """How noisy the gradient that trains the selection scores is (see report.DEFINITIONS).

    The gradient g of the training loss with respect to the scorer weights
    (``fusion.q_proj.weight``, ``fusion.k_proj.weight``: the scores are q·k) is taken with
    dropout off and the fusion in training mode, so that gumbel and reinforce sample as in
    training, R = ``len(batches)`` times.

    Args:
        model: the model (its train/eval state is restored afterwards).
        fixed: one batch with labels, passed R times: only the estimator's samples vary.
        batches: R different batches with labels: data and samples vary.

    Returns:
        (variance on ``fixed``: mean over the weights of the variance across the R passes,
        noise-to-signal on ``fixed``, noise-to-signal on ``batches``), where noise-to-signal is
        the summed variance over the squared norm of the mean gradient.
    """
    import torch

    scorer = [model.fusion.q_proj.weight, model.fusion.k_proj.weight]
    was_training = model.training
    model.eval()
    model.fusion.train()

    def gradient(inputs: dict[str, Tensor]) -> Tensor:
        """(P,) the flattened scorer gradient; zeros where the estimator passes none."""
        grads = torch.autograd.grad(model(**inputs).loss, scorer, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(weight) if grad is None else grad).flatten()
                for grad, weight in zip(grads, scorer, strict=True)
            ]
        )

    try:
        repeated = torch.stack([gradient(fixed) for _ in batches])  # (R, P)
        varied = torch.stack([gradient(batch) for batch in batches])  # (R, P)
    finally:
        model.train(was_training)

    def noise_to_signal(gradients: Tensor) -> float:
        """(R, P) gradients -> summed variance over the squared norm of their mean."""
        return (gradients.var(0).sum() / gradients.mean(0).square().sum()).item()

    return repeated.var(0).mean().item(), noise_to_signal(repeated), noise_to_signal(varied)


def answer_losses(history: Sequence[dict]) -> list[float]:
    """Per-step answer loss over a whole training run, from its per-epoch history."""
    return [loss for record in history for loss in record["step_answer_losses"]]


def final_loss(history: Sequence[dict]) -> tuple[float, float]:
    """(mean, sample variance) of the answer loss over the last LOSS_TAIL of the training
    steps (at least 2 steps, so that the variance is defined when there are 2)."""
    losses = answer_losses(history)
    tail = losses[-max(2, math.ceil(LOSS_TAIL * len(losses))) :]
    return statistics.fmean(tail), statistics.variance(tail) if len(tail) > 1 else math.nan


def blind_accuracy(train_rows: Dataset, eval_rows: Dataset) -> float:
    """Accuracy on ``eval_rows`` of a baseline that ignores the image: the most frequent
    training answer of the same question text, else of the same question type."""
    from collections import Counter

    from vqa.metrics import answer_accuracy

    by_question: dict[str, Counter] = {}
    by_type: dict[str, Counter] = {}
    for question, kind, answers in zip(
        train_rows["question"], train_rows["question_type"], train_rows["answers"], strict=True
    ):
        by_question.setdefault(question.lower(), Counter()).update(answers)
        by_type.setdefault(kind, Counter()).update(answers)
    overall = sum(by_type.values(), Counter())

    def guess(question: str, kind: str) -> str:
        counts = by_question.get(question.lower()) or by_type.get(kind) or overall
        return counts.most_common(1)[0][0]

    return statistics.fmean(
        answer_accuracy(guess(question, kind), answers)
        for question, kind, answers in zip(
            eval_rows["question"], eval_rows["question_type"], eval_rows["answers"], strict=True
        )
    )
