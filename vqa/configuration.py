"""HybridVQAConfig: every size and switch of the model, saved as config.json."""

from __future__ import annotations

from transformers import PreTrainedConfig

from hybrid_attention import (
    ESTIMATORS,
    MODES,
    AdaptiveK,
    LearnedBudget,
    TopP,
    most_kept,
    num_kept,
)
from vqa.class_attention import ENCODER_RULES
from vqa.conditioning import CONDITIONINGS
from vqa.estimators import REINFORCE_BASELINES
from vqa.transformers_blocks import BLOCKWISE_MODEL_TYPES

VISION_BACKENDS = ("timm", "transformers")
VISION_STEMS = ("patch", "conv")
K_RULES = ("fixed", "top_p", "budget")
NUMBERS = (
    "fusion_tau",
    "dropout",
    "reinforce_weight",
    "reinforce_entropy_weight",
    "reinforce_baseline_decay",
    "initializer_range",
    "region_loss_weight",
    "reconstruction_loss_weight",
    "reconstruction_mask_ratio",
    "contrast_loss_weight",
    "glimpse_loss_weight",
    "pointing_loss_weight",
    "label_smoothing",
)


# The weights of the auxiliary losses; each is 0 (off) or more.
AUXILIARY_LOSS_WEIGHTS = (
    "region_loss_weight",
    "pointing_loss_weight",
    "reconstruction_loss_weight",
    "contrast_loss_weight",
    "glimpse_loss_weight",
)


