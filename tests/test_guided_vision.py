"""Question-guided token selection inside the ViT (vqa.guided_vision) in the model and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from test_modeling import ANSWERS, QUESTIONS, batch, make_model, processor, random_images

from vqa.configuration import HybridVQAConfig
from vqa.guided_vision import FOLDED, scatter_regions

__all__ = ["processor"]  # the module fixture, shared with test_modeling

SELECTING = {"vision_layers": 2, "encoder_select_after": 1, "encoder_k": 8}


def block_lengths(model) -> list[tuple[int, int]]:
    """Record (batch, tokens) of the input of every ViT block during the next forward passes."""
    lengths: list[tuple[int, int]] = []
    for block in model.vision.blocks:
        block.register_forward_hook(lambda m, args, out: lengths.append(tuple(args[0].shape[:2])))
    return lengths


def test_later_blocks_run_on_the_kept_tokens_only_and_earlier_ones_once_per_image(processor):
    model = make_model(processor, **SELECTING)
    lengths = block_lengths(model)
    inputs = processor.questions(QUESTIONS)
    inputs["pixel_values"] = processor.images(random_images(2))
    inputs["image_index"] = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        output = model(**inputs)
    assert lengths == [(2, 16), (4, 8)]  # block 0: 2 images x 16 tokens; block 1: 4 x 8 kept
    assert output.attention_weights.shape == (4, 1, 16)
    kept = model.encode_images(
        inputs["pixel_values"],
        model.encode_questions(inputs["input_ids"], inputs["attention_mask"]),
        inputs["image_index"],
    ).regions  # (4, 8)
    outside = torch.ones(4, 16, dtype=torch.bool)
    outside[torch.arange(4)[:, None], kept] = False
    assert output.attention_weights[:, 0][outside].eq(0).all()
    assert output.attention_scores[:, 0][outside].eq(float("-inf")).all()
    assert all(
        set(row) <= set(k)
        for row, k in zip(output.selected_indices[:, 0].tolist(), kept.tolist(), strict=True)
    )


def test_soft_mode_keeps_every_token_with_the_same_weights(processor):
    model = make_model(processor, **SELECTING)
    plain = make_model(processor, vision_layers=2)
    plain.load_state_dict(
        {
            name: value
            for name, value in model.state_dict().items()
            if "encoder_selector" not in name
        }
    )
    model.set_fusion(mode="soft")
    plain.set_fusion(mode="soft")
    lengths = block_lengths(model)
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch(processor)).logits, plain(**batch(processor)).logits
        )
    assert lengths == [(4, 16), (4, 16)]


def test_kept_tokens_keep_their_region_positions(processor):
    """Keeping every token through the selector gives the unselected model's answers."""
    model = make_model(processor, **{**SELECTING, "encoder_k": 16})
    plain = make_model(processor, vision_layers=2)
    plain.load_state_dict(
        {
            name: value
            for name, value in model.state_dict().items()
            if "encoder_selector" not in name
        }
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch(processor)).logits, plain(**batch(processor)).logits
        )


def test_the_answer_loss_trains_the_encoder_selector_with_ste(processor):
    model = make_model(processor, **SELECTING).train()
    model(**batch(processor), labels=processor.labels(ANSWERS)).loss.backward()
    assert model.encoder_selector.q_proj.weight.grad.abs().sum() > 0


def test_reinforce_adds_the_encoder_selection_to_the_policy(processor):
    model = make_model(processor, **SELECTING, fusion_estimator="reinforce").train()
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    output.loss.backward()
    assert output.log_prob.shape == (4, 1)
    assert model.encoder_selector.q_proj.weight.grad.abs().sum() > 0


def test_the_pointing_loss_supervises_the_encoder_selection(processor):
    model = make_model(processor, **SELECTING, pointing_loss_weight=1.0).train()
    targets = torch.zeros(4, 16)
    targets[:, 5] = 1
    output = model(**batch(processor), target_regions=targets)
    output.pointing_loss.backward()
    assert torch.isfinite(output.pointing_loss)
    assert model.encoder_selector.q_proj.weight.grad.abs().sum() > 0


def test_fold_adds_one_token_that_is_no_region(processor):
    model = make_model(processor, **SELECTING, encoder_fold=True)
    lengths = block_lengths(model)
    with torch.no_grad():
        output = model(**batch(processor))
    assert lengths == [(4, 16), (4, 9)]
    assert output.attention_weights.shape == (4, 1, 16)


@pytest.mark.parametrize("fold", [False, True], ids=["drop", "fold"])
def test_encoder_kept_marks_the_kept_regions_and_every_weighted_one(processor, fold):
    model = make_model(processor, **SELECTING, encoder_fold=fold)
    inputs = batch(processor)
    with torch.no_grad():
        output = model(**inputs)
        question = model.encode_questions(inputs["input_ids"], inputs["attention_mask"])
        regions = model.encode_images(inputs["pixel_values"], question).regions  # (4, M)
    kept = output.encoder_kept
    assert kept.shape == (4, 16) and kept.dtype == torch.bool
    assert kept.sum(1).tolist() == [8] * 4
    for row, tokens in zip(kept, regions.tolist(), strict=True):
        assert row.nonzero().flatten().tolist() == sorted(set(tokens) - {FOLDED})
    assert not (output.attention_weights > 0).any(1)[~kept].any()
    assert kept.gather(1, output.selected_indices[:, 0]).all()


