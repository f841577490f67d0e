"""HybridAttention: multi-head cross-attention from queries to regions, soft, hard or hybrid.

| mode   | forward                                          | backward                           |
|--------|--------------------------------------------------|------------------------------------|
| soft   | softmax over all valid regions                   | ordinary backprop                  |
| hard   | top-k regions, weight 1/k each                   | the selection estimator            |
| hybrid | top-k regions, softmax over the selected k only  | softmax backprop + the estimator   |

In hard and hybrid modes the value projection and the aggregation run on the k selected
regions only. The one exception is ``ste``, ``ste-soft`` or ``gumbel`` while gradients are
computed: a straight-through gradient tells every region how the output would change if it
were kept, which needs every region's value, so that path computes the dense (N-wide) form.
Its forward value is the same. Under ``ste-soft`` that gradient is soft attention's: the
weights are the mode's plus ``p - p.detach()``, with ``p`` the softmax over every valid region.

With ``sink=True`` each head has a learned sink logit that joins the softmax (over every region
in soft mode, over the selected k in hybrid mode) as one more entry whose value is zero, as
gpt-oss's attention sinks do: a query can then put weight on no region, so that the weights
over the regions sum to less than 1, rather than park it on a region. Hard mode has no softmax
and ignores it.

``k`` is an int, or an adaptive rule (``hybrid_attention.adaptive``): :class:`TopP` or
:class:`LearnedBudget`. Then each row keeps its own number of regions: every row of a batch
gathers as many regions as the batch's largest k, and the slots past its own k are masked
(weight exactly 0). So a single question computes exactly its own k. Training a learned
budget, and exporting, run on ``k_max`` slots instead (see :func:`slot_width`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid_attention.adaptive import (
    AdaptiveK,
    AdaptiveSelection,
    BudgetHead,
    LearnedBudget,
    TopP,
    check_budget_head,
    masked_softmax,
    most_kept,
    select_adaptive,
    slot_mask,
    slot_width,
    top_p_counts,
)
from hybrid_attention.selection import (
    Selection,
    check_estimator,
    check_k,
    check_tau,
    masked_scores,
    select_topk,
)

MODES = ("soft", "hard", "hybrid")
# estimators whose gradient reaches every region's score through the dense weights
STRAIGHT_THROUGH = ("ste", "ste-soft", "gumbel")


@dataclass
class AttentionOutput:
    """What :class:`HybridAttention` returns.

    Attributes:
        output: (B, Lq, out_dim) the attended values, projected.
        weights: (B, H, Lq, N) attention weights, exactly 0 outside the selection. They sum
            to 1 over the regions, or to less with a sink (the rest is on no region).
        scores: (B, H, Lq, N) scaled dot-product scores (before masking), at least float32.
        indices: (B, H, Lq, k) selected regions, best first; None in soft mode. With an
            adaptive k it is as wide as the batch's largest k (:func:`slot_width`), and the
            slots past ``counts`` are padding.
        log_prob: (B, H, Lq) log-probability of a sampled selection (reinforce while
            training), else None.
        counts: (B, H, Lq) long, the regions each row kept (k, or its adaptive k); None in
            soft mode.
        expected_counts: (B, H, Lq) E[k] under a learned budget, for its compute penalty;
            else None.
    """

    output: Tensor
    weights: Tensor
    scores: Tensor
    indices: Tensor | None = None
    log_prob: Tensor | None = None
    counts: Tensor | None = None
    expected_counts: Tensor | None = None


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is known, else raise a ValueError naming it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def gather_regions(regions: Tensor, indices: Tensor) -> Tensor:
    """Pick the selected region tokens, so later layers can work on k tokens instead of N.

    Args:
        regions: (B, N, D) region tokens.
        indices: (B, ..., k) region indices per example, e.g. (B, H, Lq, k).

    Returns:
        (B, ..., k, D) the selected tokens.
    """
    batch, dim = regions.shape[0], regions.shape[-1]
    flat = indices.reshape(batch, -1)  # (B, M)
    picked = regions.gather(1, flat.unsqueeze(-1).expand(-1, -1, dim))  # (B, M, D)
    return picked.reshape(*indices.shape, dim)


class HybridAttention(nn.Module):
    """Multi-head cross-attention with soft, hard or hybrid (top-k then softmax) weighting.

    Args:
        query_dim: feature size of the queries.
        key_dim: feature size of the regions (default: ``query_dim``).
        dim: inner size, split over the heads (default: ``query_dim``).
        out_dim: output size (default: ``query_dim``).
        num_heads: number of heads; each head selects its own k regions.
        mode: ``"soft"``, ``"hard"`` or ``"hybrid"``.
        k: regions kept per head and query in hard and hybrid modes: an int, or an adaptive
            rule, :class:`TopP` or :class:`LearnedBudget` (which builds ``self.budget``, the
            head that predicts k; another rule can replace it later, and it can come back).
        estimator: gradient estimator of the selection, one of ``ESTIMATORS``.
        tau: temperature of the relaxed softmax used by ``ste`` and ``gumbel``.
        bias: whether the query, value and output projections have a bias. The key
            projection has none: a key bias adds the same q·b to every score of a query,
            which the softmax and the top-k ignore, so its gradient is rounding noise that
            Adam would turn into full-size steps.
        sink: give each head a learned sink logit (``sink_logit``, (H,), starting at 0) in
            the softmax of soft and hybrid modes, whose value is zero.

    ``mode``, ``k``, ``estimator`` and ``tau`` can be changed on a trained module.
    """

    def __init__(
        self,
        query_dim: int,
        *,
        key_dim: int | None = None,
        dim: int | None = None,
        out_dim: int | None = None,
        num_heads: int = 1,
        mode: str = "hybrid",
        k: int | AdaptiveK = 8,
        estimator: str = "ste",
        tau: float = 1.0,
        bias: bool = True,
        sink: bool = False,
    ) -> None:
        super().__init__()
        key_dim = key_dim or query_dim
        dim = dim or query_dim
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide dim={dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query_dim, self.key_dim = query_dim, key_dim
        self.budget = None
        if isinstance(k, LearnedBudget):
            self.budget = BudgetHead(query_dim, num_heads, k)
        self.mode, self.k, self.estimator, self.tau = mode, k, estimator, tau
        self.q_proj = nn.Linear(query_dim, dim, bias=bias)
        self.k_proj = nn.Linear(key_dim, dim, bias=False)
        self.v_proj = nn.Linear(key_dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, out_dim or query_dim, bias=bias)
        self.sink_logit = nn.Parameter(torch.zeros(num_heads)) if sink else None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_mode(value)

    @property
    def k(self) -> int | AdaptiveK:
        return self._k

    @k.setter
    def k(self, value: int | AdaptiveK) -> None:
        if isinstance(value, LearnedBudget):
            check_budget_head(self.budget, value)
        elif not isinstance(value, TopP):
            check_k(value)
        self._k = value

    @property
    def estimator(self) -> str:
        return self._estimator

    @estimator.setter
    def estimator(self, value: str) -> None:
        self._estimator = check_estimator(value)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        self._tau = check_tau(value)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, k={self.k}, estimator={self.estimator!r}, "
            f"num_heads={self.num_heads}, tau={self.tau}, sink={self.sink_logit is not None}"
        )

    def forward(
        self, query: Tensor, regions: Tensor, key_padding_mask: Tensor | None = None
    ) -> AttentionOutput:
        """Attend from ``query`` (B, Lq, query_dim) to ``regions`` (B, N, key_dim).

        ``key_padding_mask`` (B, N) bool follows ``nn.MultiheadAttention``: True marks a
        padded region, which is never attended to or selected.
        """
        valid = self._check_inputs(query, regions, key_padding_mask)
        q = self._split_heads(self.q_proj(query))  # (B, H, Lq, d)
        keys = self._split_heads(self.k_proj(regions))  # (B, H, N, d)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Lq, N)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # select in >= fp32
        if valid is not None:
            valid = valid[:, None, None, :].expand_as(scores)

        if self.mode == "soft":
            weights = self._softmax(masked_scores(scores, valid))
            values = self._split_heads(self.v_proj(regions))  # (B, H, N, d)
            out = weights.to(values.dtype) @ values
            return AttentionOutput(self._merge_heads(out), weights, scores)

        selection, slots, expected = self._select(query, scores, valid)
        if self.estimator in STRAIGHT_THROUGH and torch.is_grad_enabled():
            weights, out = self._aggregate_straight_through(
                scores, valid, selection, regions, slots
            )
        else:
            weights, out = self._aggregate_selected(scores, selection.indices, regions, slots)
        if isinstance(selection, AdaptiveSelection):
            counts = selection.counts
        else:
            counts = torch.full_like(selection.indices[..., 0], self.k)
        return AttentionOutput(
            self._merge_heads(out),
            weights,
            scores,
            selection.indices,
            selection.log_prob,
            counts,
            expected,
        )

    def _select(
        self, query: Tensor, scores: Tensor, valid: Tensor | None
    ) -> tuple[Selection, Tensor | None, Tensor | None]:
        """The selection from (B, H, Lq, N) ``scores``; with an adaptive k, also its slots
        (B, H, Lq, k_max), and under a learned budget E[k] (B, H, Lq); else None."""
        options = {
            "estimator": self.estimator,
            "mask": valid,
            "tau": self.tau,
            "training": self.training,
        }
        if isinstance(self.k, int):
            return select_topk(scores, self.k, **options), None, None
        if isinstance(self.k, TopP):
            counts = top_p_counts(scores, self.k, valid)
            slots = slot_mask(counts, slot_width(counts, self.k.k_max))
            return select_adaptive(scores, slots, **options), slots, None
        budget = self.budget(query)
        slots = budget.slots
        if not self.training:  # while training, every slot carries the budget's gradient
            slots = slots[..., : slot_width(budget.counts, self.k.k_max)]
        return select_adaptive(scores, slots, **options), slots, budget.expected

    def _aggregate_selected(
        self, scores: Tensor, indices: Tensor, regions: Tensor, slots: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Weights (B, H, Lq, N) and output (B, H, Lq, d) from the k selected regions only
        (with ``slots``, the kept slots of the k_max gathered)."""
        if self.mode == "hard" and slots is None:
            selected_weights = scores.new_full(indices.shape, 1.0 / self.k)
        elif self.mode == "hard":
            slots = slots.to(scores.dtype)
            selected_weights = slots / slots.sum(-1, keepdim=True)
        elif slots is None:
            selected_weights = self._softmax(scores.gather(-1, indices))  # (B, H, Lq, k)
        else:
            selected_weights = masked_softmax(scores.gather(-1, indices), slots, self._sink())
        values = self._project_selected_values(regions, indices)  # (B, H, Lq, k, d)
        out = torch.einsum("bhlk,bhlkd->bhld", selected_weights.to(values.dtype), values)
        weights = torch.zeros_like(scores).scatter(-1, indices, selected_weights)
        return weights, out

    def _aggregate_straight_through(
        self,
        scores: Tensor,
        valid: Tensor | None,
        selection: Selection,
        regions: Tensor,
        slots: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The dense form whose forward equals ``_aggregate_selected`` and whose backward
        carries the estimator's gradient to every region's score."""
        keep = selection.mask  # (B, H, Lq, N), forward exactly 0/1
        logits = masked_scores(scores, valid)
        probs = logits.softmax(-1)
        if self.mode == "hard":
            weights = keep / (self.k if slots is None else slots.sum(-1, keepdim=True))
        else:
            kept = keep * probs
            total = kept.sum(-1, keepdim=True)
            if self.sink_logit is not None:  # the sink's exp(s) / Z, as each region's is
                total = total + (self._sink() - logits.logsumexp(-1, keepdim=True)).exp()
            weights = kept / total.clamp_min(torch.finfo(kept.dtype).tiny)
        if self.estimator == "ste-soft":  # exactly 0 forward; soft attention's gradient
            weights = weights + (probs - probs.detach())
        values = self._split_heads(self.v_proj(regions))  # (B, H, N, d)
        return weights, weights.to(values.dtype) @ values

    def _sink(self) -> Tensor | None:
        """The sink logits shaped to join (B, H, Lq, .) scores, (1, H, 1, 1); None without."""
        if self.sink_logit is None:
            return None
        return self.sink_logit.float().view(1, -1, 1, 1)

    def _softmax(self, logits: Tensor) -> Tensor:
        """Softmax over the last dim of (B, H, Lq, M) ``logits``, the sink (if any) taking its
        share: (B, H, Lq, M) weights that sum to 1, or to less with a sink."""
        sink = self._sink()
        if sink is None:
            return logits.softmax(-1)
        joined = torch.cat([logits, sink.expand(*logits.shape[:-1], 1)], dim=-1)
        return joined.softmax(-1)[..., :-1]

    def _project_selected_values(self, regions: Tensor, indices: Tensor) -> Tensor:
        """Value projection of the selected regions only: (B, H, Lq, k, d)."""
        picked = gather_regions(regions, indices)  # (B, H, Lq, k, key_dim)
        weight = self.v_proj.weight.view(self.num_heads, self.head_dim, self.key_dim)
        values = torch.einsum("bhlkc,hdc->bhlkd", picked, weight.to(picked.dtype))
        if self.v_proj.bias is not None:
            bias = self.v_proj.bias.view(self.num_heads, 1, 1, self.head_dim)
            values = values + bias.to(values.dtype)
        return values

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, L, H * d) -> (B, H, L, d)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        """(B, H, L, d) -> (B, L, out_dim)."""
        batch, _, length, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(batch, length, -1))

    def _check_inputs(
        self, query: Tensor, regions: Tensor, key_padding_mask: Tensor | None
    ) -> Tensor | None:
        """Validate shapes; return the (B, N) bool mask of valid regions, or None."""
        if query.dim() != 3 or query.shape[-1] != self.query_dim:
            raise ValueError(
                f"query must have shape (B, Lq, {self.query_dim}), got {tuple(query.shape)}"
            )
        if regions.dim() != 3 or regions.shape[-1] != self.key_dim:
            raise ValueError(
                f"regions must have shape (B, N, {self.key_dim}), got {tuple(regions.shape)}"
            )
        if regions.shape[0] != query.shape[0]:
            raise ValueError(
                f"query batch size {query.shape[0]} != regions batch size {regions.shape[0]}"
            )
        if self.mode != "soft":
            check_k(most_kept(self.k), regions.shape[1])
        if key_padding_mask is None:
            return None
        if key_padding_mask.shape != regions.shape[:2] or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape {tuple(regions.shape[:2])}, "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        valid = ~key_padding_mask
        if not bool(valid.any(-1).all()):
            raise ValueError("key_padding_mask pads every region of some example")
        return valid
