"""The glimpse readout (vqa.glimpse): an auxiliary answer from one soft glimpse with the fusion's
scores, the box-free signal that teaches hybrid's selection where to look."""

from __future__ import annotations

import pytest
import torch

from vqa.arguments import TrainingArguments
from vqa.configuration import HybridVQAConfig
from vqa.data.answers import AnswerVocab
from vqa.glimpse import GlimpseReadout
from vqa.init_from import adapt_answer_head
from vqa.modeling import HybridVQAModel

BOX_LOSSES_OFF = {"region_loss_weight": 0.0, "pointing_loss_weight": 0.0}


def _model(fields: dict, **extra) -> HybridVQAModel:
    torch.manual_seed(0)
    return HybridVQAModel(HybridVQAConfig(**{**fields, **BOX_LOSSES_OFF, **extra})).train()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), torch.tensor([0, 2])


def test_a_peaked_score_reads_that_region_and_heads_are_averaged():
    torch.manual_seed(0)
    readout = GlimpseReadout(dim=4, num_labels=3)
    question, regions = torch.randn(1, 4), torch.randn(1, 5, 4)
    scores = torch.full((1, 2, 5), -1e4)
    scores[0, 0, 1] = scores[0, 1, 3] = 0.0  # head 0 looks at region 1, head 1 at region 3
    glimpse = (regions[:, 1] + regions[:, 3]) / 2
    expected = readout.mlp(torch.cat([question, glimpse, question * glimpse], dim=-1))
    torch.testing.assert_close(readout(question, scores, regions), expected)


def test_an_absent_region_gets_no_weight():
    torch.manual_seed(0)
    readout = GlimpseReadout(dim=4, num_labels=3)
    question, regions = torch.randn(1, 4), torch.randn(1, 3, 4)
    scores = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    moved = regions.clone()
    moved[:, 2] = 1e3  # whatever the absent region holds
    torch.testing.assert_close(readout(question, scores, regions), readout(question, scores, moved))


def test_a_negative_weight_is_refused(tiny_fields):
    with pytest.raises(ValueError, match="glimpse_loss_weight"):
        HybridVQAConfig(**tiny_fields, glimpse_loss_weight=-1.0)
    with pytest.raises(ValueError, match="glimpse_loss_weight must be >= 0"):
        TrainingArguments(output="x", glimpse_loss_weight=-0.5)


def test_without_a_weight_the_model_has_no_head_and_no_loss(tiny_fields):
    model = _model(tiny_fields)
    assert model.glimpse is None
    pixels, ids, labels = _batch()
    assert model(pixels, ids, labels=labels).glimpse_loss is None


def test_the_weighted_loss_is_added_to_the_answer_loss(tiny_fields):
    model = _model(tiny_fields, glimpse_loss_weight=0.5)
    pixels, ids, labels = _batch()
    output = model(pixels, ids, labels=labels)
    assert torch.isfinite(output.glimpse_loss) and output.glimpse_loss > 0
    torch.testing.assert_close(output.loss, output.answer_loss.mean() + 0.5 * output.glimpse_loss)


def test_it_sends_a_gradient_to_the_scores_of_every_region_not_only_the_selected(tiny_fields):
    model = _model(tiny_fields, glimpse_loss_weight=1.0)
    assert model.fusion.mode == "hybrid" and model.config.fusion_k < model.config.num_regions
    captured = {}

    def keep_scores(module, inputs, output):
        output.scores.retain_grad()
        captured["output"] = output

    model.fusion.register_forward_hook(keep_scores)
    pixels, ids, labels = _batch()
    model(pixels, ids, labels=labels).glimpse_loss.backward()
    attended = captured["output"]
    gradient = attended.scores.grad[:, :, 0]  # (B, H, N)
    outside = torch.ones_like(gradient, dtype=torch.bool)
    outside.scatter_(-1, attended.indices[:, :, 0], False)  # the regions hybrid did not keep
    assert (gradient[outside] != 0).all()


def test_a_model_trained_without_the_loss_gets_a_head_to_fine_tune_with_it(tiny_fields):
    model = _model(tiny_fields)
    model.set_glimpse_loss_weight(0.25)
    assert model.config.glimpse_loss_weight == 0.25 and model.glimpse is not None
    pixels, ids, labels = _batch()
    assert torch.isfinite(model(pixels, ids, labels=labels).glimpse_loss)
    with pytest.raises(ValueError, match="glimpse_loss_weight must be >= 0"):
        model.set_glimpse_loss_weight(-1)


def test_new_answers_give_the_glimpse_one_row_each_keeping_the_known_ones(tiny_fields):
    model = _model(tiny_fields, glimpse_loss_weight=1.0)  # answers: red, blue, green
    old = model.glimpse.mlp[-1]
    assert adapt_answer_head(model, AnswerVocab(["blue", "zebra"])).endswith(
        "1 kept from RUN, 1 new"
    )
    new = model.glimpse.mlp[-1]
    assert new.out_features == 2 and model.head[-1].out_features == 2
    assert torch.equal(new.weight[0], old.weight[1]) and torch.equal(new.bias[0], old.bias[1])
    pixels, ids, _ = _batch()
    assert torch.isfinite(model(pixels, ids, labels=torch.tensor([0, 1])).glimpse_loss)
