"""The box-free window reconstruction loss (vqa.reconstruction) and its place in the model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vqa.configuration import HybridVQAConfig
from vqa.guided_vision import FOLDED
from vqa.modeling import HybridVQAModel
from vqa.reconstruction import (
    WindowReconstruction,
    frozen_batch_norm_statistics,
    hide_regions,
    window_pixels,
)


def test_each_window_is_the_normalised_pixels_around_its_patch():
    images = torch.randn(2, 3, 32, 32)
    windows = window_pixels(images, patch_size=8, window=3)  # 4 x 4 patches
    assert windows.shape == (2, 16, 3 * 24 * 24)
    padded = F.pad(images, (8, 8, 8, 8))
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        expected = padded[1, :, row * 8 : row * 8 + 24, col * 8 : col * 8 + 24].reshape(-1)
        expected = (expected - expected.mean()) / (expected.var() + 1e-6).sqrt()
        torch.testing.assert_close(windows[1, row * 4 + col], expected)


def test_a_window_of_one_patch_is_that_patch():
    images = torch.randn(1, 3, 16, 16)
    windows = window_pixels(images, patch_size=8, window=1)
    patch = images[0, :, 8:16, 0:8].reshape(-1)
    torch.testing.assert_close(windows[0, 2], (patch - patch.mean()) / (patch.var() + 1e-6).sqrt())


def test_only_the_tokens_of_a_region_count():
    torch.manual_seed(0)
    head = WindowReconstruction(hidden_size=6, num_channels=3, patch_size=8, window=3)
    images = torch.randn(2, 3, 32, 32)
    features = torch.randn(2, 3, 6)
    regions = torch.tensor([[5, 0, FOLDED], [15, 7, FOLDED]])
    loss = head(features, regions, images)
    target = window_pixels(images, 8, 3)
    predicted = head.head(features[:, :2])
    expected = (predicted - torch.stack([target[0, [5, 0]], target[1, [15, 7]]])).pow(2).mean()
    torch.testing.assert_close(loss, expected)


def test_the_head_learns_to_redraw_the_windows():
    torch.manual_seed(0)
    head = WindowReconstruction(hidden_size=8, num_channels=3, patch_size=4, window=3)
    images = torch.randn(4, 3, 8, 8)
    features = torch.randn(4, 4, 8)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        loss = head(features, None, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("window", [0, 2, 3.0, True])
def test_a_window_that_is_not_an_odd_count_is_refused(tiny_fields, window):
    with pytest.raises(ValueError, match="reconstruction_window"):
        HybridVQAConfig(**tiny_fields, reconstruction_window=window)


def test_a_negative_weight_is_refused(tiny_fields):
    with pytest.raises(ValueError, match="reconstruction_loss_weight"):
        HybridVQAConfig(**tiny_fields, reconstruction_loss_weight=-1.0)


def _model(fields: dict, **extra) -> HybridVQAModel:
    torch.manual_seed(0)
    return HybridVQAModel(HybridVQAConfig(**fields, **extra)).train()


def test_without_a_weight_the_model_has_no_head_and_no_loss(tiny_fields):
    model = _model(tiny_fields)
    assert model.reconstruction is None
    output = model(
        torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), labels=torch.tensor([0, 1])
    )
    assert output.reconstruction_loss is None


def test_the_weighted_loss_joins_the_training_loss_once_per_image(tiny_fields):
    model = _model(tiny_fields, reconstruction_loss_weight=0.5)
    images = torch.randn(2, 3, 32, 32)
    questions = torch.randint(3, 50, (3, 6))
    labels = torch.tensor([0, 1, 2])
    shared = model(images, questions, labels=labels, image_index=torch.tensor([0, 0, 1]))
    expected = shared.answer_loss.mean() + 0.5 * shared.reconstruction_loss
    torch.testing.assert_close(shared.loss, expected)
    # Unguided, a question's tokens are its image's: asking twice about image 0 changes nothing.
    once = model(images, questions[1:], labels=labels[1:])
    torch.testing.assert_close(shared.reconstruction_loss, once.reconstruction_loss)
    shared.loss.backward()
    assert model.reconstruction.head.weight.grad.abs().sum() > 0
    assert model.vision.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_with_an_encoder_selection_only_kept_regions_are_redrawn(tiny_fields):
    model = _model(tiny_fields, reconstruction_loss_weight=1.0, encoder_select_after=0, encoder_k=8)
    output = model(
        torch.randn(2, 3, 32, 32), torch.randint(3, 50, (2, 6)), labels=torch.tensor([0, 1])
    )
    assert output.encoder_kept.sum(1).tolist() == [8, 8]
    assert torch.isfinite(output.reconstruction_loss)


def test_the_flag_reaches_the_trained_model(tmp_path, tiny_run, train_tiny):
    _, data = tiny_run
    run = tmp_path / "run"
    assert train_tiny(data, run, "--reconstruction-loss-weight", "0.5") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["reconstruction_loss_weight"] == 0.5
    model = HybridVQAModel.from_pretrained(run)
    assert model.reconstruction is not None


def test_a_model_trained_without_the_loss_gets_a_head_to_fine_tune_with_it(tiny_fields):
    model = _model(tiny_fields)
    model.set_reconstruction_loss_weight(0.25)
    assert model.config.reconstruction_loss_weight == 0.25
    output = model(
        torch.randn(1, 3, 32, 32), torch.randint(3, 50, (1, 6)), labels=torch.tensor([0])
    )
    assert torch.isfinite(output.reconstruction_loss)
    with pytest.raises(ValueError, match="reconstruction_loss_weight must be >= 0"):
        model.set_reconstruction_loss_weight(-1)


def test_an_image_no_question_is_about_is_left_out(tiny_fields):
    model = _model(tiny_fields, reconstruction_loss_weight=1.0).eval()  # no batch statistics
    images = torch.randn(3, 3, 32, 32)
    questions = torch.randint(3, 50, (2, 6))
    labels = torch.tensor([0, 1])
    with_extra = model(images, questions, labels=labels, image_index=torch.tensor([0, 2]))
    without = model(images[[0, 2]], questions, labels=labels, image_index=torch.tensor([0, 1]))
    torch.testing.assert_close(with_extra.reconstruction_loss, without.reconstruction_loss)


# Masked: a second pass of each image with some regions hidden redraws only those.


def test_hiding_zeroes_exactly_the_hidden_regions_pixels():
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    masked, hidden = hide_regions(images, patch_size=8, ratio=0.25)
    assert hidden.shape == (3, 16) and hidden.sum(1).tolist() == [4, 4, 4]
    for image in range(3):
        for region in range(16):
            row, col = divmod(region, 4)
            patch = masked[image, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8]
            original = images[image, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8]
            expected = torch.zeros_like(patch) if hidden[image, region] else original
            torch.testing.assert_close(patch, expected)
    assert not torch.equal(hidden[0], hidden[1])  # each image draws its own


def test_a_tiny_ratio_still_hides_one_region():
    _, hidden = hide_regions(torch.randn(2, 3, 16, 16), patch_size=8, ratio=0.01)
    assert hidden.sum(1).tolist() == [1, 1]


def test_only_the_hidden_regions_count():
    torch.manual_seed(0)
    head = WindowReconstruction(hidden_size=6, num_channels=3, patch_size=8, window=1)
    images = torch.randn(2, 3, 16, 16)
    features = torch.randn(2, 4, 6)
    hidden = torch.tensor([[True, False, False, True], [False, False, True, False]])
    loss = head(features, None, images, hidden)
    target = window_pixels(images, 8, 1)
    errors = (head.head(features) - target).pow(2).mean(-1)
    torch.testing.assert_close(loss, errors[hidden].mean())
    with pytest.raises(ValueError, match="hidden regions need the tokens of every region"):
        head(features, torch.zeros(2, 4, dtype=torch.long), images, hidden)


def test_batch_norm_normalises_by_the_batch_but_keeps_its_running_statistics():
    norm = torch.nn.BatchNorm2d(3).train()
    before = (norm.running_mean.clone(), norm.running_var.clone())
    inputs = 5 + torch.randn(4, 3, 2, 2)
    with frozen_batch_norm_statistics(norm):
        output = norm(inputs)
    assert abs(float(output.detach().mean())) < 1e-5  # normalised by the batch
    torch.testing.assert_close((norm.running_mean, norm.running_var), before)
    assert norm.momentum == 0.1  # restored
    norm(inputs)
    assert not torch.equal(norm.running_mean, before[0])


def test_the_masked_loss_comes_from_a_second_pass_of_each_image(tiny_fields):
    model = _model(tiny_fields, reconstruction_loss_weight=1.0, reconstruction_mask_ratio=0.5)
    images = torch.randn(2, 3, 32, 32)
    questions = torch.randint(3, 50, (3, 6))
    labels = torch.tensor([0, 1, 2])
    calls = []
    hook = model.vision.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    torch.manual_seed(1)
    output = model(images, questions, labels=labels, image_index=torch.tensor([0, 0, 1]))
    hook.remove()
    assert len(calls) == 2  # the answering pass, then the masked one
    masked = calls[1]
    hidden_pixels = (masked == 0).all(1)  # (U, H, W)
    assert 0.4 < float(hidden_pixels.float().mean()) < 0.6  # half of the 16 regions, per image
    torch.testing.assert_close(
        masked[~hidden_pixels[:, None].expand_as(masked)],
        images[~hidden_pixels[:, None].expand_as(images)],
    )
    torch.testing.assert_close(output.loss, output.answer_loss.mean() + output.reconstruction_loss)
    output.loss.backward()
    assert model.vision.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_the_masked_pass_leaves_batch_norm_running_statistics_to_the_answering_pass(tiny_fields):
    masked = _model(tiny_fields, reconstruction_loss_weight=1.0, reconstruction_mask_ratio=0.5)
    plain = _model(tiny_fields)
    plain.load_state_dict(masked.state_dict(), strict=False)
    images = torch.randn(2, 3, 32, 32)
    questions = torch.randint(3, 50, (2, 6))
    masked(images, questions, labels=torch.tensor([0, 1]))
    plain(images, questions, labels=torch.tensor([0, 1]))
    for name, buffer in plain.vision.named_buffers():
        if "running" in name:
            torch.testing.assert_close(dict(masked.vision.named_buffers())[name], buffer)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, "half"])
def test_a_mask_ratio_outside_0_1_is_refused(tiny_fields, ratio):
    with pytest.raises(ValueError, match="reconstruction_mask_ratio"):
        HybridVQAConfig(**tiny_fields, reconstruction_mask_ratio=ratio)


def test_the_mask_ratio_flag_reaches_the_trained_model(tmp_path, tiny_run, train_tiny):
    _, data = tiny_run
    run = tmp_path / "run"
    flags = ["--reconstruction-loss-weight", "1", "--reconstruction-mask-ratio", "0.4"]
    assert train_tiny(data, run, *flags) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["reconstruction_mask_ratio"] == 0.4
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert all(loss > 0 for loss in history[-1]["step_reconstruction_losses"])
