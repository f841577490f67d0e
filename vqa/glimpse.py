"""The glimpse readout: an auxiliary answer from the question and one soft glimpse of the regions.

The fusion's scores decide which regions hybrid and hard attention pass on to the reasoner.
From the answers alone the answer loss asks little of their ranking: the reasoner, a
transformer over the question and the regions it is passed, finds the asked-about object among
them itself. This head asks the scores to find it, as a classic soft-attention VQA model does: a
softmax of the same scores over every region pools one vector, the glimpse, and a small MLP
must answer from the question's vector and that glimpse alone. A colour question can then be
answered only if the glimpse holds the asked-about object, so the scores learn to put it on
top, and every region's score gets that gradient, selected or not.

The readout is a training loss (``glimpse_loss_weight``); answering still goes through the
fusion's hard top-k and the reasoner.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GlimpseReadout(nn.Module):
    """Answer logits from a question vector and a softmax-weighted pool of the regions."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, num_labels)
        )

    def forward(self, question: Tensor, scores: Tensor, regions: Tensor) -> Tensor:
        """Answer logits from the question and the glimpse that ``scores`` take of ``regions``.

        Args:
            question: (B, D) the question's vector.
            scores: (B, H, M) fusion scores over the M region tokens, one row per head and
                hop; -inf where a region is absent. Each row's softmax pools one glimpse; the
                H glimpses are averaged.
            regions: (B, M, D) the region tokens the scores were computed against.

        Returns:
            (B, num_labels) logits.
        """
        weights = torch.softmax(scores.float(), dim=-1).to(regions.dtype)  # (B, H, M)
        glimpse = torch.einsum("bhm,bmd->bd", weights, regions) / scores.shape[1]  # (B, D)
        return self.mlp(torch.cat([question, glimpse, question * glimpse], dim=-1))
