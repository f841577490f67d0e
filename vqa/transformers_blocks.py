"""Transformers vision models, run block by block as ``vqa.guided_vision`` needs them.

A transformers vision model's forward pass is ``embeddings -> (pre-norm) -> layers -> final norm``;
each family keeps these stages under its own names. :data:`LAYOUTS` names them for the families
that FiLM and the encoder's token selection support, so that
``vqa.encoders.TransformersVisionEncoder`` can run the same stages one at a time:

```
pixels (B, C, H, W) -> embeddings (positions added) -> pre-norm   = embed     (B, P + N, D)
    -> each encoder layer, no attention mask                       = blocks    (B, T, D) each
    -> final norm, the P prefix tokens (CLS, registers) dropped    = finish    (B, T - P, D)
```
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from transformers import PreTrainedConfig


@dataclass(frozen=True)
class BlockLayout:
    """Where one family of transformers vision models keeps each stage of its forward pass.

    Attributes:
        layers: path of the ``nn.ModuleList`` of encoder layers in the model.
        final_norm: path of the norm after the last layer that gives the patch tokens (for CLIP
            the one applied after ``last_hidden_state``, as ``vqa.encoders.OUTPUT_NORMS`` says).
        pre_norm: path of a norm on the embeddings before the first layer, or None.
        class_token: whether a CLS token comes before the patch tokens.
        registers: the config attribute giving the number of register tokens after the CLS
            token, or None.
        attention_norm: path, in one layer, of the norm applied before its self-attention.
        attention: path, in one layer, of its self-attention (``q_proj``, ``k_proj``).
    """

    layers: str
    final_norm: str
    attention_norm: str
    attention: str
    pre_norm: str | None = None
    class_token: bool = True
    registers: str | None = None

    def num_prefix_tokens(self, config: PreTrainedConfig) -> int:
        """Tokens before the patch tokens (CLS, registers) in a model of ``config``."""
        registers = getattr(config, self.registers) if self.registers else 0
        return int(self.class_token) + registers


VIT_ATTENTION = {"attention_norm": "layernorm_before", "attention": "attention"}
DINOV2_ATTENTION = {"attention_norm": "norm1", "attention": "attention"}
CLIP_ATTENTION = {"attention_norm": "layer_norm1", "attention": "self_attn"}
LAYOUTS = {
    "vit": BlockLayout(layers="layers", final_norm="layernorm", **VIT_ATTENTION),
    "dinov2": BlockLayout(layers="encoder.layer", final_norm="layernorm", **DINOV2_ATTENTION),
    "dinov2_with_registers": BlockLayout(
        layers="encoder.layer",
        final_norm="layernorm",
        registers="num_register_tokens",
        **DINOV2_ATTENTION,
    ),
    "clip_vision_model": BlockLayout(
        layers="encoder.layers",
        final_norm="post_layernorm",
        pre_norm="pre_layrnorm",
        **CLIP_ATTENTION,
    ),
    "siglip_vision_model": BlockLayout(
        layers="encoder.layers", final_norm="post_layernorm", class_token=False, **CLIP_ATTENTION
    ),
}
BLOCKWISE_MODEL_TYPES = tuple(LAYOUTS)


class LayerBlock:
    """One encoder layer as a block (B, T, D) -> (B, T, D), every token attending to every one.

    Not an ``nn.Module``: the layer's weights stay registered under the model only.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def __call__(self, tokens: Tensor) -> Tensor:
        out = self.layer(tokens, None)  # attention mask None: no padding among image tokens
        return out[0] if isinstance(out, tuple) else out  # some layers return (hidden, ...)

    def __repr__(self) -> str:
        return f"LayerBlock({type(self.layer).__name__})"


def layout_of(model_type: str) -> BlockLayout:
    """The :class:`BlockLayout` of ``model_type``; a ValueError names the supported ones."""
    if model_type not in LAYOUTS:
        raise ValueError(
            f"the transformers vision model {model_type!r} does not run block by block here "
            f"(FiLM and the encoder's token selection need a timm ViT or one of "
            f"{', '.join(BLOCKWISE_MODEL_TYPES)})"
        )
    return LAYOUTS[model_type]
