"""HybridVQAModel: ViT regions + encoded question -> HybridAttention -> reasoner -> logits.

```
image    -> ViT -> regions (B, N, D)  ------------------------------ LayerNorm --┐
question -> text encoder -> tokens (B, L, D), CLS query (B, 1, D) -> LayerNorm -> HybridAttention
   -> reasoner over [question tokens; attended vector; selected regions + weight mark]
   -> MLP head on the first token -> logits (B, num_labels)
```
With ``region_attributes`` in the config, a linear head also predicts from each vision token
the attributes of the object under that region (``vqa.data.regions``); training adds that
loss, weighted by ``region_loss_weight``, when a batch carries ``region_labels``. With
``target_regions`` (the regions of the objects a question is about), training adds the pointing
loss, weighted by ``pointing_loss_weight``: it teaches the fusion scores where to look.
These losses, and the box-free ones, are in ``vqa.auxiliary_losses``.
In hard and hybrid modes the reasoner sees ``fusion_heads * fusion_hops * k`` region tokens
(``vqa.hops``: each hop selects its own), in soft mode all N: that is where selection saves
compute downstream of the encoders. With an adaptive k (``fusion_k_rule``) each question keeps
its own k: the batch carries as many slots as its largest k (``k_max`` while training a learned
budget) and the reasoner's padding mask hides the slots past each question's k, so a question
asked alone costs exactly its own k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hybrid_attention import (
    AttentionOutput,
    GroupedMovingAverageBaseline,
    HybridAttention,
    TokenSelector,
    gather_regions,
    num_kept,
    reinforce_loss,
    selection_entropy,
)
from vqa.auxiliary_losses import AuxiliaryLossesMixin
from vqa.conditioning import FiLMGenerator
from vqa.configuration import HybridVQAConfig
from vqa.encoders import build_text_encoder, build_vision_encoder
from vqa.guided_vision import FOLDED, VisionTokens, encode_guided, scatter_regions
from vqa.hops import HopQuery, stack_hops
from vqa.processing import QUESTION_GROUPS

QUESTION, ATTENDED, REGION = 0, 1, 2  # token types of the reasoner's input
POSITION_SCALE = 0.6  # of the region position embedding: std about 0.3


@dataclass
class HybridVQAOutput(ModelOutput):
    """Outputs of :class:`HybridVQAModel` (H = fusion heads x hops, hop after hop; N = regions;
    k = kept regions).

    Attributes:
        loss: scalar training loss (answer loss, plus the REINFORCE term when it applies).
        answer_loss: (B,) per-question answer loss, without label smoothing.
        logits: (B, num_labels) answer logits.
        attention_scores: (B, H, N) fusion scores before selection; -inf for the regions that
            a selection inside the vision encoder dropped.
        attention_weights: (B, H, N) fusion weights, exactly 0 outside the selection. With an
            encoder selection that folds the dropped patches into one token, that token's
            weight is not a region's, so a row sums to less than 1.
        selected_indices: (B, H, k) selected regions, best first; None in soft mode.
            ``vqa.guided_vision.FOLDED`` (-1) where the fusion selected the folded token. With
            an adaptive k it is as wide as the batch's largest k, and the slots past
            ``kept_regions`` are padding.
        kept_regions: (B, H) long, how many regions each question kept per head (k, or its
            adaptive k); None in soft mode.
        expected_regions: (B, H) E[k] under a learned budget (``fusion_k_rule="budget"``),
            which training penalises by ``fusion_k_penalty``; else None.
        log_prob: (B, H) log-probability of a sampled selection (reinforce, training).
        encoder_kept: (B, N) bool, True for the regions whose tokens the vision encoder kept;
            None without a selection in the encoder, or in soft mode (which keeps them all).
        region_loss: scalar region attribute loss (when ``region_labels`` were given).
        pointing_loss: scalar pointing loss (when ``target_regions`` were given).
        reconstruction_loss: scalar window reconstruction loss (``vqa.reconstruction``; when
            ``labels`` were given to a model with a reconstruction weight).
        contrast_loss: scalar recoloured-view contrast loss (``vqa.contrast``; when ``labels``
            were given to a model with a contrast weight).
        glimpse_loss: scalar answer loss of the glimpse readout (``vqa.glimpse``; when
            ``labels`` were given to a model with a glimpse weight).
        region_logits: (B, N, sum of attribute classes) the region head's logits for the image
            of each question (when asked for with ``return_region_logits``).
    """

    loss: Tensor | None = None
    answer_loss: Tensor | None = None
    region_loss: Tensor | None = None
    pointing_loss: Tensor | None = None
    reconstruction_loss: Tensor | None = None
    contrast_loss: Tensor | None = None
    glimpse_loss: Tensor | None = None
    region_logits: Tensor | None = None
    logits: Tensor | None = None
    attention_scores: Tensor | None = None
    attention_weights: Tensor | None = None
    selected_indices: Tensor | None = None
    kept_regions: Tensor | None = None
    expected_regions: Tensor | None = None
    log_prob: Tensor | None = None
    encoder_kept: Tensor | None = None


class HybridVQAPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading plumbing shared by the hybrid VQA models."""

    config_class = HybridVQAConfig
    base_model_prefix = "hybrid_vqa"
    main_input_name = "pixel_values"
    # Saved before the REINFORCE baseline per question type: its averages start empty.
    _keys_to_ignore_on_load_missing = (r"^baseline\.group_",)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # He init keeps the image signal's scale
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, GroupedMovingAverageBaseline):  # no reward seen yet
            for buffer in module.buffers():
                init.zeros_(buffer)
        else:
            super()._init_weights(module)
        if isinstance(module, HybridVQAModel):  # visited after its children
            with torch.no_grad():
                module.region_position.copy_(region_position_init(self.config))
            nn.init.zeros_(module.weight_embedding)
            _init_fusion(module.fusion)
            if module.film is not None:
                module.film.reset_parameters()
            if module.encoder_selector is not None:
                module.encoder_selector.reset_parameters()


