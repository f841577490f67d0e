"""Adaptive k: each row keeps its own number of regions, between ``k_min`` and ``k_max``.

Two rules sit beside a fixed int k:

- :class:`TopP`: keep the smallest set of regions whose softmax mass reaches ``p`` (the
  nucleus of the scores), clamped to ``[k_min, k_max]``. No parameters; it applies to any
  trained model.
- :class:`LearnedBudget`: a small head (:class:`BudgetHead`) predicts a distribution over k
  in ``[k_min, k_max]`` from the query. Its estimator is straight-through: the forward pass
  keeps exactly the drawn k (sampled while training, the most likely k in eval); the backward
  pass treats the slot mask as its expectation, ``P(k > j)`` for slot j. Training adds a
  compute penalty ``lambda * E[k]`` (:attr:`Budget.expected`) to the task loss.

Every row of a batch runs on as many slots as the batch's largest k (:func:`slot_width`; k_max
while training a learned budget, whose gradient needs every slot, and while exporting), its
regions best (or first drawn) first, and the slots past its own k are masked: batches with
different k per row are padded, never looped over, and a single question computes exactly its
own k. The forward value of every mask is exactly 0 or 1, and masked slots get exactly zero
weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid_attention.selection import (
    Selection,
    check_k,
    gumbel_like,
    masked_scores,
    plackett_luce_steps,
    select_topk,
)


def check_bounds(k_min: int, k_max: int) -> None:
    """Raise a ValueError unless 1 <= k_min <= k_max are ints."""
    check_k(k_min)
    check_k(k_max)
    if k_min > k_max:
        raise ValueError(f"k_min={k_min} is greater than k_max={k_max}")


@dataclass(frozen=True)
class TopP:
    """Keep the smallest set of regions whose softmax mass reaches ``p``, in [k_min, k_max]."""

    p: float
    k_max: int
    k_min: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int | float) or not 0 < self.p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.p!r}")
        check_bounds(self.k_min, self.k_max)

    def __str__(self) -> str:
        return f"top-p {self.p:g} ({self.k_min}..{self.k_max})"


@dataclass(frozen=True)
class LearnedBudget:
    """A learned k per query in [k_min, k_max] (the head is a :class:`BudgetHead`)."""

    k_max: int
    k_min: int = 1

    def __post_init__(self) -> None:
        check_bounds(self.k_min, self.k_max)

    def __str__(self) -> str:
        return f"budget ({self.k_min}..{self.k_max})"


AdaptiveK = TopP | LearnedBudget


def most_kept(k: int | AdaptiveK) -> int:
    """The most regions a row keeps: ``k`` itself, or an adaptive rule's ``k_max``."""
    return k if isinstance(k, int) else k.k_max


def describe_k(k: int | AdaptiveK) -> int | str:
    """``k`` for reports and JSON: the int itself, or the rule as text, "top-p 0.9 (1..16)"."""
    return k if isinstance(k, int) else str(k)


def slot_mask(counts: Tensor, k_max: int) -> Tensor:
    """(...) long counts -> (..., k_max) float, 1 for the first ``counts`` slots, else 0."""
    slots = torch.arange(k_max, device=counts.device)
    return (slots < counts.unsqueeze(-1)).float()