class HybridVQAConfig(PreTrainedConfig):
    """Configuration of :class:`vqa.modeling.HybridVQAModel`.

    Vision (a ViT; its patch tokens are the regions):
        vision_backend: ``"timm"`` (``VisionTransformer``) or ``"transformers"`` (``ViTModel``).
        vision_stem: ``"patch"`` (the usual linear patch embedding) or ``"conv"`` (a small
            convolutional stem; learns colour and shape faster from scratch). timm only.
        image_size, patch_size: the regions are an (image_size / patch_size)^2 grid.
        vision_hidden_size, vision_layers, vision_heads: encoder sizes.
        vision_conditioning: ``"none"`` or ``"film"``: the question scales and shifts the vision
            tokens' channels before each ViT block (``vqa.conditioning``). The blocks then run
            once per question instead of once per image.
        vision_class_token: give the built-in ViT (timm, no ``vision_config``) a CLS token before
            its patch tokens, as ``encoder_rule="cls"`` needs; other encoders have one or not
            by their architecture.
    Selection inside the vision encoder (``vqa.guided_vision``):
        encoder_select_after: how many ViT blocks run on every patch token before the question
            scores them and the top ``encoder_k`` are kept for the remaining blocks; None: no
            selection in the encoder. It applies in hard and hybrid modes, with the fusion's
            estimator and tau; soft mode keeps every token (the same weights).
        FiLM and this selection need an encoder that runs block by block: any timm ViT, or a
        transformers model whose type is in ``vqa.transformers_blocks.LAYOUTS`` (ViT, CLIP and
        SigLIP vision, DINOv2 with or without registers).
        encoder_k: patch tokens kept: an int count, or a float ratio in (0, 1].
        encoder_fold: also keep one token that folds the dropped ones, weighted by their
            softmax scores (EViT's inattentive-token fusion).
        encoder_rule: what ranks the patch tokens: ``"question"`` (the question's query, a
            learned scorer) or ``"cls"`` (EViT's question-agnostic rule: the attention of the
            ViT's CLS token in the last block before the selection, ``vqa.class_attention``;
            the selection then runs once per image, untrained; needs a CLS token).
    Text (a transformers BERT built from these sizes):
        text_vocab_size, text_hidden_size, text_layers, text_heads, max_question_length.
    Pretrained encoders (see ``vqa.encoders.pretrained_fields``, which fills these in):
        vision_config: the pretrained vision encoder's architecture: for timm
            ``{"architecture": name, **create_model arguments}``, for transformers the model's
            config dict. None: the randomly initialised encoder sized by the fields above.
        text_config: the pretrained text encoder's transformers config dict, or None.
        vision_pretrained, text_pretrained: where the pretrained weights were read from (a local
            file, directory or hub id). Only a freshly built model loads them; a saved model
            rebuilds from vision_config / text_config and its own weights.
    Fusion:
        fusion_mode, fusion_k, fusion_estimator, fusion_tau, fusion_heads: the
            ``HybridAttention`` settings (mode ``soft|hard|hybrid``).
        fusion_k_rule: how many regions each question keeps: ``"fixed"`` (``fusion_k``),
            ``"top_p"`` (the fewest whose softmax mass reaches ``fusion_top_p``) or
            ``"budget"`` (a head predicts k from the question, trained with the penalty
            ``fusion_k_penalty * E[k]``); both adaptive rules keep ``fusion_k_min`` to
            ``fusion_k_max`` regions (``hybrid_attention.adaptive``). The rule switches at
            inference on the same weights, except that only a model built with the budget
            rule has its head.
        fusion_sink: a learned sink logit per fusion head joins the soft weighting (over every
            region in soft mode, over the selected k in hybrid mode), so that a question can
            put weight on no region instead of on a background one (``HybridAttention``'s
            ``sink``).
        fusion_hops: how many times the fusion runs, each hop with its own query (read from
            the question's tokens, steered by the previous hop) and its own selection
            (``vqa.hops``); 1: the question's CLS vector only.
        fusion_dim: width of the fusion and reasoning layers (a multiple of 4).
        reasoner_layers: transformer layers over [question tokens; attended; selected regions].
    Head and loss:
        num_answers: size of the answer vocabulary (``id2label`` holds the answers).
        dropout: dropout in the fusion layers and the head.
        label_smoothing: share of each question's answer target spread evenly over all the
            answers, in [0, 1) (0: none): for answer ids the cross-entropy's own label
            smoothing, for soft scores each target ``t`` becomes ``t (1 - s) + s / A``. It
            changes the trained loss only: REINFORCE's reward and the logged answer loss are
            unsmoothed.
        reinforce_weight, reinforce_entropy_weight, reinforce_baseline_decay: the REINFORCE
            term added to the loss when ``fusion_estimator == "reinforce"``. Training may
            schedule the entropy weight (``--entropy-schedule``); this is its starting value.
        reinforce_baseline: ``"type"``: the reward baseline is a moving average per question
            type (hashed, ``vqa.processing.question_group``); ``"global"``: one moving average.
        region_attributes: object attribute name -> number of classes ("no object" included)
            that a linear head predicts from each region's vision token (see
            ``vqa.data.regions``); None: no such head. Set from the processor by training.
        region_loss_weight: weight of that region attribute loss in the training loss, for
            batches that carry region labels (0: the head is not trained).
        pointing_loss_weight: weight of the pointing loss, the cross-entropy between the
            fusion's softmax over all regions and an even spread over the regions of the
            objects each question is about (its ``targets``), for batches that carry
            ``target_regions`` (0: off).
        reconstruction_loss_weight: weight of the box-free auxiliary loss in which each
            region's final vision token predicts the normalised pixels of the
            ``reconstruction_window`` x ``reconstruction_window`` regions around it
            (``vqa.reconstruction``; 0: no such head).
        reconstruction_window: an odd number of regions per side of that window.
        reconstruction_mask_ratio: share of the regions hidden in a second, masked pass of
            each image, whose hidden regions alone then redraw their windows (masked image
            modelling, ``vqa.reconstruction``), in [0, 1); 0: the tokens of the answering pass
            redraw their own windows.
        contrast_loss_weight: weight of the box-free auxiliary loss in which each region's
            token must find itself in a second view of its image, shifted by whole regions and
            with its colour channels permuted (``vqa.contrast``; 0: no such head).
        glimpse_loss_weight: weight of the box-free auxiliary answer loss of a small head that
            answers from the question and a softmax of the fusion scores over every region
            (``vqa.glimpse``): a dense signal for the scores that choose hybrid's top k (0: no
            such head).
    """

    model_type = "hybrid_vqa"

    image_size: int = 64
    patch_size: int = 8
    num_channels: int = 3
    vision_backend: str = "timm"
    vision_stem: str = "conv"
    vision_hidden_size: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_conditioning: str = "none"
    vision_class_token: bool = False
    encoder_select_after: int | None = None
    encoder_k: int | float = 0.5
    encoder_fold: bool = False
    encoder_rule: str = "question"

    text_vocab_size: int = 1000
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_question_length: int = 32
    pad_token_id: int = 0

    vision_config: dict | None = None
    vision_pretrained: str | None = None
    text_config: dict | None = None
    text_pretrained: str | None = None

    fusion_mode: str = "hybrid"
    fusion_k: int = 16
    fusion_estimator: str = "ste"
    fusion_tau: float = 1.0
    fusion_heads: int = 1
    fusion_hops: int = 1
    fusion_sink: bool = False
    fusion_k_rule: str = "fixed"
    fusion_k_min: int = 1
    fusion_k_max: int = 16
    fusion_top_p: float = 0.9
    fusion_k_penalty: float = 0.0
    fusion_dim: int = 128
    reasoner_layers: int = 2

    num_answers: int = 2
    dropout: float = 0.1
    label_smoothing: float = 0.0
    reinforce_weight: float = 1.0
    reinforce_entropy_weight: float = 0.01
    reinforce_baseline_decay: float = 0.9
    reinforce_baseline: str = "type"
    initializer_range: float = 0.02
    region_attributes: dict | None = None
    region_loss_weight: float = 0.0
    pointing_loss_weight: float = 0.0
    reconstruction_loss_weight: float = 0.0
    reconstruction_window: int = 3
    reconstruction_mask_ratio: float = 0.0
    contrast_loss_weight: float = 0.0
    glimpse_loss_weight: float = 0.0

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.check()

    @property
    def num_regions(self) -> int:
        """Number of patch tokens (regions) the vision encoder produces."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def fusion_rule(self) -> int | AdaptiveK:
        """The fusion's k: ``fusion_k``, or the adaptive rule that ``fusion_k_rule`` names."""
        if self.fusion_k_rule == "top_p":
            return TopP(self.fusion_top_p, k_max=self.fusion_k_max, k_min=self.fusion_k_min)
        if self.fusion_k_rule == "budget":
            return LearnedBudget(k_max=self.fusion_k_max, k_min=self.fusion_k_min)
        return self.fusion_k

    def check(self) -> None:
        """Raise a ValueError naming the first field whose value is invalid."""
        positive = (
            "image_size",
            "patch_size",
            "num_channels",
            "vision_hidden_size",
            "vision_layers",
            "vision_heads",
            "text_vocab_size",
            "text_hidden_size",
            "text_layers",
            "text_heads",
            "max_question_length",
            "fusion_k",
            "fusion_k_min",
            "fusion_k_max",
            "fusion_heads",
            "fusion_hops",
            "fusion_dim",
            "num_answers",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
        choices = {
            "vision_backend": VISION_BACKENDS,
            "vision_stem": VISION_STEMS,
            "vision_conditioning": CONDITIONINGS,
            "fusion_mode": MODES,
            "fusion_estimator": ESTIMATORS,
            "fusion_k_rule": K_RULES,
            "encoder_rule": ENCODER_RULES,
            "reinforce_baseline": REINFORCE_BASELINES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"config field {name!r} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"config field 'image_size' ({self.image_size}) must be a multiple of "
                f"'patch_size' ({self.patch_size})"
            )
        if self.fusion_k > self.num_regions:
            raise ValueError(
                f"config field 'fusion_k' ({self.fusion_k}) is greater than the number of "
                f"regions ({self.num_regions} = ({self.image_size} / {self.patch_size})^2)"
            )
        self._check_adaptive_k()
        for hidden, heads in (
            ("vision_hidden_size", "vision_heads"),
            ("text_hidden_size", "text_heads"),
            ("fusion_dim", "fusion_heads"),
        ):
            if getattr(self, hidden) % getattr(self, heads):
                raise ValueError(
                    f"config field {hidden!r} ({getattr(self, hidden)}) must be divisible by "
                    f"{heads!r} ({getattr(self, heads)})"
                )
        if self.fusion_dim % 4:
            raise ValueError(
                f"config field 'fusion_dim' ({self.fusion_dim}) must be divisible by 4, for the "
                "2D sine-cosine position embedding of the regions"
            )
        layers = self.reasoner_layers
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"config field 'reasoner_layers' must be an int >= 0, got {layers!r}")
        for name in NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"config field {name!r} must be a number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"config field 'dropout' must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"config field 'label_smoothing' must be in [0, 1), got {self.label_smoothing!r}"
            )
        if not self.fusion_tau > 0:
            raise ValueError(f"config field 'fusion_tau' must be > 0, got {self.fusion_tau!r}")
        if not 0.0 <= self.reinforce_baseline_decay < 1.0:
            raise ValueError(
                "config field 'reinforce_baseline_decay' must be in [0, 1), got "
                f"{self.reinforce_baseline_decay!r}"
            )
        for name in AUXILIARY_LOSS_WEIGHTS:
            if not getattr(self, name) >= 0:
                raise ValueError(f"config field {name!r} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.reconstruction_mask_ratio < 1.0:
            raise ValueError(
                "config field 'reconstruction_mask_ratio' must be in [0, 1), got "
                f"{self.reconstruction_mask_ratio!r}"
            )
        window = self.reconstruction_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(
                f"config field 'reconstruction_window' must be an odd int >= 1, got {window!r}"
            )
        self._check_region_attributes()
        self._check_pretrained()
        self._check_encoder_selection()

    def _check_adaptive_k(self) -> None:
        """Raise a ValueError naming the first adaptive-k field that is invalid."""
        if self.fusion_k_min > self.fusion_k_max:
            raise ValueError(
                f"config field 'fusion_k_min' ({self.fusion_k_min}) is greater than "
                f"'fusion_k_max' ({self.fusion_k_max})"
            )
        if self.fusion_k_rule != "fixed" and self.fusion_k_max > self.num_regions:
            raise ValueError(
                f"config field 'fusion_k_max' ({self.fusion_k_max}) is greater than the number "
                f"of regions ({self.num_regions})"
            )
        top_p = self.fusion_top_p
        if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise ValueError(f"config field 'fusion_top_p' must be in (0, 1], got {top_p!r}")
        penalty = self.fusion_k_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not penalty >= 0:
            raise ValueError(f"config field 'fusion_k_penalty' must be >= 0, got {penalty!r}")

    def _check_encoder_selection(self) -> None:
        """Raise a ValueError naming the first encoder-selection field that is invalid."""
        after = self.encoder_select_after
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or after < 0
        ):
            raise ValueError(
                f"config field 'encoder_select_after' must be None or an int >= 0, got {after!r}"
            )
        self._check_blockwise_vision()
        keep = self.encoder_k
        count = isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1
        if not (count or (isinstance(keep, float) and 0.0 < keep <= 1.0)):
            raise ValueError(
                f"config field 'encoder_k' must be an int >= 1 or a float in (0, 1], got {keep!r}"
            )
        if count and keep > self.num_regions:
            raise ValueError(
                f"config field 'encoder_k' ({keep}) is greater than the number of regions "
                f"({self.num_regions})"
            )
        fusion_keeps = most_kept(self.fusion_rule)
        if (
            after is not None
            and num_kept(keep, self.num_regions) + self.encoder_fold < fusion_keeps
        ):
            raise ValueError(
                f"config field 'encoder_k' ({keep}) leaves fewer tokens than the fusion keeps "
                f"(up to {fusion_keeps})"
            )
        for name in ("encoder_fold", "vision_class_token", "fusion_sink"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"config field {name!r} must be a bool, got {getattr(self, name)!r}"
                )
        if self.vision_class_token and self.vision_config is not None:
            raise ValueError(
                "config field 'vision_class_token' is for the built-in ViT only: the vision "
                "encoder that vision_config describes has a CLS token or not by its architecture"
            )

    def _check_blockwise_vision(self) -> None:
        """Raise a ValueError if FiLM or the encoder's selection is on but the vision encoder
        cannot run block by block (a transformers model of a family not supported there)."""
        guided = [
            name
            for name, on in (
                ("vision_conditioning", self.vision_conditioning != "none"),
                ("encoder_select_after", self.encoder_select_after is not None),
            )
            if on
        ]
        if not guided or self.vision_backend != "transformers" or self.vision_config is None:
            return  # timm ViTs and the transformers ViTModel built from the sizes run blockwise
        model_type = self.vision_config["model_type"]
        if model_type not in BLOCKWISE_MODEL_TYPES:
            raise ValueError(
                f"config field {guided[0]!r} needs a vision encoder that runs block by block: a "
                f"timm ViT or a transformers model of type {', '.join(BLOCKWISE_MODEL_TYPES)}; "
                f"the vision_config's model_type is {model_type!r}"
            )

    def _check_region_attributes(self) -> None:
        """Raise a ValueError unless region_attributes is None or {name: classes >= 2}."""
        attributes = self.region_attributes
        if attributes is None:
            return
        if not (
            isinstance(attributes, dict)
            and attributes
            and all(
                isinstance(name, str)
                and isinstance(count, int)
                and not isinstance(count, bool)
                and count >= 2
                for name, count in attributes.items()
            )
        ):
            raise ValueError(
                "config field 'region_attributes' must be None or a non-empty dict of attribute "
                f"name -> number of classes (>= 2), got {attributes!r}"
            )

    def _check_pretrained(self) -> None:
        """Raise a ValueError naming the first pretrained-encoder field that is invalid."""
        required_key = {"timm": "architecture", "transformers": "model_type"}
        for part, key in (("vision", required_key[self.vision_backend]), ("text", "model_type")):
            architecture = getattr(self, f"{part}_config")
            source = getattr(self, f"{part}_pretrained")
            if architecture is not None and (
                not isinstance(architecture, dict) or key not in architecture
            ):
                raise ValueError(
                    f"config field '{part}_config' must be None or a dict with {key!r}, "
                    f"got {architecture!r}"
                )
            if source is not None and (not isinstance(source, str) or not source):
                raise ValueError(f"config field '{part}_pretrained' must be a path, got {source!r}")
            if source and architecture is None:
                raise ValueError(
                    f"config field '{part}_config' must describe the encoder at "
                    f"'{part}_pretrained' ({source}); vqa.encoders.pretrained_fields fills both in"
                )
        if self.vision_config is not None and self.vision_stem != "patch":
            raise ValueError(
                "config field 'vision_stem' must be 'patch' for a pretrained vision encoder "
                "(vision_config is set)"
            )