def region_position_init(config: HybridVQAConfig) -> Tensor:
    """(1, N, fusion_dim) 2D sine-cosine embedding of each region's row and column (timm's).

    Added to the regions that the fusion scores and the reasoner read, so "left of" and
    "above" are a linear read-out from the first step, rather than something the ViT's own
    position embedding must carry through every block (docs/experiments.md).
    """
    grid = math.isqrt(config.num_regions)
    embedding = build_sincos2d_pos_embed([grid, grid], dim=config.fusion_dim, temperature=100.0)
    return POSITION_SCALE * embedding[None]


def _init_fusion(attention: HybridAttention) -> None:
    """Glorot-initialise the fusion projections, which see layer-normalised inputs.

    With a std-0.02 init on both the query and the key projection, every score starts near 0
    and the gradient of each projection is proportional to the other one: a saddle that the
    selection is slow to leave. Glorot scales give scores of order 1 from the first step.
    """
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
        nn.init.xavier_uniform_(projection.weight)
        if projection.bias is not None:
            nn.init.zeros_(projection.bias)


class HybridVQAModel(AuxiliaryLossesMixin, HybridVQAPreTrainedModel):
    """Visual question answering with a soft, hard or hybrid attention fusion layer."""

    def __init__(self, config: HybridVQAConfig) -> None:
        super().__init__(config)
        dim = config.fusion_dim
        self.vision = build_vision_encoder(config)
        self.text = build_text_encoder(config)
        self.film = None
        if config.vision_conditioning == "film":
            self.film = FiLMGenerator(dim, config.vision_hidden_size, len(self.vision.blocks))
        self.encoder_selector = None
        if config.encoder_select_after is not None:
            self.encoder_selector = self._build_encoder_selector(config)
        self.vision_proj = nn.Linear(config.vision_hidden_size, dim)
        self.text_proj = nn.Linear(config.text_hidden_size, dim)
        self.region_position = nn.Parameter(torch.zeros(1, config.num_regions, dim))
        self.query_norm = nn.LayerNorm(dim)
        self.region_norm = nn.LayerNorm(dim)
        self.fusion = HybridAttention(
            dim,
            num_heads=config.fusion_heads,
            mode=config.fusion_mode,
            k=config.fusion_rule,
            estimator=config.fusion_estimator,
            tau=config.fusion_tau,
            sink=config.fusion_sink,
        )
        self.hop_queries = nn.ModuleList(HopQuery(dim) for _ in range(config.fusion_hops - 1))
        self.token_type = nn.Embedding(3, dim)
        self.weight_embedding = nn.Parameter(torch.zeros(dim))
        layer = nn.TransformerEncoderLayer(
            dim,
            nhead=4 if dim % 4 == 0 else 1,
            dim_feedforward=4 * dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.reasoner = nn.TransformerEncoder(
            layer, config.reasoner_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.head = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(2 * dim, config.num_labels),
        )
        self.baseline = GroupedMovingAverageBaseline(
            QUESTION_GROUPS, config.reinforce_baseline_decay
        )
        self.entropy_weight = config.reinforce_entropy_weight  # training may schedule it
        self.region_head = None
        if config.region_attributes:
            classes = sum(config.region_attributes.values())
            self.region_head = nn.Linear(config.vision_hidden_size, classes)
        self.reconstruction = None
        if config.reconstruction_loss_weight > 0:
            self.reconstruction = self._build_reconstruction(config)
        self.contrast = None
        if config.contrast_loss_weight > 0:
            self.contrast = self._build_contrast(config)
        self.glimpse = None
        if config.glimpse_loss_weight > 0:
            self.glimpse = self._build_glimpse(config)
        self.post_init()

    def set_fusion(
        self,
        *,
        mode: str | None = None,
        k: int | None = None,
        estimator: str | None = None,
        k_rule: str | None = None,
        k_min: int | None = None,
        k_max: int | None = None,
        top_p: float | None = None,
    ) -> None:
        """Change the fusion of a (trained) model in place: its mode, its estimator, or how
        many regions it keeps: a fixed ``k`` (given alone, it also switches to the fixed rule)
        or the adaptive ``k_rule`` (``"top_p"``, ``"budget"``) with ``k_min``, ``k_max`` and
        ``top_p`` (see ``HybridVQAConfig.fusion_k_rule``). None keeps a setting as it is."""
        if k is not None and k_rule is None:
            k_rule = "fixed"
        if k is not None and not 1 <= k <= self.config.num_regions:
            raise ValueError(
                f"k={k} is outside 1..{self.config.num_regions} (the number of regions)"
            )
        if k is not None and k > self.fusion_tokens():
            raise ValueError(
                f"k={k} is more than the {self.fusion_tokens()} tokens that the vision encoder "
                f"keeps (encoder_k={self.config.encoder_k})"
            )
        settings = {"mode": mode, "k": k, "estimator": estimator, "k_rule": k_rule}
        settings.update(k_min=k_min, k_max=k_max, top_p=top_p)
        changes = {f"fusion_{name}": value for name, value in settings.items() if value is not None}
        checked = HybridVQAConfig(**{**self.config.to_dict(), **changes})  # names a bad value
        if checked.fusion_k_rule == "budget" and self.fusion.budget is None:
            raise ValueError(
                "this model has no budget head: only a model trained with the budget rule "
                "(vqa train --k budget) predicts how many regions to keep"
            )
        self.fusion.k = checked.fusion_rule
        self.fusion.mode, self.fusion.estimator = checked.fusion_mode, checked.fusion_estimator
        for name in changes:
            setattr(self.config, name, getattr(checked, name))
        if estimator is not None and self.encoder_selector is not None:
            self.encoder_selector.estimator = estimator  # the encoder selects as the fusion does

    def fusion_settings(self) -> dict:
        """The fusion's mode and k rule, as :meth:`set_fusion` takes them (to restore them)."""
        config = self.config
        return {
            "mode": config.fusion_mode,
            "k": config.fusion_k,
            "k_rule": config.fusion_k_rule,
            "k_min": config.fusion_k_min,
            "k_max": config.fusion_k_max,
            "top_p": config.fusion_top_p,
        }

    def set_schedule(self, *, tau: float, entropy_weight: float, k: int | None) -> None:
        """Set the values that training schedules per step: the temperature of the relaxed
        selection (ste, gumbel) in the fusion and in the encoder's selector, the weight of
        REINFORCE's entropy bonus, and the fusion's k (None: the config's k or k rule). The
        config keeps the model's own values."""
        self.fusion.k = self.config.fusion_rule if k is None else k
        self.fusion.tau = tau
        if self.encoder_selector is not None:
            self.encoder_selector.tau = tau
        self.entropy_weight = entropy_weight

    def fusion_tokens(self) -> int:
        """Region tokens the fusion reads in hard and hybrid modes: all N, or those that the
        selection inside the vision encoder keeps (and its folded token); at most this k."""
        if self.encoder_selector is None:
            return self.config.num_regions
        kept = num_kept(self.config.encoder_k, self.config.num_regions)
        return kept + int(self.config.encoder_fold)

    def _build_encoder_selector(self, config: HybridVQAConfig) -> TokenSelector:
        """The token selector between the ViT's blocks (its scorer ranks the tokens by the
        question; the "cls" rule passes it the CLS attention instead)."""
        blocks = len(self.vision.blocks)
        if not 0 <= config.encoder_select_after <= blocks:
            raise ValueError(
                f"config field 'encoder_select_after' ({config.encoder_select_after}) must be in "
                f"0..{blocks} (the vision encoder's blocks)"
            )
        self._check_encoder_rule(config.encoder_rule)
        return TokenSelector(
            dim=config.vision_hidden_size,
            keep=config.encoder_k,
            query_dim=config.fusion_dim,
            estimator=config.fusion_estimator,
            tau=config.fusion_tau,
            fold=config.encoder_fold,
            num_prefix=self.vision.num_prefix_tokens,
        )

    def _check_encoder_rule(self, rule: str) -> None:
        """Raise a ValueError naming the vision encoder if ``rule`` is "cls" and the encoder
        has no CLS token."""
        if rule != "cls" or self.vision.class_token:
            return
        vision = self.config.vision_config
        if vision is None:
            raise ValueError(
                f"encoder_rule 'cls' ranks the patch tokens by the CLS token's attention, but "
                f"the built-in {self.config.vision_backend} ViT was built without one: set "
                "vision_class_token=True (vqa train --vision-class-token)"
            )
        name = vision.get("architecture") or vision.get("model_type")
        raise ValueError(
            f"encoder_rule 'cls' ranks the patch tokens by the CLS token's attention, but the "
            f"vision encoder {name!r} has no CLS token"
        )

    def set_encoder_selection(
        self,
        *,
        select_after: int | None = None,
        encoder_k: int | float | None = None,
        rule: str | None = None,
    ) -> None:
        """Move the encoder's token selection to after another block, keep another number of
        tokens, or rank them by another rule (``"question"`` or ``"cls"``), on a (trained)
        model with an encoder selector, in place."""
        if self.encoder_selector is None:
            raise ValueError(
                "this model has no token selection in its vision encoder (it was built with "
                "encoder_select_after=None)"
            )
        fields = self.config.to_dict()
        if select_after is not None:
            fields["encoder_select_after"] = select_after
        if encoder_k is not None:
            fields["encoder_k"] = encoder_k
        if rule is not None:
            fields["encoder_rule"] = rule
        checked = HybridVQAConfig(**fields)  # raises a ValueError naming a bad value
        if not 0 <= checked.encoder_select_after <= len(self.vision.blocks):
            raise ValueError(
                f"select_after={select_after} is outside 0..{len(self.vision.blocks)} (the "
                "vision encoder's blocks)"
            )
        self._check_encoder_rule(checked.encoder_rule)
        self.config.encoder_select_after = checked.encoder_select_after
        self.config.encoder_k = self.encoder_selector.keep = checked.encoder_k
        self.config.encoder_rule = checked.encoder_rule

    def project_regions(self, vision: VisionTokens) -> Tensor:
        """(B, M, vision_hidden_size) vision tokens -> (B, M, fusion_dim) with the position of
        each token's region (none for a folded token)."""
        features = self.vision_proj(vision.features)
        if vision.regions is None:
            return features + self.region_position
        slots = vision.regions.clamp_min(0)  # (B, M)
        positions = self.region_position[0][slots] * (vision.regions != FOLDED).unsqueeze(-1)
        return features + positions.to(features.dtype)

    def encode_questions(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids and mask -> (B, L, fusion_dim) question tokens (CLS first)."""
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_proj(hidden)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        image_index: Tensor | None = None,
        region_labels: Tensor | None = None,
        target_regions: Tensor | None = None,
        question_group: Tensor | None = None,
        return_region_logits: bool = False,
    ) -> HybridVQAOutput:
        """Answer B questions about U images.

        Args:
            pixel_values: (U, C, H, W) images.
            input_ids, attention_mask: (B, L) tokenised questions (CLS first).
            labels: (B,) answer ids (-100 = ignore) for cross-entropy, or (B, num_labels)
                soft scores for rows with several answers (binary cross-entropy).
            image_index: (B,) which image each question is about, when questions share
                images (then U < B and every image is encoded once); default: image i.
            region_labels: (U, N, A) class ids of the object under each region of each image
                (``vqa.data.regions``; -100 = ignore), for the region attribute loss.
            target_regions: (B, N) 1 for the regions of the objects each question is about,
                else 0 (``vqa.data.regions.target_regions``), for the pointing loss.
            question_group: (B,) the bucket of each question's type (``VQACollator`` adds it),
                for the REINFORCE baseline per type; None: one baseline for every question.
            return_region_logits: also return what the region head predicts for every region
                (models with ``region_attributes`` only).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        question = self.encode_questions(input_ids, attention_mask)  # (B, L, D)
        vision = self.encode_images(pixel_values, question, image_index)  # M tokens each
        regions = self.project_regions(vision)  # (B, M, D)
        scored = self.region_norm(regions)  # what the fusion scores and pools
        attended = self.attend(question, attention_mask, scored)
        tokens, padding = self._reasoner_inputs(question, attention_mask, attended, regions)
        hidden = self.reasoner(tokens, src_key_padding_mask=padding)  # (B, T, D)
        output = region_outputs(attended, vision, self.config.num_regions)
        output.logits = self.head(hidden[:, 0])  # (B, num_labels)
        if return_region_logits and self.region_head is not None:
            output.region_logits = self.region_logits(vision)
        if region_labels is not None and self.region_head is not None:
            if image_index is not None:
                region_labels = region_labels[image_index]  # (B, N, A)
            output.region_loss = self.region_loss(vision, region_labels)
        if target_regions is not None:
            output.pointing_loss = self.pointing_loss(attended, vision, target_regions)
        if labels is not None and self.reconstruction is not None:
            output.reconstruction_loss = self.reconstruction_loss(vision, pixel_values, image_index)
        if labels is not None and self.contrast is not None:
            output.contrast_loss = self.contrast_loss(vision, pixel_values, image_index)
        if labels is not None and self.glimpse is not None:
            glimpse = self.glimpse_logits(question, attended, scored)
            smoothing = self.config.label_smoothing
            output.glimpse_loss = answer_loss(glimpse, labels, smoothing).mean()
        if labels is not None:
            # unsmoothed: REINFORCE's reward and the logged answer loss
            output.answer_loss = answer_loss(output.logits, labels)
            smoothing = self.config.label_smoothing
            trained = answer_loss(output.logits, labels, smoothing) if smoothing else None
            output.loss = self._training_loss(output, question_group, trained)
        return output

    def attend(self, question: Tensor, question_mask: Tensor, regions: Tensor) -> AttentionOutput:
        """The fusion from the question to the (normalised) regions, once per hop.

        Hop 1 queries with the question's CLS vector; each later hop with what its
        ``HopQuery`` reads from the question's tokens (``vqa.hops``). The hops are joined as
        more heads: weights (B, heads * hops, 1, M) and one attended vector per hop (B, hops, D).

        Args:
            question: (B, L, D) question tokens, CLS first.
            question_mask: (B, L) 1 for a real token.
            regions: (B, M, D) region tokens after ``region_norm``.

        Returns:
            The fusion's output for one query per hop: ``output`` (B, hops, D); weights and
            scores (B, heads * hops, 1, M); in hard and hybrid modes the selections too.
        """
        query = self.query_norm(question[:, :1])  # (B, 1, D)
        hops = [self.fusion(query, regions)]
        for hop_query in self.hop_queries:
            query = self.query_norm(hop_query(question, question_mask, query, hops[-1].output))
            hops.append(self.fusion(query, regions))
        return stack_hops(hops)

    def encode_images(
        self, pixel_values: Tensor, question: Tensor, image_index: Tensor | None = None
    ) -> VisionTokens:
        """The vision tokens of each question's image, (B, M, vision_hidden_size).

        Unguided, each of the U images is encoded once and its N tokens are shared by its
        questions. With FiLM or an encoder selection (hard and hybrid modes), the question's
        CLS vector guides the blocks (``vqa.guided_vision``); the selection of the "cls" rule
        does without the question.

        Args:
            pixel_values: (U, C, H, W) images.
            question: (B, L, fusion_dim) question tokens, CLS first.
            image_index: (B,) the image of each question; default: image b for question b.
        """
        selector = self.encoder_selector if self.fusion.mode != "soft" else None
        if self.film is None and selector is None:
            features = self.vision(pixel_values)  # (U, N, vision_hidden_size)
            return VisionTokens(features if image_index is None else features[image_index])
        query = question[:, 0]  # (B, fusion_dim)
        return encode_guided(
            self.vision,
            pixel_values,
            image_index,
            query=query,
            film=None if self.film is None else self.film(query),
            selector=selector,
            select_after=self.config.encoder_select_after,
            rule=self.config.encoder_rule,
        )

    def _reasoner_inputs(
        self, question: Tensor, question_mask: Tensor, attended: AttentionOutput, regions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """[question tokens; attended vector; regions marked with weight] and their padding mask.

        Each region token gets ``weight_embedding`` times (its weight x the number of regions
        passed), which is exactly 1 in hard mode and averages 1 otherwise: the reasoner sees
        how each region was weighted, and the selection's estimator gets a gradient through
        this path too. Adding the mark rather than scaling the token keeps a peaked softmax
        (up to k or N times one token) from blowing up the reasoner's residual stream.
        """
        weights = attended.weights[:, :, 0]  # (B, H, N)
        if attended.indices is None:
            picked = regions  # soft: every region, (B, N, D)
            gate = weights.mean(1) * regions.shape[1]  # (B, N)
            kept = torch.ones_like(gate, dtype=torch.bool)  # (B, N)
        else:
            indices = attended.indices[:, :, 0]  # (B, H, k)
            counts = attended.counts[:, :, 0, None]  # (B, H, 1): k, or each row's adaptive k
            picked = gather_regions(regions, indices).flatten(1, 2)  # (B, H * k, D)
            gate = (weights.gather(-1, indices) * counts).flatten(1)  # (B, H * k)
            # With an adaptive k, the slots past a row's k are padding the reasoner skips.
            slots = torch.arange(indices.shape[-1], device=indices.device)
            kept = (slots < counts).flatten(1)  # (B, H * k)
        picked = picked + gate.unsqueeze(-1).to(picked.dtype) * self.weight_embedding
        types = self.token_type.weight
        tokens = torch.cat(
            [question + types[QUESTION], attended.output + types[ATTENDED], picked + types[REGION]],
            dim=1,
        )
        hops = attended.output.shape[1]  # one attended vector per hop
        attended_visible = question_mask.new_ones(question_mask.shape[0], hops).bool()
        visible = torch.cat([question_mask.bool(), attended_visible, kept], dim=1)
        return tokens, ~visible

    def _training_loss(
        self,
        output: HybridVQAOutput,
        question_group: Tensor | None,
        smoothed_answer_loss: Tensor | None = None,
    ) -> Tensor:
        """Mean answer loss (``smoothed_answer_loss`` (B,) under label smoothing, else
        ``output.answer_loss``), plus the region attribute, pointing, window reconstruction,
        contrast, glimpse, compute (a learned budget's ``fusion_k_penalty * E[k]``) and
        REINFORCE terms.

        REINFORCE's reward baseline is that of each question's group (its type) when the
        config's ``reinforce_baseline`` is ``"type"`` and ``question_group`` (B,) is given.

        The encoder's selector and the fusion's budget head enter with weight 0 too: in soft
        mode (or a soft warm-up, or another k rule) they are not used, and DDP needs every
        trained parameter in every step's graph.
        """
        answer = output.answer_loss if smoothed_answer_loss is None else smoothed_answer_loss
        loss = answer.mean()
        for module in (self.encoder_selector, self.fusion.budget):
            if module is not None:
                loss = loss + sum(p.sum() for p in module.parameters()) * 0.0
        if output.expected_regions is not None:
            loss = loss + self.config.fusion_k_penalty * output.expected_regions.mean()
        if output.region_loss is not None:
            loss = loss + self.config.region_loss_weight * output.region_loss
        if output.pointing_loss is not None:
            loss = loss + self.config.pointing_loss_weight * output.pointing_loss
        if output.reconstruction_loss is not None:
            loss = loss + self.config.reconstruction_loss_weight * output.reconstruction_loss
        if output.contrast_loss is not None:
            loss = loss + self.config.contrast_loss_weight * output.contrast_loss
        if output.glimpse_loss is not None:
            loss = loss + self.config.glimpse_loss_weight * output.glimpse_loss
        if output.log_prob is None:
            return loss
        reward = -output.answer_loss.detach()  # (B,)
        group = question_group if self.config.reinforce_baseline == "type" else None
        entropy = selection_entropy(output.attention_scores)  # (B, H)
        policy = reinforce_loss(
            output.log_prob,
            reward,
            self.baseline(reward, group),
            entropy=entropy,
            entropy_weight=self.entropy_weight,
        )
        return loss + self.config.reinforce_weight * policy


def region_outputs(
    attended: AttentionOutput, vision: VisionTokens, num_regions: int
) -> HybridVQAOutput:
    """The fusion's scores, weights and selection, per region of the image (B, H, N).

    With an encoder selection the fusion saw M tokens: their values go to their regions, the
    dropped regions get weight 0 and score -inf, and a folded token's weight is left out. The
    encoder's REINFORCE log-probability joins the fusion's, and ``encoder_kept`` marks the
    regions it kept.
    """
    scores, weights = attended.scores[:, :, 0], attended.weights[:, :, 0]  # (B, H, M)
    indices = None if attended.indices is None else attended.indices[:, :, 0]  # (B, H, k)
    counts = None if attended.counts is None else attended.counts[:, :, 0]  # (B, H)
    expected = None
    if attended.expected_counts is not None:
        expected = attended.expected_counts[:, :, 0]  # (B, H)
    log_prob = None if attended.log_prob is None else attended.log_prob[:, :, 0]  # (B, H)
    encoder_kept = None
    if vision.selection is not None:
        kept = vision.selection.indices  # (B, k)
        encoder_kept = kept.new_zeros(kept.shape[0], num_regions, dtype=torch.bool)
        encoder_kept = encoder_kept.scatter(1, kept, True)  # (B, N)
    if vision.regions is not None:
        scores = scatter_regions(scores, vision.regions, num_regions, float("-inf"))
        weights = scatter_regions(weights, vision.regions, num_regions, 0.0)
        if indices is not None:
            heads = indices.shape[1]
            indices = vision.regions[:, None].expand(-1, heads, -1).gather(-1, indices)
        encoder_log_prob = vision.selection.log_prob
        if log_prob is not None and encoder_log_prob is not None:
            log_prob = log_prob + encoder_log_prob[:, None]
    return HybridVQAOutput(
        attention_scores=scores,
        attention_weights=weights,
        selected_indices=indices,
        kept_regions=counts,
        expected_regions=expected,
        encoder_kept=encoder_kept,
        log_prob=log_prob,
    )


def answer_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """Per-question loss (B,): cross-entropy for answer ids (B,), soft-score BCE for (B, A)
    scores. With ``smoothing`` s, the cross-entropy's target spreads s of its mass evenly over
    the A answers; each soft score t becomes ``t (1 - s) + s / A``, so a positive score drops
    by ``s t`` while a negative one rises by only ``s / A``.

    Questions whose label is -100 (an answer outside the vocabulary) cost 0.
    """
    if labels.dtype.is_floating_point:
        targets = labels.float() * (1 - smoothing) + smoothing / logits.shape[-1]
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
        return bce.sum(-1)
    return F.cross_entropy(
        logits.float(), labels, ignore_index=-100, reduction="none", label_smoothing=smoothing
    )


AutoConfig.register(HybridVQAConfig.model_type, HybridVQAConfig)
AutoModel.register(HybridVQAConfig, HybridVQAModel)
