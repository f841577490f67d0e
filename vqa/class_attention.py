"""EViT's question-agnostic rule: the attention that a ViT's CLS token pays each patch token.

EViT (Liang et al. 2022, "Not All Patches are What You Need") keeps, between two blocks, the
patch tokens that the CLS token attends to most (attention averaged over the heads) and folds
the others into one token weighted by that attention. EViT ranks inside a block, by that
block's attention; ``vqa.guided_vision`` selects between blocks, so it ranks by the attention
that block ``select_after``, the first to run on the kept tokens, would pay over every token
(the last block's, on its input, when the selection comes after it), recomputed from that
block's own weights. The CLS token then has been through ``select_after`` blocks, so its query
depends on the image, except when ``select_after`` is 0:

```
block input (B, P + N, D) -> the block's pre-attention norm -> CLS query (B, H, 1, d)
                                                            -> keys      (B, H, P + N, d)
    -> softmax(scale * query . keys) over the P + N tokens -> mean over the H heads
    -> the N patch tokens' share, as a log: (B, N)
```
Only the CLS token's query is computed, so this costs a fraction of the block's attention.
Self-attentions are read as timm's ``Attention`` (one fused ``qkv`` projection, ``q_norm`` and
``k_norm`` per head) or as transformers' ViT, DINOv2 and CLIP attentions (``q_proj``,
``k_proj``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

ENCODER_RULES = ("question", "cls")  # what ranks the patch tokens inside the vision encoder


def class_attention(
    norm: nn.Module, attention: nn.Module, tokens: Tensor, num_prefix: int
) -> Tensor:
    """The log of the attention that the CLS token (the first token) pays each patch token.

    Args:
        norm: the block's norm before its self-attention.
        attention: the block's self-attention (timm or transformers, see the module docstring).
        tokens: (B, P + N, D) the block's input, the P prefix tokens (CLS first) before the N
            patch tokens.
        num_prefix: P.

    Returns:
        (B, N) float32: log of the CLS token's attention weights on the N patch tokens,
        averaged over the heads (the softmax ran over all P + N tokens, so they sum to less
        than 1).
    """
    query, keys, scale = class_query_and_keys(attention, norm(tokens))
    logits = (query @ keys.transpose(-2, -1)).float() * scale  # (B, H, 1, P + N)
    log_weights = logits.log_softmax(-1)[:, :, 0, num_prefix:]  # (B, H, N)
    return log_weights.logsumexp(1) - math.log(log_weights.shape[1])  # log of the head mean


def class_query_and_keys(attention: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor, float]:
    """The CLS token's query (B, H, 1, d), every token's key (B, H, T, d), and the scale of
    their dot product, from the normed block input ``hidden`` (B, T, D)."""
    if hasattr(attention, "qkv"):  # timm: q, k, v stacked along the output features
        width = attention.num_heads * attention.head_dim
        weight, bias = attention.qkv.weight, attention.qkv.bias
        query = F.linear(hidden[:, :1], weight[:width], None if bias is None else bias[:width])
        keys = F.linear(
            hidden, weight[width : 2 * width], None if bias is None else bias[width : 2 * width]
        )
        heads = attention.num_heads
        return (
            attention.q_norm(split_heads(query, heads)),
            attention.k_norm(split_heads(keys, heads)),
            attention.scale,
        )
    if hasattr(attention, "q_proj") and hasattr(attention, "k_proj"):  # transformers
        heads = attention.q_proj.out_features // attention.head_dim
        scale = attention.scaling if hasattr(attention, "scaling") else attention.scale
        query = split_heads(attention.q_proj(hidden[:, :1]), heads)
        return query, split_heads(attention.k_proj(hidden), heads), scale
    raise ValueError(
        f"cannot read the CLS attention of a {type(attention).__name__}: it has neither timm's "
        "fused qkv projection nor the q_proj and k_proj of transformers' attentions"
    )


def split_heads(projected: Tensor, heads: int) -> Tensor:
    """(B, T, H * d) -> (B, H, T, d)."""
    batch, length, _ = projected.shape
    return projected.reshape(batch, length, heads, -1).transpose(1, 2)
