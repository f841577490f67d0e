"""The auxiliary losses of :class:`vqa.modeling.HybridVQAModel`, beside the answer loss.

With boxes (the embedded scenes): the region attribute loss (a linear head predicts, from each
vision token, the attributes of the object under that region) and the pointing loss (the fusion
scores should put their mass on the regions of the objects a question is about). Without boxes,
losses that need only pixels: window reconstruction (``vqa.reconstruction``) and the
recoloured-view contrast (``vqa.contrast``), and an answer read from one soft glimpse
with the fusion's scores (``vqa.glimpse``). Each has its weight in the config; the model adds
the weighted sum to the answer loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_attention import AttentionOutput
from vqa.configuration import HybridVQAConfig
from vqa.contrast import RegionContrast, recoloured_view
from vqa.glimpse import GlimpseReadout
from vqa.guided_vision import FOLDED, VisionTokens, scatter_regions
from vqa.reconstruction import WindowReconstruction, frozen_batch_norm_statistics, hide_regions


class AuxiliaryLossesMixin:
    """The auxiliary losses and their heads, for :class:`vqa.modeling.HybridVQAModel`.

    Reads the model's ``config``, ``vision`` encoder, ``film`` generator and its heads
    ``region_head``, ``reconstruction``, ``contrast`` and ``glimpse`` (each None when its loss
    is off);
    a head added later is placed on the model's ``device`` and set up by its ``_init_weights``.
    """

    def region_logits(self, vision: VisionTokens) -> Tensor:
        """(B, N, sum of classes): the region head on each region's token; zeros (every class
        equally likely) for the regions that the encoder dropped."""
        logits = self.region_head(vision.features)  # (B, M, classes)
        if vision.regions is None:
            return logits
        transposed = scatter_regions(
            logits.transpose(1, 2), vision.regions, self.config.num_regions, 0.0
        )
        return transposed.transpose(1, 2)

    def pointing_loss(
        self, attended: AttentionOutput, vision: VisionTokens, target_regions: Tensor
    ) -> Tensor:
        """The pointing loss of the fusion over its M tokens, plus that of the encoder's
        question-guided selection over all N regions when there is one: both learn where to
        look (so with such a selection the loss is the sum of two such terms). EViT's "cls"
        rule learns nothing: its CLS attention is not supervised."""
        if vision.selection is None:
            return pointing_loss(attended.scores[:, :, 0], target_regions)
        kept = target_regions.gather(1, vision.regions.clamp_min(0))  # (B, M)
        kept = kept * (vision.regions != FOLDED)
        fusion = pointing_loss(attended.scores[:, :, 0], kept)
        if self.config.encoder_rule == "cls":
            return fusion
        return fusion + pointing_loss(vision.selection.scores[:, None], target_regions)

    def region_loss(self, vision: VisionTokens, region_labels: Tensor) -> Tensor:
        """Sum over attributes of the cross-entropy of each region's attribute classes.

        Each question's loss is the mean over the labelled regions of its image; the batch
        loss averages it over the questions, like the answer loss, so a batch split over
        processes averages to the same value.

        Args:
            vision: the (B, M, vision_hidden_size) tokens of each question's image.
            region_labels: (B, N, A) class ids, -100 = ignore. A batch whose labels are all
                ignored costs 0 (and still reaches the head, as DDP needs). With an encoder
                selection only the kept regions count.
        """
        if vision.regions is not None:
            slots = vision.regions.clamp_min(0)[..., None].expand(-1, -1, region_labels.shape[-1])
            region_labels = region_labels.gather(1, slots)  # (B, M, A)
            region_labels = region_labels.masked_fill((vision.regions == FOLDED)[..., None], -100)
        logits = self.region_head(vision.features).float()  # (B, M, sum of classes)
        sizes = list(self.config.region_attributes.values())
        per_question = logits.new_zeros(logits.shape[0])  # (B,)
        for index, part in enumerate(logits.split(sizes, dim=-1)):
            target = region_labels[..., index]  # (B, N)
            losses = F.cross_entropy(
                part.transpose(1, 2), target, ignore_index=-100, reduction="none"
            )  # (B, N), 0 where ignored
            per_question = per_question + losses.sum(1) / (target != -100).sum(1).clamp_min(1)
        return per_question.mean()

    @staticmethod
    def _build_reconstruction(config: HybridVQAConfig) -> WindowReconstruction:
        """The window reconstruction head of the config's regions and vision tokens."""
        return WindowReconstruction(
            config.vision_hidden_size,
            config.num_channels,
            config.patch_size,
            config.reconstruction_window,
        )

    def set_reconstruction_loss_weight(self, weight: float) -> None:
        """Set the window reconstruction loss's weight (:meth:`_set_loss_weight`)."""
        self._set_loss_weight("reconstruction", weight, self._build_reconstruction)

    def _set_loss_weight(
        self, head: str, weight: float, build: Callable[[HybridVQAConfig], nn.Module]
    ) -> None:
        """Set ``{head}_loss_weight``; a model without that head gets a new one from ``build``
        (to fine-tune with the loss a model trained without it)."""
        name = f"{head}_loss_weight"
        if not weight >= 0:
            raise ValueError(f"{name} must be >= 0, got {weight!r}")
        setattr(self.config, name, float(weight))
        if weight > 0 and getattr(self, head) is None:
            module = build(self.config).to(self.device)
            module.apply(self._init_weights)
            setattr(self, head, module)

    def reconstruction_loss(
        self, vision: VisionTokens, pixel_values: Tensor, image_index: Tensor | None
    ) -> Tensor:
        """The window reconstruction loss (``vqa.reconstruction``) of each image once: on the
        tokens of one of its questions (they are the same tokens unless the question guided
        the encoder), or, with ``reconstruction_mask_ratio``, on those of a second pass of the
        image through the unguided encoder with some regions hidden.

        Args:
            vision: the (B, M, vision_hidden_size) tokens of each question's image.
            pixel_values: (U, C, H, W) images.
            image_index: (B,) the image of each question, or None (image b for question b).
        """
        features, regions, pixel_values = tokens_per_image(vision, pixel_values, image_index)
        ratio = self.config.reconstruction_mask_ratio
        if ratio == 0:
            return self.reconstruction(features, regions, pixel_values)
        masked, hidden = hide_regions(pixel_values, self.config.patch_size, ratio)
        with frozen_batch_norm_statistics(self.vision):
            features = self.vision(masked)  # (U', N, D): every region, in order
        return self.reconstruction(features, None, pixel_values, hidden)

    def set_glimpse_loss_weight(self, weight: float) -> None:
        """Set the glimpse readout's answer loss weight (:meth:`_set_loss_weight`)."""
        self._set_loss_weight("glimpse", weight, self._build_glimpse)

    @staticmethod
    def _build_glimpse(config: HybridVQAConfig) -> GlimpseReadout:
        """The glimpse readout of the config's fusion size and answers."""
        return GlimpseReadout(config.fusion_dim, config.num_labels)

    def glimpse_logits(
        self, question: Tensor, attended: AttentionOutput, regions: Tensor
    ) -> Tensor:
        """(B, num_labels): the glimpse readout (``vqa.glimpse``) of each question.

        Args:
            question: (B, L, D) question tokens, CLS first.
            attended: the fusion's output; its scores (B, H, 1, M) weigh the regions.
            regions: (B, M, D) the region tokens the fusion scored (after ``region_norm``).
        """
        return self.glimpse(question[:, 0], attended.scores[:, :, 0], regions)

    def set_contrast_loss_weight(self, weight: float) -> None:
        """Set the recoloured-view contrast loss's weight (:meth:`_set_loss_weight`)."""
        self._set_loss_weight("contrast", weight, self._build_contrast)

    @staticmethod
    def _build_contrast(config: HybridVQAConfig) -> RegionContrast:
        """The recoloured-view contrast head of the config's vision tokens."""
        return RegionContrast(config.vision_hidden_size)

    def contrast_loss(
        self, vision: VisionTokens, pixel_values: Tensor, image_index: Tensor | None
    ) -> Tensor:
        """The recoloured-view contrast loss (``vqa.contrast``) of each image once: its
        tokens (those of one of its questions; an unguided pass of every region where FiLM
        guided the encoder or it kept only some regions) against an unguided pass of its
        second view.

        Args:
            vision: the (B, M, vision_hidden_size) tokens of each question's image.
            pixel_values: (U, C, H, W) images.
            image_index: (B,) the image of each question, or None (image b for question b).
        """
        features, regions, pixel_values = tokens_per_image(vision, pixel_values, image_index)
        view, source, target = recoloured_view(pixel_values, self.config.patch_size)
        with frozen_batch_norm_statistics(self.vision):
            if regions is not None or self.film is not None:
                features = self.vision(pixel_values)  # (U', N, D): every region, in order
            second = self.vision(view)  # (U', N, D)
        return self.contrast(features, second, source, target)


