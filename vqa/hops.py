"""Multi-hop fusion: each hop reads another part of the question and selects its own regions.

A question such as "is the red object the same shape as the circle?" is about two objects. One
query (the question's CLS vector) has to find both in one selection. With ``fusion_hops`` H > 1
the fusion runs H times, MAC-style (Hudson & Manning 2018, "Compositional attention networks
for machine reasoning"): the query of hop h + 1 is an attention-weighted sum of the question's
tokens, steered by the query of hop h and what hop h attended to (MAC's control unit), so a
later hop can look for the object that the earlier one did not find. Every hop uses the same
``HybridAttention`` (hard top-k, then soft over its k, in hybrid mode) with its own selection.

:func:`stack_hops` joins the hops' outputs as if they were more heads: weights and scores
(B, heads * H, 1, N), selections (B, heads * H, 1, k) and one attended vector per hop (B, H, D),
so that the reasoner, the losses, evaluation and the app read a multi-hop fusion like a
multi-head one. So the pointing loss (data with boxes) pulls every hop toward all of a
question's targets, as it does every head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_attention import AttentionOutput


class HopQuery(nn.Module):
    """The next hop's query: attention over the question's tokens, steered by the previous
    hop's query and attended vector.

    Args:
        dim: width of the question tokens, the query and the attended vector.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.steer = nn.Linear(2 * dim, dim)

    def forward(self, tokens: Tensor, mask: Tensor, query: Tensor, attended: Tensor) -> Tensor:
        """The next query (B, 1, D).

        Args:
            tokens: (B, L, D) the question's tokens, CLS first.
            mask: (B, L) 1 for a real token, 0 for padding.
            query: (B, 1, D) the previous hop's query.
            attended: (B, 1, D) what the previous hop attended to.
        """
        steer = self.steer(torch.cat([query, attended], dim=-1))  # (B, 1, D)
        scores = steer @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1])  # (B, 1, L)
        scores = scores.float().masked_fill(~mask.bool()[:, None, :], float("-inf"))
        return scores.softmax(-1).to(tokens.dtype) @ tokens  # (B, 1, D)


def cat_optional(tensors: list[Tensor | None], dim: int) -> Tensor | None:
    """``torch.cat`` of the tensors, or None when they are None (soft mode has no selection)."""
    if tensors[0] is None:
        return None
    return torch.cat(tensors, dim=dim)


def stack_hops(hops: list[AttentionOutput]) -> AttentionOutput:
    """The hops' outputs as one multi-head output.

    Args:
        hops: H outputs of the same ``HybridAttention`` for one query each: output (B, 1, D),
            weights and scores (B, heads, 1, N), selections (B, heads, 1, k).

    Returns:
        output (B, H, D), one attended vector per hop; weights, scores, indices, log_prob,
        counts and expected_counts joined over the heads (dim 1), hop after hop:
        (B, heads * H, 1, ...). With an adaptive k, indices are as wide as the widest hop's.
    """
    if len(hops) == 1:
        return hops[0]
    fields = ("weights", "scores", "log_prob", "counts", "expected_counts")
    joined = {name: cat_optional([getattr(hop, name) for hop in hops], dim=1) for name in fields}
    indices = None
    if hops[0].indices is not None:
        # With an adaptive k each hop is as wide as its own largest k: pad to the widest with
        # region 0; those slots lie past the hop's counts, where the reasoner masks them.
        width = max(hop.indices.shape[-1] for hop in hops)
        padded = [F.pad(hop.indices, (0, width - hop.indices.shape[-1])) for hop in hops]
        indices = torch.cat(padded, dim=1)
    output = torch.cat([hop.output for hop in hops], dim=1)
    return AttentionOutput(output=output, indices=indices, **joined)
