"""EViT's question-agnostic rule inside the vision encoder (``encoder_rule="cls"``): the CLS
token's attention ranks the patch tokens, in the model, the CLI and the ablation."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest
import torch
from test_ablation import SETTINGS, section, tiny_grid
from test_modeling import ANSWERS, QUESTIONS, make_model, processor, random_images

from vqa.ablation import RunSpec, grid, read_results, run_ablation, write_report
from vqa.cli import add_ablate_parser
from vqa.configuration import HybridVQAConfig

__all__ = ["processor"]  # the module fixture, shared with test_modeling

CLS = {"vision_layers": 2, "encoder_k": 8, "encoder_rule": "cls"}
TIMM_CLS = {**CLS, "vision_class_token": True}  # the built-in ViT, with a CLS token
TRANSFORMERS = {"vision_backend": "transformers", "vision_stem": "patch"}
CLIP_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
ENCODERS = {  # config fields of each vision encoder, with a CLS token
    "timm": {"vision_class_token": True},
    "vit": TRANSFORMERS,
    "clip": {**TRANSFORMERS, "vision_config": CLIP_VISION},
}


def pixels(count: int = 2) -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(count, 3, 32, 32)


def forward_attentions(model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The softmax attention (B, H, T, T) of every block of ``model``'s vision encoder in its
    ordinary forward pass over all tokens, read from the modules' own computation."""
    vision = model.vision
    if hasattr(vision.vit, "blocks"):  # timm: the unfused path, whose attn_drop sees the weights
        found = []
        for block in vision.vit.blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(lambda m, args, out: found.append(args[0]))
        with torch.no_grad():
            vision(pixel_values)
        return found
    vision.vit.set_attn_implementation("eager")
    with torch.no_grad():
        return list(vision.vit(pixel_values=pixel_values, output_attentions=True).attentions)


def cls_ranking(attention: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, N): the CLS token's attention on the N patch tokens, the mean over heads."""
    return attention[:, :, 0, prefix:].mean(1)


def selector_calls(model) -> list[tuple[torch.Tensor, object]]:
    """Record (input tokens, TokenSelection) of every call of the encoder's selector."""
    calls = []
    model.encoder_selector.register_forward_hook(lambda m, args, out: calls.append((args[0], out)))
    return calls


def encoder_kept(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).encoder_kept


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("select_after", [0, 1, 2])
def test_the_cls_rule_keeps_the_patches_the_cls_token_attends_to_most(
    processor, encoder, select_after
):
    fields = {**CLS, **ENCODERS[encoder], "encoder_select_after": select_after}
    model = make_model(processor, **fields)
    images = pixels()
    attentions = forward_attentions(model, images)
    attention = attentions[min(select_after, len(attentions) - 1)]  # the next block's
    expected = cls_ranking(attention, 1).topk(8, dim=-1).indices.sort(-1).values  # (2, 8)
    inputs = processor.questions(QUESTIONS[:2])
    with torch.no_grad():
        question = model.encode_questions(inputs["input_ids"], inputs["attention_mask"])
        vision = model.encode_images(images, question)
    assert vision.regions.tolist() == expected.tolist()
    torch.testing.assert_close(vision.selection.scores.exp(), cls_ranking(attention, 1))


def test_the_folded_token_is_the_attention_weighted_mean_of_the_dropped_ones(processor):
    model = make_model(processor, **TIMM_CLS, encoder_select_after=1, encoder_fold=True)
    images = pixels()
    weights = cls_ranking(forward_attentions(model, images)[1], 1)  # block 1's, (2, 16)
    calls = selector_calls(model)
    with torch.no_grad():
        model(pixel_values=images, **processor.questions(QUESTIONS[:2]))
    ((tokens, selection),) = calls
    dropped = torch.ones(2, 16, dtype=torch.bool).scatter(1, selection.indices, False)
    dropped_weights = weights * dropped  # (2, 16)
    expected = torch.einsum("bn,bnd->bd", dropped_weights, tokens[:, 1:])
    expected = expected / dropped_weights.sum(1, keepdim=True)
    torch.testing.assert_close(selection.tokens[:, -1], expected)
    assert selection.tokens.shape == (2, 1 + 8 + 1, 32)  # CLS, 8 kept, 1 folded


def test_the_question_does_not_change_the_selection_and_later_blocks_run_per_image(processor):
    model = make_model(processor, **TIMM_CLS, encoder_select_after=1)
    lengths = []
    for block in model.vision.vit.blocks:
        block.register_forward_hook(lambda m, args, out: lengths.append(tuple(args[0].shape[:2])))
    inputs = processor.questions(QUESTIONS)  # four different questions
    inputs["pixel_values"] = processor.images(random_images(2))
    inputs["image_index"] = torch.tensor([0, 0, 1, 1])
    kept = encoder_kept(model, inputs)  # (4, 16)
    assert lengths == [(2, 17), (2, 9)]  # both blocks once per image: CLS + 16, then CLS + 8
    assert kept.sum(1).tolist() == [8] * 4
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[2], kept[3])
    assert not torch.equal(kept[0], kept[2])


