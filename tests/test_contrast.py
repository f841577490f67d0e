"""The box-free recoloured-view contrast loss (vqa.contrast) and its place in the model."""

from __future__ import annotations

import pytest
import torch

from vqa.arguments import TrainingArguments
from vqa.configuration import HybridVQAConfig
from vqa.contrast import RegionContrast, channel_permutation, info_nce, recoloured_view
from vqa.modeling import HybridVQAModel


def numbered_regions(patch: int = 4, grid: int = 4) -> torch.Tensor:
    """(2, 3, 16, 16) images: region r holds (1 + r) in channel 0, 10x that in channel 1 and
    100x in channel 2, so a region's pixels say which region and which channel they are."""
    values = torch.arange(1, grid * grid + 1, dtype=torch.float).view(grid, grid)
    image = values.repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    scales = torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    return (image * scales).expand(2, -1, -1, -1).clone()


def test_the_view_pairs_each_region_with_its_own_pixels_in_other_channels():
    images = numbered_regions()
    for seed in range(10):
        torch.manual_seed(seed)
        view, source, target = recoloured_view(images, 4)
        assert len(source) == len(target) > 0
        original = images[:, :, ::4, ::4].flatten(2)[:, :, source]  # (U, C, P)
        moved = view[:, :, ::4, ::4].flatten(2)[:, :, target]
        order = [int(moved[0, c, 0] / original[0, 0, 0]) for c in range(3)]
        order = [{1: 0, 10: 1, 100: 2}[ratio] for ratio in order]
        assert sorted(order) == [0, 1, 2] and order != [0, 1, 2]
        torch.testing.assert_close(moved, original[:, order])


def test_the_view_moves_by_at_most_two_regions_and_fills_in_zeros():
    images = numbered_regions()
    shifts = set()
    for seed in range(40):
        torch.manual_seed(seed)
        view, source, target = recoloured_view(images, 4)
        delta = target - source  # dy * 4 + dx, the same for every pair
        assert len(set(delta.tolist())) == 1
        shifts.add(int(delta[0]))
        uncovered = torch.ones(16, dtype=torch.bool)
        uncovered[target] = False
        assert (view[:, :, ::4, ::4].flatten(2)[:, :, uncovered] == 0).all()
    assert len(shifts) > 5
    assert all(abs(shift) <= 2 * 4 + 2 for shift in shifts)


def test_a_channel_order_is_never_the_identity():
    torch.manual_seed(0)
    orders = {tuple(channel_permutation(3).tolist()) for _ in range(200)}
    assert (0, 1, 2) not in orders and len(orders) == 5
    with pytest.raises(ValueError, match="at least 2 channels"):
        channel_permutation(1)


def test_info_nce_is_low_for_matching_rows_and_high_for_shuffled_ones():
    torch.manual_seed(0)
    first = torch.randn(64, 32)
    assert info_nce(first, first + 0.01 * torch.randn(64, 32), 0.2) < 1.0
    assert info_nce(first, first[torch.randperm(64)], 0.2) > 3.0  # log(64) = 4.2 at random


def test_the_head_compares_only_matching_regions_and_learns_them():
    torch.manual_seed(0)
    head = RegionContrast(hidden_size=16, embedding_size=8, samples=64)
    first = torch.randn(2, 16, 16)
    source, target = torch.arange(12), torch.arange(4, 16)  # the view moved down one row
    second = torch.randn(2, 16, 16)
    second[:, target] = first[:, source]
    same = head(first, second, source, target)
    other = head(first, torch.randn(2, 16, 16), source, target)
    assert same < other


def _model(fields: dict, **extra) -> HybridVQAModel:
    torch.manual_seed(0)
    return HybridVQAModel(HybridVQAConfig(**fields, **extra)).train()


def test_a_negative_weight_is_refused(tiny_fields):
    with pytest.raises(ValueError, match="contrast_loss_weight"):
        HybridVQAConfig(**tiny_fields, contrast_loss_weight=-1.0)
    with pytest.raises(ValueError, match="contrast_loss_weight must be >= 0"):
        TrainingArguments(output="x", contrast_loss_weight=-0.5)


def test_without_a_weight_the_model_has_no_head_and_no_loss(tiny_fields):
    model = _model(tiny_fields)
    assert model.contrast is None
    output = model(
        torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), labels=torch.tensor([0, 1])
    )
    assert output.contrast_loss is None


def test_the_weighted_loss_joins_the_training_loss_from_a_second_pass(tiny_fields):
    model = _model(tiny_fields, contrast_loss_weight=0.5)
    images = torch.randn(2, 3, 32, 32)
    calls = []
    hook = model.vision.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    output = model(
        images,
        torch.randint(3, 50, (3, 6)),
        labels=torch.tensor([0, 1, 2]),
        image_index=torch.tensor([0, 0, 1]),
    )
    hook.remove()
    assert len(calls) == 2  # the answering pass, then the second view
    assert calls[1].shape == images.shape and not torch.equal(calls[1], images)
    torch.testing.assert_close(output.loss, output.answer_loss.mean() + 0.5 * output.contrast_loss)
    output.contrast_loss.backward()
    assert model.contrast.head[0].weight.grad.abs().sum() > 0
    assert model.vision.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_the_second_view_leaves_batch_norm_running_statistics_to_the_answering_pass(
    tiny_fields,
):
    contrast = _model(tiny_fields, contrast_loss_weight=1.0)
    plain = _model(tiny_fields)
    plain.load_state_dict(contrast.state_dict(), strict=False)
    images = torch.randn(2, 3, 32, 32)
    questions = torch.randint(3, 50, (2, 6))
    contrast(images, questions, labels=torch.tensor([0, 1]))
    plain(images, questions, labels=torch.tensor([0, 1]))
    for name, buffer in plain.vision.named_buffers():
        if "running" in name:
            torch.testing.assert_close(dict(contrast.vision.named_buffers())[name], buffer)


@pytest.mark.parametrize(
    "extra",
    [
        {"encoder_select_after": 0, "encoder_k": 8},
        {"vision_conditioning": "film"},
    ],
)
def test_guided_encoders_compare_unguided_passes_of_every_region(tiny_fields, extra):
    model = _model(tiny_fields, contrast_loss_weight=1.0, **extra)
    calls = []
    hook = model.vision.register_forward_hook(lambda module, args, out: calls.append(out))
    output = model(
        torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), labels=torch.tensor([0, 1])
    )
    hook.remove()
    assert [tuple(out.shape) for out in calls[-2:]] == [(2, 16, 32), (2, 16, 32)]
    assert torch.isfinite(output.contrast_loss)


def test_a_model_trained_without_the_loss_gets_a_head_to_fine_tune_with_it(tiny_fields):
    model = _model(tiny_fields)
    model.set_contrast_loss_weight(0.25)
    assert model.config.contrast_loss_weight == 0.25
    output = model(
        torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), labels=torch.tensor([0, 1])
    )
    assert torch.isfinite(output.contrast_loss)
    with pytest.raises(ValueError, match="contrast_loss_weight must be >= 0"):
        model.set_contrast_loss_weight(-1)
