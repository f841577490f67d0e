"""Vision and text encoders, built from the ecosystem (timm, transformers) by one factory each."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

from vqa.configuration import HybridVQAConfig


class ConvStem(nn.Module):
    """Stride-2 3x3 conv + BatchNorm + ReLU stages that shrink the image by ``reduction``.

    From scratch, a few convolutions learn colours and edges far sooner than one linear
    patch projection does (Xiao et al. 2021, "Early convolutions help transformers see
    better"); the ViT still sees one token per ``reduction`` x ``reduction`` patch. The
    normalisation keeps the image signal well above the position embeddings at any init.
    """

    def __init__(self, in_chans: int, reduction: int, width: int = 32) -> None:
        super().__init__()
        if reduction < 1 or reduction & (reduction - 1):
            raise ValueError(f"a conv stem needs a power-of-two patch_size, got {reduction}")
        layers: list[nn.Module] = []
        channels = in_chans
        for stage in range(max(reduction.bit_length() - 1, 1)):
            out = width * 2**stage
            stride = 2 if 2**stage < reduction else 1
            layers += [
                nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C', H / reduction, W / reduction)."""
        return self.layers(images)


class TimmVisionEncoder(nn.Module):
    """A timm ``VisionTransformer`` returning its patch tokens (B, N, D), prefix tokens dropped."""

    def __init__(self, config: HybridVQAConfig) -> None:
        super().__init__()
        from timm.layers import HybridEmbed
        from timm.models.vision_transformer import VisionTransformer

        patch_size, embed_layer = config.patch_size, None
        if config.vision_stem == "conv":
            stem = ConvStem(config.num_channels, config.patch_size)
            embed_layer = partial(HybridEmbed, backbone=stem)
            patch_size = 1  # the stem already reduced the image to the patch grid
        self.vit = VisionTransformer(
            img_size=config.image_size,
            patch_size=patch_size,
            in_chans=config.num_channels,
            embed_dim=config.vision_hidden_size,
            depth=config.vision_layers,
            num_heads=config.vision_heads,
            num_classes=0,
            global_pool="",
            class_token=False,
            **({"embed_layer": embed_layer} if embed_layer else {}),
        )

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, vision_hidden_size)."""
        tokens = self.vit.forward_features(pixel_values)
        return tokens[:, self.vit.num_prefix_tokens :]


class TransformersVisionEncoder(nn.Module):
    """A transformers ``ViTModel`` returning its patch tokens (B, N, D), CLS dropped."""

    def __init__(self, config: HybridVQAConfig) -> None:
        super().__init__()
        vit_config = ViTConfig(
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_channels=config.num_channels,
            hidden_size=config.vision_hidden_size,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            intermediate_size=4 * config.vision_hidden_size,
        )
        self.vit = ViTModel(vit_config, add_pooling_layer=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, vision_hidden_size)."""
        return self.vit(pixel_values=pixel_values).last_hidden_state[:, 1:]


def build_vision_encoder(config: HybridVQAConfig) -> nn.Module:
    """The vision encoder that ``config.vision_backend`` names."""
    if config.vision_backend == "transformers":
        if config.vision_stem != "patch":
            raise ValueError("config field 'vision_stem' must be 'patch' for transformers ViTModel")
        return TransformersVisionEncoder(config)
    return TimmVisionEncoder(config)


def build_text_encoder(config: HybridVQAConfig) -> BertModel:
    """A small BERT, randomly initialised from the config sizes: (B, L) ids -> (B, L, D)."""
    bert_config = BertConfig(
        vocab_size=config.text_vocab_size,
        hidden_size=config.text_hidden_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        intermediate_size=4 * config.text_hidden_size,
        max_position_embeddings=max(config.max_question_length, 8),
        pad_token_id=config.pad_token_id,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
    )
    return BertModel(bert_config, add_pooling_layer=False)