def tokens_per_image(
    vision: VisionTokens, pixel_values: Tensor, image_index: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The tokens of each image that a question asks about, once: those of one of its
    questions (the same tokens unless the question guided the encoder).

    Args:
        vision: the (B, M, D) tokens of each question's image, with their (B, M) regions or
            None (every region, in order).
        pixel_values: (U, C, H, W) images.
        image_index: (B,) the image of each question, or None (image b for question b).

    Returns:
        (U', M, D) tokens, their (U', M) regions or None, and the (U', C, H, W) images.
    """
    features, regions = vision.features, vision.regions
    if image_index is None:
        return features, regions, pixel_values
    questions = torch.arange(len(image_index), device=image_index.device)
    rows = questions.new_zeros(len(pixel_values)).scatter(0, image_index, questions)
    asked = torch.zeros_like(rows, dtype=torch.bool).scatter(0, image_index, True)
    rows = rows[asked]  # one question about each image that has one
    return features[rows], None if regions is None else regions[rows], pixel_values[asked]


def pointing_loss(scores: Tensor, target_regions: Tensor) -> Tensor:
    """Cross-entropy between the softmax of the fusion scores over all N regions and an even
    spread over each question's target regions, averaged over heads and questions.

    Questions without targets cost 0 and still count in the mean over the batch, so a batch
    split over processes averages to the same value.

    Args:
        scores: (B, H, N) fusion scores before selection.
        target_regions: (B, N) 1 for a target region, 0 elsewhere.
    """
    target = target_regions.float()
    target = target / target.sum(-1, keepdim=True).clamp_min(1)  # (B, N), rows sum to 1 or 0
    log_probs = torch.log_softmax(scores.float(), dim=-1)  # (B, H, N)
    return -(target[:, None] * log_probs).sum(-1).mean(1).mean()
