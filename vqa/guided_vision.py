"""The vision encoder, guided by the question: FiLM before its blocks, a token selection between.

Unguided, each image is encoded once and its tokens are shared by the questions about it.
Guided, the ViT's blocks run one by one:

```
pixels (U, C, H, W) -> stem + positions -> blocks[:s] (per image, unless FiLM)
    -> tokens of each question's image (B, P + N, D)
    -> TokenSelector scores the N patch tokens with the question: keep k (+ 1 folded)
    -> blocks[s:] on P + k (+ 1) tokens, per question -> final norm -> (B, k (+ 1), D)
```
Positions are added before any block, so a kept token keeps its place. EViT's question-agnostic
rule (``rule="cls"``) ranks the patch tokens by the CLS token's attention instead
(``vqa.class_attention``): the selection is then the same for every question about an image, so
the blocks after it still run once per image, and each question picks its image's tokens at the
end. With FiLM, the question scales and shifts every channel before each block
(``vqa.conditioning``), so every block runs per question. Both need an encoder that runs block
by block (``embed``, ``blocks``, ``num_prefix_tokens``, ``finish``):
``vqa.encoders.TimmVisionEncoder``, or ``vqa.encoders.TransformersVisionEncoder`` for the
families of ``vqa.transformers_blocks``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from hybrid_attention import TokenSelection, TokenSelector
from vqa.class_attention import class_attention
from vqa.conditioning import modulate

FOLDED = -1  # region index of the token that folds the dropped ones


@dataclass
class VisionTokens:
    """What the fusion reads: M tokens per question, and where they come from.

    Attributes:
        features: (B, M, D) vision tokens; M = N without a selection.
        regions: (B, M) the region (patch index in 0..N-1) of each token, ``FOLDED`` for the
            token that folds the dropped ones; None when the M = N tokens are every region in
            order.
        selection: the encoder's :class:`~hybrid_attention.TokenSelection`, or None.
    """

    features: Tensor
    regions: Tensor | None = None
    selection: TokenSelection | None = None


def encode_guided(
    vision: nn.Module,
    pixel_values: Tensor,
    image_index: Tensor | None,
    *,
    query: Tensor,
    film: Tensor | None = None,
    selector: TokenSelector | None = None,
    select_after: int | None = None,
    rule: str = "question",
) -> VisionTokens:
    """Run ``vision`` block by block with FiLM and/or a token selection.

    Args:
        vision: an encoder with ``embed``, ``blocks``, ``num_prefix_tokens`` and ``finish``
            (and ``attention_parts`` for the ``"cls"`` rule).
        pixel_values: (U, C, H, W) images.
        image_index: (B,) the image of each question; None: image b for question b.
        query: (B, Dq) the question vector that scores the tokens.
        film: (B, num_blocks, 2, D) FiLM [gamma, beta] before each block, or None.
        selector: keeps the tokens after block ``select_after`` (None: no selection).
        select_after: how many blocks run on every token before the selection.
        rule: what ranks the tokens: ``"question"`` (``query``, through the selector's
            scorer), or ``"cls"``: the CLS token's attention in block ``select_after`` over
            every token, before that block runs on the kept ones (the last block's, on its
            input, when the selection comes after it; ``vqa.class_attention``). A plain
            top-k that leaves the blocks per image, question by question only at the end.
    """
    blocks = vision.blocks
    stop = len(blocks) if selector is None else select_after  # blocks before the selection
    tokens = vision.embed(pixel_values)  # (U, P + N, D)
    per_image = film is None  # FiLM makes every block run per question
    if not per_image:
        tokens = pick(tokens, image_index)
    before_last = tokens  # the input of the last block run so far
    for index in range(stop):
        if film is not None:
            tokens = modulate(tokens, film[:, index])
        before_last = tokens
        tokens = blocks[index](tokens)
    selection = None
    if selector is not None and rule == "cls":
        # EViT ranks inside a block, by that block's attention over every token: here the
        # next block's, on its input; the last block's when no block is left to run.
        ranking_block = min(stop, len(blocks) - 1)
        ranked = tokens if ranking_block == stop else before_last
        norm, attention = vision.attention_parts(ranking_block)
        scores = class_attention(norm, attention, ranked, vision.num_prefix_tokens)  # (., N)
        selection = selector(tokens, scores=scores, estimator="none")  # EViT trains no rule
        tokens = selection.tokens  # (U or B, P + k (+ 1), D)
    elif selector is not None:
        if per_image:
            tokens, per_image = pick(tokens, image_index), False
        selection = selector(tokens, query)
        tokens = selection.tokens  # (B, P + k (+ 1), D)
    for index in range(stop, len(blocks)):
        if film is not None:
            tokens = modulate(tokens, film[:, index])
        tokens = blocks[index](tokens)
    features = vision.finish(tokens)  # (U or B, M, D), prefix tokens dropped
    if per_image:
        features = pick(features, image_index)
        selection = None if selection is None else pick_selection(selection, image_index)
    if selection is None:
        return VisionTokens(features)
    return VisionTokens(features, kept_regions(selection, features.shape[1]), selection)


def pick(tokens: Tensor, image_index: Tensor | None) -> Tensor:
    """(U, T, D) tokens per image -> (B, T, D) per question (as is when ``image_index`` is None)."""
    return tokens if image_index is None else tokens[image_index]


def pick_selection(selection: TokenSelection, image_index: Tensor | None) -> TokenSelection:
    """A selection made once per image (U rows) -> per question (B rows)."""
    if image_index is None:
        return selection
    picked = {
        item.name: pick(getattr(selection, item.name), image_index)
        for item in fields(selection)
        if getattr(selection, item.name) is not None
    }
    return replace(selection, **picked)


def kept_regions(selection: TokenSelection, count: int) -> Tensor:
    """(B, M) the region of each of the M tokens after a selection: the kept indices, then
    ``FOLDED`` for the folded token when there is one."""
    indices = selection.indices  # (B, k)
    if count == indices.shape[1]:
        return indices
    folded = indices.new_full((indices.shape[0], count - indices.shape[1]), FOLDED)
    return torch.cat([indices, folded], dim=1)


def scatter_regions(values: Tensor, regions: Tensor, num_regions: int, fill: float) -> Tensor:
    """(B, H, M) values per token -> (B, H, N) per region; ``fill`` where no token is.

    The folded token (``FOLDED``) has no region: its value is left out.
    """
    batch, heads, _ = values.shape
    out = values.new_full((batch, heads, num_regions + 1), fill)  # the last slot: folded
    slots = regions.masked_fill(regions == FOLDED, num_regions)[:, None].expand(-1, heads, -1)
    return out.scatter(-1, slots, values)[..., :num_regions]
