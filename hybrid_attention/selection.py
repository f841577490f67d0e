"""Top-k selection of regions and the gradient estimators that train it.

A selection keeps ``k`` of ``N`` regions. Its forward value is a mask of exact zeros and ones;
what differs between estimators is how (and whether) a gradient reaches the scores:

- ``ste``: straight-through; backward as if the mask were ``softmax(scores / tau)``.
- ``gumbel``: when training, top-k of Gumbel-perturbed scores (a sample of k regions without
  replacement); backward straight through ``softmax(perturbed / tau)``. Deterministic top-k in
  eval.
- ``reinforce``: when training, a sample of k regions without replacement from
  ``softmax(scores)``; no gradient through the mask, but the Plackett-Luce log-probability of
  the sample, for :func:`reinforce_loss`. Deterministic top-k in eval.
- ``ste-soft``: straight-through with soft attention as the selection's surrogate. The mask
  itself is plain top-k (no gradient, as ``none``); ``HybridAttention`` adds the gradient that
  soft attention over every valid region would have, so a region outside the top k learns as
  fast as under soft attention instead of through a relaxed mask times its small weight.
  Where there is no attention weighting (``TokenSelector``) it is ``ste``.
- ``none``: plain top-k, no gradient through the selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

ESTIMATORS = ("ste", "ste-soft", "gumbel", "reinforce", "none")


@dataclass
class Selection:
    """The result of :func:`select_topk`.

    Attributes:
        mask: (..., N) float, exactly 0 or 1 in the forward pass; carries the estimator's
            gradient for ``ste`` and ``gumbel``.
        indices: (..., k) long, the selected regions, best (or first drawn) first.
        log_prob: (...) Plackett-Luce log-probability of the sampled selection for
            ``reinforce`` while training, else None.
    """

    mask: Tensor
    indices: Tensor
    log_prob: Tensor | None = None


def check_estimator(estimator: str) -> str:
    """Return ``estimator`` if it is known, else raise a ValueError naming it."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    return estimator


def check_tau(tau: float) -> float:
    """Return ``tau`` as a float if it is > 0, else raise a ValueError naming it."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    return float(tau)


def check_k(k: int, num_regions: int | None = None) -> int:
    """Return ``k`` if it is an int >= 1 (and <= ``num_regions`` when given)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if num_regions is not None and k > num_regions:
        raise ValueError(f"k={k} is greater than the number of regions ({num_regions})")
    return k


def masked_scores(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Scores with invalid regions set to -inf. scores (..., N), mask (..., N) bool or None."""
    if mask is None:
        return scores
    return scores.masked_fill(~mask, float("-inf"))


def gumbel_like(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise with the shape, dtype and device of ``scores``."""
    uniform = torch.rand(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=generator
    )
    tiny = torch.finfo(scores.dtype).tiny
    return -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))


def plackett_luce_log_prob(scores: Tensor, indices: Tensor) -> Tensor:
    """Log-probability of drawing ``indices`` in order, without replacement, from softmax(scores).

    log p = sum_j [ s_{i_j} - logsumexp(s over the regions not drawn before step j) ].

    Args:
        scores: (..., N) logits; -inf marks regions that can't be drawn.
        indices: (..., k) the draws, in order.

    Returns:
        (...) log-probabilities.
    """
    return plackett_luce_steps(scores, indices).sum(-1)


def plackett_luce_steps(scores: Tensor, indices: Tensor) -> Tensor:
    """(..., k): the log-probability of each draw of ``indices`` given the draws before it
    (the terms of :func:`plackett_luce_log_prob`). scores (..., N), indices (..., k)."""
    remaining = scores
    steps = []
    for step in range(indices.shape[-1]):
        drawn = indices[..., step : step + 1]
        steps.append(remaining.log_softmax(-1).gather(-1, drawn).squeeze(-1))
        remaining = remaining.scatter(-1, drawn, float("-inf"))
    return torch.stack(steps, dim=-1)


def select_topk(
    scores: Tensor,
    k: int,
    *,
    estimator: str = "ste",
    mask: Tensor | None = None,
    tau: float = 1.0,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> Selection:
    """Select ``k`` of the ``N`` regions along the last dimension of ``scores``.

    Args:
        scores: (..., N) selection scores (higher = more likely to be kept).
        k: how many regions to keep; 1 <= k <= the number of valid regions of every row.
        estimator: one of ``ESTIMATORS`` (see the module docstring).
        mask: (..., N) bool, True = valid region. Invalid regions are never selected.
        tau: temperature of the relaxed softmax that carries the ste/gumbel gradient.
        training: sample (gumbel, reinforce) when True; deterministic top-k when False.
        generator: optional random generator for the gumbel and reinforce samples.

    Returns:
        A :class:`Selection` with ``mask`` (..., N), ``indices`` (..., k) and ``log_prob``.
    """
    check_estimator(estimator)
    check_k(k, scores.shape[-1])
    check_tau(tau)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = valid), got {mask.dtype}")
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}"
            )
        fewest_valid = int(mask.sum(-1).min())
        if k > fewest_valid:
            raise ValueError(f"k={k} is greater than the number of valid regions ({fewest_valid})")
    logits = masked_scores(scores, mask)

    sampling = training and estimator in ("gumbel", "reinforce")
    perturbed = logits + gumbel_like(logits, generator) if sampling else logits
    # Top-k of Gumbel-perturbed logits is an exact sample of k without replacement.
    indices = perturbed.detach().topk(k, dim=-1).indices
    hard = torch.zeros_like(scores).scatter(-1, indices, 1.0)

    if estimator in ("ste", "gumbel"):
        relaxed = torch.softmax(perturbed / tau, dim=-1)
        # Parenthesised so that the forward value is exactly `hard`.
        return Selection(mask=hard + (relaxed - relaxed.detach()), indices=indices)
    if estimator == "reinforce" and training:
        return Selection(
            mask=hard, indices=indices, log_prob=plackett_luce_log_prob(logits, indices)
        )
    return Selection(mask=hard, indices=indices)


