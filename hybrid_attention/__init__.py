"""Hard, soft and hybrid (top-k then softmax) attention for PyTorch.

>>> from hybrid_attention import HybridAttention, select_topk
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

__all__ = [
    "ESTIMATORS",
    "MODES",
    "AttentionOutput",
    "HybridAttention",
    "MovingAverageBaseline",
    "Selection",
    "gather_regions",
    "plackett_luce_log_prob",
    "reinforce_loss",
    "select_topk",
    "selection_entropy",
]

__version__ = "0.1.0"
