"""TokenSelector: keep the k tokens that a query scores highest, fold the rest into one.

Token-pruning ViTs (EViT, DynamicViT) drop the tokens that matter least between two
transformer blocks, so the later blocks run on k tokens instead of N. Here a query (a
question, say) scores the tokens, or the caller passes the scores (the CLS attention: EViT's
question-agnostic rule), and the selection trains with the estimators of
:mod:`hybrid_attention.selection`:

    tokens (B, P + N, D) -> [P prefix tokens, unchanged]
                          + [k kept tokens, in their original order]
                          + [1 token folding the N - k dropped ones]   (when ``fold``)

Forward, the kept tokens are exactly the input tokens. Backward, each kept token is scaled
by the selection mask's straight-through value (1 in the forward pass), so the ste and
gumbel gradients reach the scores, as through :func:`select_topk`'s mask. The folded token
is the softmax(scores)-weighted mean of the dropped tokens (EViT's inattentive token
fusion), whose weights give the scores a gradient too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrid_attention.attention import gather_regions
from hybrid_attention.selection import check_estimator, check_tau, select_topk


@dataclass
class TokenSelection:
    """What :class:`TokenSelector` returns; P = ``num_prefix``, N scored tokens, k kept.

    Attributes:
        tokens: (B, P + k (+ 1), D) the prefix tokens, then the kept tokens in their
            original order (ascending index, so position-dependent code downstream still
            reads them left to right), then the folded token when ``fold``.
        indices: (B, k) the kept tokens, as indices into the N scored (non-prefix) tokens,
            ascending.
        mask: (B, N) exactly 0/1 in the forward pass, 1 at the kept tokens; carries the
            estimator's gradient for ``ste`` and ``gumbel``.
        scores: (B, N) selection scores (before padding is masked), at least float32.
        padding: (B, P + k (+ 1)) bool, True where an output slot is padding: a padded
            prefix token, or the folded token of a row that had nothing left to fold. Pass
            it on as the next block's ``key_padding_mask``.
        log_prob: (B,) log-probability of the sampled selection (``reinforce`` while
            training), else None.
    """

    tokens: Tensor
    indices: Tensor
    mask: Tensor
    scores: Tensor
    padding: Tensor
    log_prob: Tensor | None = None


def check_keep(keep: int | float) -> int | float:
    """Return ``keep`` if it is an int >= 1 (a count) or a float in (0, 1] (a ratio)."""
    count = isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1
    ratio = isinstance(keep, float) and 0.0 < keep <= 1.0
    if not (count or ratio):
        raise ValueError(f"keep must be an int >= 1 or a float in (0, 1], got {keep!r}")
    return keep


def num_kept(keep: int | float, num_tokens: int) -> int:
    """How many of ``num_tokens`` tokens ``keep`` keeps: a count as it is, a ratio rounded up
    (at least 1). Rounded first, so that 0.07 * 100 = 7.000000000000001 keeps 7, not 8."""
    if isinstance(keep, float):
        return num_tokens if keep == 1.0 else max(1, math.ceil(round(keep * num_tokens, 9)))
    return keep


class TokenSelector(nn.Module):
    """Keep the k tokens of a sequence that a query (or given scores) ranks highest.

    The scorer is a scaled dot product of learned projections of the layer-normalised
    query and tokens, Glorot-initialised so the scores differ from the first step (see
    :meth:`reset_parameters`); the key projection has no bias, as in
    :class:`~hybrid_attention.HybridAttention`.

    Args:
        dim: width D of the tokens.
        keep: tokens kept: an int is a count k; a float in (0, 1] is a ratio of the valid
            tokens, rounded up and at least 1 (with padding, of the row with the fewest
            valid tokens, since every row keeps the same k). ``keep=1`` keeps one token,
            ``keep=1.0`` all of them. When k is every token the output is the input.
        query_dim: width of the query (default: ``dim``).
        estimator: gradient estimator of the selection, one of ``ESTIMATORS`` (``ste-soft``
            works as ``ste`` here).
        tau: temperature of the relaxed softmax used by ``ste`` and ``gumbel``.
        fold: append one token, the softmax(scores)-weighted mean of the dropped tokens.
        num_prefix: leading tokens (CLS, registers) that are always kept and never scored.

    ``keep``, ``estimator`` and ``tau`` can be changed on a trained module.
    """

    def __init__(
        self,
        *,
        dim: int,
        keep: int | float,
        query_dim: int | None = None,
        estimator: str = "ste",
        tau: float = 1.0,
        fold: bool = False,
        num_prefix: int = 0,
    ) -> None:
        super().__init__()
        if num_prefix < 0:
            raise ValueError(f"num_prefix must be >= 0, got {num_prefix!r}")
        self.dim, self.query_dim = dim, query_dim or dim
        self.keep, self.estimator, self.tau = keep, estimator, tau
        self.fold, self.num_prefix = fold, num_prefix
        self.query_norm = nn.LayerNorm(self.query_dim)
        self.token_norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(self.query_dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.reset_parameters()

    @property
    def keep(self) -> int | float:
        return self._keep

    @keep.setter
    def keep(self, value: int | float) -> None:
        self._keep = check_keep(value)

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
            f"dim={self.dim}, query_dim={self.query_dim}, keep={self.keep}, "
            f"estimator={self.estimator!r}, tau={self.tau}, fold={self.fold}, "
            f"num_prefix={self.num_prefix}"
        )

    def reset_parameters(self) -> None:
        """Glorot projections (zero bias) and identity norms.

        With a std-0.02 init on both projections every score starts near 0 and each
        projection's gradient is proportional to the other one: a saddle the selection is
        slow to leave. A model whose own init overwrites ``nn.Linear`` layers (transformers'
        ``post_init``) should call this afterwards.
        """
        for norm in (self.query_norm, self.token_norm):
            norm.reset_parameters()
        for projection in (self.q_proj, self.k_proj):
            nn.init.xavier_uniform_(projection.weight)
        nn.init.zeros_(self.q_proj.bias)

    def forward(
        self,
        tokens: Tensor,
        query: Tensor | None = None,
        *,
        scores: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        estimator: str | None = None,
    ) -> TokenSelection:
        """Select from ``tokens`` (B, P + N, D), scored by ``query`` or given ``scores``.

        Args:
            tokens: (B, P + N, D), the P = ``num_prefix`` prefix tokens first.
            query: (B, query_dim) or (B, 1, query_dim); scores the N tokens.
            scores: (B, N) scores to select by instead of a query (higher = kept); the
                scorer is not used. The folded token weighs the dropped tokens by their
                softmax(scores): log-probabilities (the log of an attention, say) weigh them
                by those probabilities.
            key_padding_mask: (B, P + N) bool, True = padding (as in
                ``nn.MultiheadAttention``); padding is never kept nor folded.
            estimator: the estimator of this call instead of the module's, e.g. ``"none"``
                for given scores that the selection must not train (plain top-k).

        Returns:
            A :class:`TokenSelection`.
        """
        valid = self._check_inputs(tokens, query, scores, key_padding_mask)  # (B, N) or None
        estimator = self.estimator if estimator is None else check_estimator(estimator)
        if estimator == "ste-soft":  # no attention weighting here to take a soft gradient from
            estimator = "ste"
        batch = tokens.shape[0]
        prefix, scored = tokens[:, : self.num_prefix], tokens[:, self.num_prefix :]
        if scores is None:
            scores = self._score(scored, query.reshape(batch, self.query_dim))
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # select in >= fp32
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

        num_tokens = scored.shape[1]
        k = self._num_kept(num_tokens, valid)
        if k == num_tokens:
            return self._keep_everything(tokens, scores, key_padding_mask, estimator)

        selection = select_topk(
            scores,
            k,
            estimator=estimator,
            mask=valid,
            tau=self.tau,
            training=self.training,
        )
        indices = selection.indices.sort(-1).values  # (B, k), original order
        straight_through = selection.mask.gather(-1, indices).to(tokens.dtype)  # (B, k), all 1
        kept = gather_regions(scored, indices) * straight_through.unsqueeze(-1)  # (B, k, D)
        parts = [prefix, kept]
        slot_padding = [
            key_padding_mask[:, : self.num_prefix],
            key_padding_mask.new_zeros(batch, k),
        ]
        if self.fold:
            dropped = selection.mask.detach() == 0  # (B, N)
            if valid is not None:
                dropped = dropped & valid
            folded, nothing_folded = self._fold(scored, scores, dropped)
            parts.append(folded.unsqueeze(1))  # (B, 1, D)
            slot_padding.append(nothing_folded.unsqueeze(1))
        return TokenSelection(
            tokens=torch.cat(parts, dim=1),
            indices=indices,
            mask=selection.mask,
            scores=scores,
            padding=torch.cat(slot_padding, dim=1),
            log_prob=selection.log_prob,
        )

    def _score(self, scored: Tensor, query: Tensor) -> Tensor:
        """(B, N, D) tokens and (B, query_dim) query -> (B, N) scaled dot-product scores."""
        q = self.q_proj(self.query_norm(query))  # (B, D)
        keys = self.k_proj(self.token_norm(scored))  # (B, N, D)
        return torch.einsum("bd,bnd->bn", q, keys) / math.sqrt(self.dim)

    def _fold(self, scored: Tensor, scores: Tensor, dropped: Tensor) -> tuple[Tensor, Tensor]:
        """The softmax(scores)-weighted mean of the ``dropped`` (B, N) tokens: (B, D), and
        (B,) bool, True for a row with nothing to fold (its folded token is zero)."""
        anything = dropped.any(-1, keepdim=True)  # (B, 1)
        # A row with nothing to fold gets zero weights, not a softmax over no tokens (NaN).
        logits = scores.masked_fill(~dropped, float("-inf")).masked_fill(~anything, 0.0)
        weights = logits.softmax(-1) * dropped  # (B, N)
        folded = torch.einsum("bn,bnd->bd", weights.to(scored.dtype), scored)
        return folded, ~anything.squeeze(-1)

    def _keep_everything(
        self, tokens: Tensor, scores: Tensor, key_padding_mask: Tensor, estimator: str
    ) -> TokenSelection:
        """The selection of every token: the input itself, padding still marked as such."""
        batch, num_tokens = scores.shape
        indices = torch.arange(num_tokens, device=tokens.device).expand(batch, num_tokens)
        # Keeping everything is certain (log 1 = 0), so a REINFORCE loop runs on unchanged.
        sampling = estimator == "reinforce" and self.training
        return TokenSelection(
            tokens=tokens,
            indices=indices,
            mask=torch.ones_like(scores),
            scores=scores,
            padding=key_padding_mask,
            log_prob=scores.new_zeros(batch) if sampling else None,
        )

    def _num_kept(self, num_tokens: int, valid: Tensor | None) -> int:
        """k for this batch; raise if some row has fewer than k (but not all N) valid tokens."""
        counts = None if valid is None else valid.sum(-1)  # (B,)
        if self.keep == 1.0 and isinstance(self.keep, float):
            return num_tokens
        fewest = num_tokens if counts is None else int(counts.min())
        k = num_kept(self.keep, fewest)
        if k > num_tokens:
            raise ValueError(f"keep={self.keep} is more than the {num_tokens} tokens to select")
        if k < num_tokens and counts is not None and bool((counts < k).any()):
            row = int((counts < k).nonzero()[0, 0])
            raise ValueError(
                f"keep={self.keep} keeps k={k} tokens, but row {row} has only "
                f"{int(counts[row])} valid tokens (of {num_tokens})"
            )
        return k

    def _check_inputs(
        self,
        tokens: Tensor,
        query: Tensor | None,
        scores: Tensor | None,
        key_padding_mask: Tensor | None,
    ) -> Tensor | None:
        """Validate shapes; return the (B, N) bool mask of valid scored tokens, or None.

        A (B, 1, query_dim) query is accepted as well as (B, query_dim).
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(
                f"tokens must have shape (B, L, {self.dim}), got {tuple(tokens.shape)}"
            )
        batch, length, _ = tokens.shape
        if length <= self.num_prefix:
            raise ValueError(
                f"tokens has {length} tokens: none left to select after "
                f"num_prefix={self.num_prefix}"
            )
        if (query is None) == (scores is None):
            raise ValueError("pass exactly one of query and scores")
        query_shapes = ((batch, self.query_dim), (batch, 1, self.query_dim))
        if query is not None and query.shape not in query_shapes:
            raise ValueError(
                f"query must have shape ({batch}, {self.query_dim}) or ({batch}, 1, "
                f"{self.query_dim}), got {tuple(query.shape)}"
            )
        num_tokens = length - self.num_prefix
        if scores is not None and scores.shape != (batch, num_tokens):
            raise ValueError(
                f"scores must have shape ({batch}, {num_tokens}) (one per non-prefix token), "
                f"got {tuple(scores.shape)}"
            )
        if key_padding_mask is None:
            return None
        if key_padding_mask.shape != (batch, length) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape {(batch, length)}, "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        return ~key_padding_mask[:, self.num_prefix :]