def slot_width(counts: Tensor, k_max: int) -> int:
    """How many slots a batch of adaptive rows runs on: its largest k, so that a batch (or a
    single question) of small k computes only that many; ``k_max`` while exporting or
    compiling, where the shape must not depend on the data.

    Args:
        counts: (...) long, the k of each row.
        k_max: the rule's largest k.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or counts.numel() == 0:
        return k_max
    return int(counts.max())


def top_p_counts(scores: Tensor, rule: TopP, mask: Tensor | None = None) -> Tensor:
    """How many regions each row keeps under the top-p rule.

    Args:
        scores: (..., N) scores; the rule reads their softmax over the valid regions.
        rule: p, k_min and k_max.
        mask: (..., N) bool, True = valid region, or None.

    Returns:
        (...) long: the smallest n whose n best regions hold at least ``p`` of the mass,
        clamped to [k_min, k_max].
    """
    probs = masked_scores(scores.detach(), mask).softmax(-1)
    ranked = probs.sort(-1, descending=True).values  # (..., N)
    cumulative = ranked.cumsum(-1)
    before = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], -1)
    return (before < rule.p).sum(-1).clamp(rule.k_min, rule.k_max)


@dataclass
class Budget:
    """What a :class:`BudgetHead` decides for each row.

    Attributes:
        slots: (B, H, Lq, k_max) float, exactly 1 for the first ``counts`` slots and 0 after
            them in the forward pass; its gradient is that of ``P(k > j)`` (straight-through).
        counts: (B, H, Lq) long, the k of each row, in [k_min, k_max].
        expected: (B, H, Lq) float, E[k] under the head's distribution, for the compute
            penalty ``lambda * E[k]``.
    """

    slots: Tensor
    counts: Tensor
    expected: Tensor


class BudgetHead(nn.Module):
    """Predicts how many regions each query keeps, one k per head, in [k_min, k_max].

    A linear layer maps the query to logits over the ``k_max - k_min + 1`` possible values of
    k for each head. While training, k is sampled from their softmax (exploration); in eval,
    it is the most likely value. See the module docstring for the straight-through gradient.

    Args:
        query_dim: feature size of the queries.
        num_heads: H, the attention heads; each gets its own k.
        rule: the range of k.
    """

    def __init__(self, query_dim: int, num_heads: int, rule: LearnedBudget) -> None:
        super().__init__()
        self.num_heads, self.k_min, self.k_max = num_heads, rule.k_min, rule.k_max
        self.proj = nn.Linear(query_dim, num_heads * (rule.k_max - rule.k_min + 1))

    def extra_repr(self) -> str:
        return f"k_min={self.k_min}, k_max={self.k_max}"

    def forward(self, query: Tensor, generator: torch.Generator | None = None) -> Budget:
        """Decide k for each of the (B, Lq, query_dim) queries and each head."""
        batch, length, _ = query.shape
        logits = self.proj(query).float().view(batch, length, self.num_heads, -1)
        logits = logits.transpose(1, 2)  # (B, H, Lq, K)
        probs = logits.softmax(-1)
        drawn = logits + gumbel_like(logits, generator) if self.training else logits
        counts = self.k_min + drawn.detach().argmax(-1)  # (B, H, Lq)
        values = torch.arange(self.k_min, self.k_max + 1, device=query.device)
        expected = (probs * values).sum(-1)
        # Slot j is kept when k > j: always for j < k_min, else with P(k >= j + 1).
        tail = probs.flip(-1).cumsum(-1).flip(-1)  # (..., K): P(k >= k_min + m)
        always = probs.new_ones(*probs.shape[:-1], self.k_min)
        relaxed = torch.cat([always, tail[..., 1:]], -1)  # (..., k_max)
        hard = slot_mask(counts, self.k_max)
        return Budget(hard + (relaxed - relaxed.detach()), counts, expected)


def check_budget_head(head: BudgetHead | None, rule: LearnedBudget) -> None:
    """Raise a ValueError unless ``head`` exists and predicts k over ``rule``'s range."""
    if head is None:
        raise ValueError(f"k={rule} needs a budget head: build the module with a LearnedBudget k")
    if (head.k_min, head.k_max) != (rule.k_min, rule.k_max):
        raise ValueError(
            f"k={rule} does not match the budget head, which predicts k in "
            f"{head.k_min}..{head.k_max}"
        )


