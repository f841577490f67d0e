"""The pointing loss: target regions from target boxes, the loss, and training with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vqa.auxiliary_losses import pointing_loss
from vqa.cli import main
from vqa.configuration import HybridVQAConfig
from vqa.data.formats import load_local_dataset
from vqa.data.regions import target_regions
from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor, VQACollator


def test_target_regions_are_the_regions_whose_centre_is_in_a_target_box():
    # 16 px regions of a 64 px image; centres at 8, 24, 40, 56
    marked = target_regions([[0, 0, 30, 16], [48, 32, 64, 64]], (64, 64), grid=4)
    assert marked.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_a_box_too_small_for_a_region_centre_marks_the_region_of_its_own_centre():
    marked = target_regions([[17, 33, 22, 38]], (64, 64), grid=4)  # centre (19.5, 35.5)
    assert marked.nonzero().flatten().tolist() == [2 * 4 + 1]
    edge = target_regions([[62, 62, 64, 64]], (64, 64), grid=4)
    assert edge.nonzero().flatten().tolist() == [15]


def test_target_regions_follow_the_image_size_of_the_boxes():
    # a 128 x 64 image: regions are 32 x 16 px, centres x = 16, 48, 80, 112
    marked = target_regions([[40, 0, 90, 16]], (128, 64), grid=4)
    assert marked.nonzero().flatten().tolist() == [1, 2]
    assert not target_regions([], (128, 64), grid=4).any()


def test_pointing_loss_is_the_cross_entropy_to_an_even_spread_over_the_targets():
    scores = torch.tensor([[[2.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])  # (B=2, H=1, N=4)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    log_probs = torch.log_softmax(scores[0, 0], -1)
    first = -(log_probs[0] + log_probs[1]) / 2
    expected = (first + math.log(4)) / 2
    assert pointing_loss(scores, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_questions_without_targets_cost_nothing_but_count_in_the_mean():
    """So the halves of a batch split over two processes average to the whole."""
    scores = torch.randn(4, 2, 6)
    targets = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0] * 6, [0, 1, 1, 0, 0, 0], [0] * 6])
    whole = pointing_loss(scores, targets)
    halves = (pointing_loss(scores[:2], targets[:2]) + pointing_loss(scores[2:], targets[2:])) / 2
    assert torch.allclose(whole, halves)
    assert pointing_loss(scores, torch.zeros(4, 6)).item() == 0.0


def tiny_batch() -> dict:
    torch.manual_seed(1)
    targets = torch.zeros(4, 16)
    targets[0, [0, 1]] = targets[2, 5] = 1.0
    return {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "input_ids": torch.randint(5, 50, (4, 6)),
        "image_index": torch.tensor([0, 0, 1, 1]),
        "labels": torch.tensor([0, 1, 2, 0]),
        "target_regions": targets,
    }


@pytest.mark.parametrize("mode", ["soft", "hard", "hybrid"])
def test_the_pointing_loss_is_added_with_its_weight_and_trains_the_fusion_scores(mode, tiny_fields):
    torch.manual_seed(0)
    config = HybridVQAConfig(**{**tiny_fields, "pointing_loss_weight": 0.5, "fusion_mode": mode})
    model = HybridVQAModel(config).train()
    output = model(**tiny_batch())
    assert output.pointing_loss > 0
    expected = output.answer_loss.mean() + 0.5 * output.pointing_loss
    if output.region_loss is not None:
        expected = expected + config.region_loss_weight * output.region_loss
    assert torch.allclose(output.loss, expected)
    output.pointing_loss.backward()
    for projection in (model.fusion.q_proj, model.fusion.k_proj):
        assert projection.weight.grad.abs().sum() > 0
    assert model.fusion.v_proj.weight.grad is None  # the scores do not use the values
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.parameters())


def test_a_batch_without_target_regions_has_no_pointing_loss(tiny_fields):
    model = HybridVQAModel(HybridVQAConfig(**{**tiny_fields, "pointing_loss_weight": 1.0}))
    batch = tiny_batch()
    del batch["target_regions"]
    assert model(**batch).pointing_loss is None


def test_a_negative_pointing_loss_weight_is_refused(tiny_fields):
    with pytest.raises(ValueError, match="config field 'pointing_loss_weight' must be >= 0"):
        HybridVQAConfig(**{**tiny_fields, "pointing_loss_weight": -0.1})


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(root, train=12, val=4, test=0, config=config, seed=3, progress=False)
    return root


def test_the_collator_marks_the_target_regions_of_each_question(scenes):
    rows = load_local_dataset(scenes, ["train"])["train"]
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    batch = [rows[i] for i in range(8)]
    inputs, _ = VQACollator(processor, target_grid=4)(batch)
    assert inputs["target_regions"].shape == (8, 16)
    for row, marked in zip(batch, inputs["target_regions"], strict=True):
        expected = target_regions(row["target_boxes"], (32, 32), grid=4)
        assert torch.equal(marked, expected)
        assert marked.any() == bool(row["target_boxes"])
    assert "target_regions" not in VQACollator(processor)(batch)[0]


def trained_metrics(train_tiny, data: Path, run: Path, *options: str) -> dict:
    assert train_tiny(data, run, *options) == 0
    return json.loads((run / "metrics.json").read_text())


def test_training_with_the_pointing_loss_records_it_and_saves_its_weight(
    scenes, tmp_path, train_tiny
):
    metrics = trained_metrics(train_tiny, scenes, tmp_path / "run", "--pointing-loss-weight", "2")
    assert metrics["config"]["pointing_loss_weight"] == 2.0
    losses = metrics["history"][0]["step_pointing_losses"]
    assert len(losses) == len(metrics["history"][0]["step_losses"])
    assert min(losses) > 0
    reloaded = HybridVQAModel.from_pretrained(tmp_path / "run")
    assert reloaded.config.pointing_loss_weight == 2.0


def test_pointing_loss_weight_zero_trains_without_target_regions(scenes, tmp_path, train_tiny):
    metrics = trained_metrics(train_tiny, scenes, tmp_path / "run", "--pointing-loss-weight", "0")
    assert set(metrics["history"][0]["step_pointing_losses"]) == {0.0}


def test_a_negative_pointing_loss_weight_is_refused_before_training(scenes, tmp_path, capsys):
    command = ["train", "--data", str(scenes), "--output", str(tmp_path / "run")]
    assert main([*command, "--pointing-loss-weight", "-1"]) == 2
    assert "pointing_loss_weight must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