def test_encoder_kept_is_none_in_soft_mode_and_without_an_encoder_selection(processor):
    model = make_model(processor, **SELECTING)
    model.set_fusion(mode="soft")
    plain = make_model(processor, vision_layers=2)
    with torch.no_grad():
        assert model(**batch(processor)).encoder_kept is None
        assert plain(**batch(processor)).encoder_kept is None


def test_scatter_regions_places_each_token_and_drops_the_folded_one():
    values = torch.tensor([[[1.0, 2.0, 3.0]]])
    regions = torch.tensor([[4, 0, FOLDED]])
    out = scatter_regions(values, regions, 5, 0.0)
    assert out.tolist() == [[[2.0, 0.0, 0.0, 0.0, 1.0]]]


def test_encoder_selection_switches_on_a_trained_model(processor):
    model = make_model(processor, **SELECTING)
    lengths = block_lengths(model)
    model.set_encoder_selection(select_after=0, encoder_k=0.25)
    with torch.no_grad():
        model(**batch(processor))
    assert lengths == [(4, 4), (4, 4)]
    assert model.config.encoder_select_after == 0 and model.config.encoder_k == 0.25
    with pytest.raises(ValueError, match=r"select_after=3 is outside 0..2"):
        model.set_encoder_selection(select_after=3)
    with pytest.raises(ValueError, match="'encoder_k' \\(2\\) leaves fewer tokens than the fusion"):
        model.set_encoder_selection(encoder_k=2)
    with pytest.raises(ValueError, match="has no token selection in its vision encoder"):
        make_model(processor).set_encoder_selection(encoder_k=4)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoder_select_after": -1}, "'encoder_select_after' must be None or an int >= 0"),
        ({"encoder_k": 0}, "'encoder_k' must be an int >= 1 or a float in"),
        ({"encoder_k": 1.5}, "'encoder_k' must be an int >= 1 or a float in"),
        ({"encoder_k": 17}, "'encoder_k' \\(17\\) is greater than the number of regions"),
        (
            {
                "encoder_select_after": 1,
                "vision_backend": "transformers",
                "vision_stem": "patch",
                "vision_config": {"model_type": "beit"},
            },
            "'encoder_select_after' needs a vision encoder that runs block by block",
        ),
    ],
)
def test_config_rejects_bad_encoder_selection(fields, message):
    tiny = {"image_size": 32, "patch_size": 8, "fusion_k": 4}
    with pytest.raises(ValueError, match=message):
        HybridVQAConfig(**tiny, **fields)


def test_select_after_beyond_the_blocks_is_refused(processor):
    with pytest.raises(ValueError, match=r"'encoder_select_after' \(5\) must be in 0..2"):
        make_model(processor, **{**SELECTING, "encoder_select_after": 5})


def test_train_eval_and_predict_take_the_encoder_selection(tmp_path, train_tiny, tiny_run, capsys):
    from vqa.cli import main

    _, data = tiny_run
    run = tmp_path / "run"
    options = ("--select-after", "0", "--encoder-k", "8", "--encoder-fold")
    assert train_tiny(data, run, *options) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["encoder_select_after"], config["encoder_k"], config["encoder_fold"]) == (
        0,
        8,
        True,
    )
    capsys.readouterr()
    assert (
        main(["eval", "--model", str(run), "--data", str(data), "--encoder-k", "0.5", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0
    image = next((data / "images" / "test").iterdir())
    command = [
        "predict",
        "--model",
        str(run),
        "--image",
        str(image),
        "--question",
        "is there a red circle?",
    ]
    assert main([*command, "--select-after", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"]


def test_an_unused_encoder_selector_still_gets_a_gradient_for_ddp(processor):
    """Soft mode (and a soft warm-up) skips the selector; DDP needs it in the graph anyway."""
    model = make_model(processor, **SELECTING).train()
    model.set_fusion(mode="soft")
    model(**batch(processor), labels=processor.labels(ANSWERS)).loss.backward()
    grads = [parameter.grad for parameter in model.encoder_selector.parameters()]
    assert all(grad is not None and grad.eq(0).all() for grad in grads)


def test_the_fusion_k_must_fit_in_what_the_encoder_keeps(processor):
    with pytest.raises(
        ValueError, match=r"'encoder_k' \(0.15\) leaves fewer tokens than the fusion"
    ):
        HybridVQAConfig(
            image_size=32, patch_size=8, fusion_k=4, encoder_select_after=0, encoder_k=0.15
        )
    model = make_model(processor, **SELECTING)
    assert model.fusion_tokens() == 8
    with pytest.raises(ValueError, match="k=12 is more than the 8 tokens that the vision encoder"):
        model.set_fusion(k=12)
    assert make_model(processor, **SELECTING, encoder_fold=True).fusion_tokens() == 9


def test_encoder_k_without_select_after_is_refused():
    from vqa.arguments import TrainingArguments

    with pytest.raises(
        ValueError, match=r"--encoder-k, --encoder-fold and --encoder-rule .* give --select-after"
    ):
        TrainingArguments(output="run", encoder_k=8)


def test_an_encoder_k_that_is_no_number_is_a_clear_flag_error(capsys):
    from vqa.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--output", "run", "--select-after", "1", "--encoder-k", "half"])
    assert (
        "expected a count (16) or a ratio in (0, 1] (0.25), got 'half'" in capsys.readouterr().err
    )