@dataclass
class AdaptiveSelection(Selection):
    """A :class:`Selection` whose rows keep different numbers of regions.

    Attributes:
        indices: (..., w) the w best (or first drawn) regions of each row, w the width of
            ``slots`` (k_max, or the batch's largest k); only the first ``counts`` of them are
            kept, the rest are padding.
        slots: (..., w) float, exactly 1 for the kept slots and 0 for the padding (with a
            learned budget's straight-through gradient).
        counts: (...) long, how many regions each row keeps.
    """

    slots: Tensor | None = None
    counts: Tensor | None = None


def prefix_log_prob(scores: Tensor, indices: Tensor, slots: Tensor) -> Tensor:
    """Plackett-Luce log-probability of each row's kept draws: the first ``counts`` of
    ``indices``, drawn in order without replacement from softmax(scores).

    The first n draws of a sample of k_max are a sample of n, so this is the log-probability
    of the kept selection.

    Args:
        scores: (..., N) logits; -inf marks regions that can't be drawn.
        indices: (..., k_max) the draws, in order.
        slots: (..., k_max) 1 for the kept draws, then 0.

    Returns:
        (...) log-probabilities.
    """
    return (slots.detach() * plackett_luce_steps(scores, indices)).sum(-1)


def select_adaptive(
    scores: Tensor,
    slots: Tensor,
    *,
    estimator: str = "ste",
    mask: Tensor | None = None,
    tau: float = 1.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> AdaptiveSelection:
    """Select a different number of regions per row: the first ``counts`` of a top-``k_max``.

    :func:`select_topk` picks ``k_max`` regions with the estimator's rule (best first, or a
    sample while training gumbel and reinforce); each row keeps the first ones its ``slots``
    mark. The estimators work as in ``select_topk``: ste and gumbel send their relaxed
    gradient to every region's score, reinforce returns the log-probability of the kept draws.

    Args:
        scores: (..., N) selection scores.
        slots: (..., k_max) float, 1 for the first ``counts`` slots of each row, then 0
            (:func:`slot_mask`, or a :class:`Budget`'s slots); k_max <= the valid regions.
        estimator, mask, tau, training, generator: as in :func:`select_topk`.

    Returns:
        An :class:`AdaptiveSelection`: ``mask`` (..., N) exactly 0/1 with ``counts`` ones per
        row, ``indices`` and ``slots`` (..., k_max), ``counts`` (...), ``log_prob``.
    """
    base = select_topk(
        scores,
        slots.shape[-1],
        estimator=estimator,
        mask=mask,
        tau=tau,
        training=training,
        generator=generator,
    )
    # Exactly 0 in the forward pass; the ste/gumbel gradient of every score.
    straight = base.mask - base.mask.detach()
    keep = torch.zeros_like(base.mask).scatter(-1, base.indices, slots.to(base.mask.dtype))
    log_prob = None
    if base.log_prob is not None:
        log_prob = prefix_log_prob(masked_scores(scores, mask), base.indices, slots)
    return AdaptiveSelection(
        mask=keep + straight,
        indices=base.indices,
        log_prob=log_prob,
        slots=slots,
        counts=slots.detach().sum(-1).round().long(),
    )


def masked_softmax(scores: Tensor, slots: Tensor, sink: Tensor | None = None) -> Tensor:
    """Softmax of (..., k) ``scores`` over the slots that (..., k) ``slots`` keep.

    The kept slots' weights are the softmax over them alone; the others are exactly 0. The
    slots multiply the exponentials, so a learned budget's gradient reaches them. A ``sink``
    logit (broadcast to (..., 1)) joins the softmax as one more kept entry, left out of the
    result, so that the weights then sum to less than 1.
    """
    shift = scores.detach().amax(-1, keepdim=True)
    if sink is not None:
        shift = torch.maximum(shift, sink.detach())
    weighted = (scores - shift).exp() * slots.to(scores.dtype)
    total = weighted.sum(-1, keepdim=True)
    if sink is not None:
        total = total + (sink - shift).exp()
    return weighted / total.clamp_min(torch.finfo(weighted.dtype).tiny)
