"""Hard, soft and hybrid (top-k then softmax) attention for PyTorch.

``select_topk`` (top-k masks and their gradient estimators), ``select_adaptive`` with the
rules ``TopP`` and ``LearnedBudget`` (a k per row), ``HybridAttention`` (soft, hard or hybrid
cross-attention) and ``TokenSelector`` (keep the k tokens a query scores highest, fold the
rest into one, as token-pruning ViTs do between blocks).

>>> from hybrid_attention import HybridAttention, TokenSelector, select_topk
"""

from hybrid_attention.adaptive import (
    AdaptiveK,
    AdaptiveSelection,
    Budget,
    BudgetHead,
    LearnedBudget,
    TopP,
    describe_k,
    most_kept,
    select_adaptive,
    top_p_counts,
)
from hybrid_attention.attention import MODES, AttentionOutput, HybridAttention, gather_regions
from hybrid_attention.selection import (
    ESTIMATORS,
    GroupedMovingAverageBaseline,
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
    "AdaptiveK",
    "AdaptiveSelection",
    "AttentionOutput",
    "Budget",
    "BudgetHead",
    "GroupedMovingAverageBaseline",
    "HybridAttention",
    "LearnedBudget",
    "MovingAverageBaseline",
    "Selection",
    "TokenSelection",
    "TokenSelector",
    "TopP",
    "describe_k",
    "gather_regions",
    "most_kept",
    "num_kept",
    "plackett_luce_log_prob",
    "reinforce_loss",
    "select_adaptive",
    "select_topk",
    "selection_entropy",
    "top_p_counts",
]

__version__ = "0.1.0"