def selection_entropy(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Entropy (nats) of softmax(scores) over valid regions: (..., N) -> (...).

    The entropy bonus of Show, Attend and Tell: adding it to the objective keeps a
    REINFORCE policy from collapsing onto a few regions too early.
    """
    log_p = masked_scores(scores, mask).log_softmax(-1)
    p = log_p.exp()
    return -(p * log_p.nan_to_num(neginf=0.0)).sum(-1)


def reinforce_loss(
    log_prob: Tensor,
    reward: Tensor,
    baseline: Tensor | float,
    *,
    entropy: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """The score-function (REINFORCE) surrogate loss, to be minimised.

    loss = -mean((reward - baseline) * log_prob) - entropy_weight * mean(entropy)

    Args:
        log_prob: (B, ...) log-probability of each sampled selection.
        reward: (B,) reward per example (e.g. the negative task loss); no gradient flows into it.
        baseline: scalar or (B,) baseline subtracted from the reward to reduce variance.
        entropy: optional (B, ...) policy entropy for the exploration bonus.
        entropy_weight: weight of the entropy bonus.

    Returns:
        A scalar tensor.
    """
    advantage = (reward - baseline).detach()
    advantage = advantage.reshape(advantage.shape + (1,) * (log_prob.dim() - advantage.dim()))
    loss = -(advantage * log_prob).mean()
    if entropy is not None and entropy_weight:
        loss = loss - entropy_weight * entropy.mean()
    return loss


class MovingAverageBaseline(nn.Module):
    """An exponential moving average of the reward, the usual REINFORCE baseline.

    Kept as buffers so that it is saved in the ``state_dict`` and restored on resume.

    Args:
        decay: weight of the old value in each update, in [0, 1).
    """

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, reward: Tensor) -> Tensor:
        """Return the baseline to use for ``reward`` (B,), then fold ``reward`` into it."""
        mean = reward.detach().float().mean()
        baseline = torch.where(self.initialized, self.value, mean)
        if self.training:
            self.value.copy_(self.decay * baseline + (1.0 - self.decay) * mean)
            self.initialized.fill_(True)
        return baseline


class GroupedMovingAverageBaseline(MovingAverageBaseline):
    """A moving-average reward baseline per group of examples (a question type, say).

    Rewards differ by group (some questions are easier than others): a baseline per group
    takes that difference out of the advantage, where one global baseline leaves it in as
    variance. Each row's baseline is the moving average of its group's past rewards; a group
    not seen yet starts from the global moving average (of every group's rewards), which is
    also kept. Without groups it is :class:`MovingAverageBaseline`. All are buffers, saved in
    the ``state_dict``.

    Args:
        num_groups: G, the number of groups; group ids are 0..G-1.
        decay: weight of the old value in each update, in [0, 1).
    """

    def __init__(self, num_groups: int, decay: float = 0.9) -> None:
        super().__init__(decay)
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an integer >= 1, got {num_groups!r}")
        self.num_groups = num_groups
        self.register_buffer("group_value", torch.zeros(num_groups))
        self.register_buffer("group_initialized", torch.zeros(num_groups, dtype=torch.bool))

    def forward(self, reward: Tensor, group: Tensor | None = None) -> Tensor:
        """Return the baseline of each row, then fold this batch's rewards into the averages.

        Args:
            reward: (B,) rewards.
            group: (B,) long group ids in 0..G-1, or None for the global baseline alone.

        Returns:
            (B,) each row's group baseline (the global one for a group not seen before), or
            the scalar global baseline when ``group`` is None.
        """
        fallback = super().forward(reward)  # () the global baseline, before this batch
        if group is None:
            return fallback
        if group.shape != reward.shape:
            raise ValueError(
                f"group shape {tuple(group.shape)} does not match reward shape "
                f"{tuple(reward.shape)}"
            )
        baselines = torch.where(self.group_initialized, self.group_value, fallback)  # (G,)
        if self.training:
            rewards = reward.detach().float()
            sums = rewards.new_zeros(self.num_groups).index_add_(0, group, rewards)  # (G,)
            counts = rewards.new_zeros(self.num_groups).index_add_(
                0, group, torch.ones_like(rewards)
            )
            present = counts > 0
            updated = self.decay * baselines + (1.0 - self.decay) * sums / counts.clamp_min(1.0)
            self.group_value.copy_(torch.where(present, updated, self.group_value))
            self.group_initialized.logical_or_(present)
        return baselines[group]
