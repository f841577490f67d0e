"""Hard, soft and hybrid (top-k then softmax) attention for PyTorch.

``select_topk`` (top-k masks and their gradient estimators), ``HybridAttention`` (soft, hard
or hybrid cross-attention) and ``TokenSelector`` (keep the k tokens a query scores highest,
fold the rest into one, as token-pruning ViTs do between blocks).

>>> from hybrid_attention import HybridAttention, TokenSelector, select_topk
"""

from hybrid_attention.attention import MODES, AttentionOutput, HybridAttention, gather_regions
from hybrid_attention.selection import (
    ESTIMATORS,
    MovingAverageBaseline,
    Selection,
    plackett_luce_log_prob,
    reinforce_loss,
    select_topk,
    selection_entropy,
)
from hybrid_attention.tokens import TokenSelection, TokenSelector, num_kept

__all__ = [
    "ESTIMATORS",
    "MODES",
    "AttentionOutput",
    "HybridAttention",
    "MovingAverageBaseline",
    "Selection",
    "TokenSelection",
    "TokenSelector",
    "gather_regions",
    "num_kept",
    "plackett_luce_log_prob",
    "reinforce_loss",
    "select_topk",
    "selection_entropy",
]

__version__ = "0.1.0"