def test_set_encoder_selection_switches_the_rule_on_the_same_weights(processor):
    model = make_model(
        processor, **{**TIMM_CLS, "encoder_rule": "question"}, encoder_select_after=1
    )
    inputs = processor(random_images(2), QUESTIONS[:2])
    by_question = encoder_kept(model, inputs)
    model.set_encoder_selection(rule="cls")
    assert model.config.encoder_rule == "cls"
    attention = forward_attentions(model, inputs["pixel_values"])[1]  # block select_after's
    top = cls_ranking(attention, 1).topk(8, dim=-1).indices
    expected = torch.zeros(2, 16, dtype=torch.bool).scatter(1, top, True)
    assert torch.equal(encoder_kept(model, inputs), expected)
    model.set_encoder_selection(rule="question")
    assert torch.equal(encoder_kept(model, inputs), by_question)
    with pytest.raises(ValueError, match="'encoder_rule' must be one of"):
        model.set_encoder_selection(rule="random")


def test_the_rule_and_the_class_token_are_saved_and_loaded(processor, tmp_path):
    from vqa.modeling import HybridVQAModel

    model = make_model(processor, **TIMM_CLS, encoder_select_after=1, encoder_fold=True)
    model.save_pretrained(tmp_path)
    loaded = HybridVQAModel.from_pretrained(tmp_path).eval()
    assert (loaded.config.encoder_rule, loaded.config.vision_class_token) == ("cls", True)
    inputs = processor(random_images(2), QUESTIONS[:2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_training_with_the_cls_rule_trains_no_rule_and_nothing_crashes(processor):
    model = make_model(processor, **TIMM_CLS, encoder_select_after=1).train()
    inputs = processor(random_images(4), QUESTIONS)
    targets = torch.zeros(4, 16).index_fill(1, torch.tensor([5]), 1.0)
    for estimator in ("ste", "gumbel", "reinforce", "none"):
        model.zero_grad()
        model.set_fusion(estimator=estimator)
        output = model(**inputs, labels=processor.labels(ANSWERS), target_regions=targets)
        output.loss.backward()
        assert torch.isfinite(output.loss) and torch.isfinite(output.pointing_loss)
        assert output.encoder_kept.sum(1).tolist() == [8] * 4  # sampled by no estimator
        grads = [parameter.grad for parameter in model.encoder_selector.parameters()]
        assert all(grad is not None and grad.eq(0).all() for grad in grads)


def test_an_encoder_without_a_cls_token_is_a_clear_error(processor):
    with pytest.raises(ValueError, match="built-in timm ViT was built without one: set "):
        make_model(processor, **{**TIMM_CLS, "vision_class_token": False}, encoder_select_after=1)
    siglip = {**CLIP_VISION, "model_type": "siglip_vision_model"}
    fields = {**CLS, **TRANSFORMERS, "vision_config": siglip}
    with pytest.raises(ValueError, match="vision encoder 'siglip_vision_model' has no CLS token"):
        make_model(processor, **fields, encoder_select_after=1)
    question = make_model(processor, vision_layers=2, encoder_select_after=1, encoder_k=8)
    with pytest.raises(ValueError, match="built without one"):
        question.set_encoder_selection(rule="cls")
    assert question.config.encoder_rule == "question"
    with pytest.raises(ValueError, match="'vision_class_token' is for the built-in ViT only"):
        HybridVQAConfig(**TRANSFORMERS, vision_class_token=True, vision_config=CLIP_VISION)


def test_train_eval_and_predict_take_the_encoder_rule(tmp_path, train_tiny, tiny_run, capsys):
    from vqa.arguments import TrainingArguments
    from vqa.cli import main

    _, data = tiny_run
    run = tmp_path / "run"
    options = ("--select-after", "0", "--encoder-k", "8", "--encoder-rule", "cls")
    assert train_tiny(data, run, *options, "--vision-class-token") == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["encoder_rule"], config["vision_class_token"]) == ("cls", True)
    capsys.readouterr()
    evaluate = ["eval", "--model", str(run), "--data", str(data), "--json"]
    assert main([*evaluate, "--encoder-rule", "question"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0
    image = next((data / "images" / "test").iterdir())
    predict = ["predict", "--model", str(run), "--image", str(image), "--question", "is it red?"]
    assert main([*predict, "--encoder-rule", "cls", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["encoder_kept"]) == 8
    with pytest.raises(ValueError, match=r"--encoder-rule shape a selection .* --select-after"):
        TrainingArguments(output="run", encoder_rule="cls")


# The ablation's axis


def test_the_rule_axis_crosses_the_encoder_selections_and_names_the_runs():
    args = tiny_grid(
        Path("o"),
        Path("d"),
        modes=["soft", "hybrid"],
        estimators=["ste"],
        select_after=[0],
        encoder_k=[8],
        encoder_rule=["question", "cls"],
    )
    assert [spec.name for spec in grid(args)] == [
        "soft-seed0",
        "hybrid-k4-ste-enc0x8-seed0",
        "hybrid-k4-ste-enc0x8-cls-seed0",
    ]
    assert [spec.encoder_rule for spec in grid(args)] == [None, "question", "cls"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_rule": ["cls"]}, r"encoder_rule: \['cls'\] needs select_after"),
        ({"encoder_fold": True}, "encoder_fold: True needs select_after"),
        ({"select_after": [0], "encoder_rule": ["random"]}, "unknown rule 'random'"),
        ({"select_after": [0], "encoder_rule": []}, "encoder_rule: the list is empty"),
    ],
)
def test_a_bad_rule_axis_names_the_argument_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        grid(tiny_grid(Path("o"), Path("d"), **overrides))


def test_ablate_parser_reads_the_rule_axis_and_passes_it_on(monkeypatch):
    import vqa.ablation

    parser = argparse.ArgumentParser()
    add_ablate_parser(parser.add_subparsers(dest="command"))
    command = ["ablate", "--out", "o", "--select-after", "1", "--encoder-rule", "question,cls"]
    args = parser.parse_args([*command, "--encoder-fold"])
    given = []
    monkeypatch.setattr(vqa.ablation, "run_ablation", lambda a: given.append(a) or Path("o"))
    args.run(args)
    assert (given[0].encoder_rule, given[0].encoder_fold) == (["question", "cls"], True)


def write_rule_results(path: Path, accuracies: dict[str, list[float]]) -> Path:
    """A results.csv of hybrid k=4 runs that keep 8 patches after block 1, one row per seed
    from ``{rule: per-seed accuracies}``."""
    rows = []
    for rule, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            spec = RunSpec("hybrid", 4, "ste", seed, 1, 8, rule)
            rows.append(
                {
                    "name": spec.name,
                    "mode": "hybrid",
                    "k": 4,
                    "estimator": "ste",
                    "select_after": 1,
                    "encoder_k": 8,
                    "encoder_rule": rule,
                    "seed": seed,
                    "accuracy": accuracy,
                    "total_flops": 4e6 if rule == "question" else 3.9e6,
                }
            )
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("question", "cls", "outcome"),
    [
        ([0.80, 0.82, 0.81], [0.60, 0.62, 0.61], "the question's guidance is worth accuracy"),
        ([0.70, 0.80, 0.75], [0.72, 0.78, 0.74], "a tie, within the noise"),
    ],
)
def test_the_report_states_what_the_questions_guidance_is_worth(tmp_path, question, cls, outcome):
    results = write_rule_results(tmp_path / "results.csv", {"question": question, "cls": cls})
    assert [row["encoder_rule"] for row in read_results(results)] == ["question"] * 3 + ["cls"] * 3
    report = write_report(results, tmp_path / "report.md", SETTINGS)
    guidance = section(report, "Guidance")
    difference = sum(question) / 3 - sum(cls) / 3
    assert f"hybrid k=4 ste enc=1x8: question − CLS = {difference:+.3f} accuracy" in guidance
    assert f"**{outcome}**" in guidance
    assert "total MFLOP/q 4.00 ± 0.00 vs 3.90 ± 0.00" in guidance
    verdict = "holds" if outcome.startswith("the question") else "inconclusive"
    assert f"**Verdict: {verdict}**" in guidance


def test_a_report_without_the_cls_rule_has_no_guidance_section(tmp_path):
    results = write_rule_results(tmp_path / "results.csv", {"question": [0.8, 0.7]})
    assert "## Guidance" not in write_report(results, tmp_path / "report.md", SETTINGS)


def test_an_ablation_with_the_cls_rule_gives_every_run_a_cls_token(tmp_path):
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    data = tmp_path / "data"
    config = SyntheticConfig(image_size=32)
    write_synthetic_dataset(data, train=20, val=6, test=6, config=config, progress=False)
    args = tiny_grid(
        tmp_path / "out",
        data,
        modes=["soft", "hybrid"],
        estimators=["ste"],
        select_after=[0],
        encoder_k=[8],
        encoder_rule=["question", "cls"],
    )
    out = run_ablation(args)
    runs = [row["name"] for row in read_results(out / "results.csv")]
    assert runs == ["soft-seed0", "hybrid-k4-ste-enc0x8-seed0", "hybrid-k4-ste-enc0x8-cls-seed0"]
    for name in runs:
        assert json.loads((out / "runs" / name / "config.json").read_text())["vision_class_token"]
    assert json.loads((out / "ablation.json").read_text())["vision_class_token"] is True
    assert "## Guidance" in (out / "report.md").read_text()
