"""Adaptive k in the VQA model, its config, the CLI and predictions: each question keeps its
own number of regions (``fusion_k_rule`` "top_p" or "budget")."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vqa.arguments import TrainingArguments, from_namespace, fusion_k_settings
from vqa.cli import build_parser, main
from vqa.configuration import HybridVQAConfig
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset
from vqa.processing import HybridVQAProcessor
from vqa.run_setup import fresh_model

QUESTIONS = [
    "what colour is the large circle?",
    "how many red objects are there?",
    "is there a small blue square?",
    "what shape is the green object?",
    "is the red square left of the circle?",
    "how many circles are there?",
]
ANSWERS = ["red", "2", "yes", "circle", "no", "3"]
# The tiny preset's model, without the losses that need boxes.
TINY = {**get_preset("tiny").model, "region_loss_weight": 0.0, "pointing_loss_weight": 0.0}
TOP_P = {"fusion_k_rule": "top_p", "fusion_k_max": 8, "fusion_top_p": 0.5}
BUDGET = {"fusion_k_rule": "budget", "fusion_k_min": 2, "fusion_k_max": 8}


@pytest.fixture(scope="module")
def processor() -> HybridVQAProcessor:
    return HybridVQAProcessor.train(QUESTIONS * 3, ANSWERS * 3, image_size=32)


def make_model(processor: HybridVQAProcessor, **overrides) -> HybridVQAModel:
    torch.manual_seed(0)
    config = HybridVQAConfig(
        **{**TINY, **overrides},
        text_vocab_size=len(processor.tokenizer),
        id2label=dict(enumerate(processor.answers.answers)),
    )
    return HybridVQAModel(config).eval()


def random_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(count)
    ]


def batch(processor: HybridVQAProcessor, rows: slice = slice(None)):
    questions = QUESTIONS[rows]
    return processor(random_images(len(QUESTIONS))[rows], questions)


# The config.


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"fusion_k_rule": "nucleus"},
            "'fusion_k_rule' must be one of ('fixed', 'top_p', 'budget')",
        ),
        (
            {"fusion_k_min": 5, "fusion_k_max": 4},
            "'fusion_k_min' (5) is greater than 'fusion_k_max'",
        ),
        ({"fusion_k_rule": "top_p", "fusion_k_max": 17}, "'fusion_k_max' (17) is greater than the"),
        ({"fusion_top_p": 0.0}, "'fusion_top_p' must be in (0, 1], got 0.0"),
        ({"fusion_k_penalty": -1.0}, "'fusion_k_penalty' must be >= 0, got -1.0"),
        ({"fusion_k_min": 0}, "'fusion_k_min' must be a positive integer, got 0"),
    ],
)
def test_config_rejects_bad_adaptive_k_fields(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        HybridVQAConfig(**{**TINY, **fields})


def test_a_fixed_config_ignores_k_max_above_the_regions():
    assert HybridVQAConfig(**TINY).fusion_k_max == 16  # the default, unused by a fixed k


def test_adaptive_fields_survive_save_and_load(tmp_path):
    HybridVQAConfig(**TINY, **BUDGET, fusion_k_penalty=0.01).save_pretrained(tmp_path)
    loaded = HybridVQAConfig.from_pretrained(tmp_path)
    assert (loaded.fusion_k_rule, loaded.fusion_k_min, loaded.fusion_k_max) == ("budget", 2, 8)
    assert loaded.fusion_k_penalty == 0.01


# The model.


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
@pytest.mark.parametrize("rule", [TOP_P, BUDGET], ids=["top_p", "budget"])
def test_each_question_reports_the_regions_it_kept(processor, mode, rule):
    model = make_model(processor, fusion_mode=mode, **rule)
    with torch.no_grad():
        output = model(**batch(processor))
    kept = output.kept_regions
    assert kept.shape == (len(QUESTIONS), 1)
    assert kept.min() >= rule.get("fusion_k_min", 1) and kept.max() <= 8
    assert torch.equal((output.attention_weights > 0).sum(-1), kept)
    # the batch runs on as many slots as its largest k
    assert output.selected_indices.shape == (len(QUESTIONS), 1, int(kept.max()))


def test_a_question_asked_alone_runs_on_exactly_its_own_k_slots(processor):
    model = make_model(processor, fusion_mode="hybrid", **TOP_P)
    with torch.no_grad():
        together = model(**batch(processor))
        counts = together.kept_regions[:, 0].tolist()
        assert len(set(counts)) > 1 and max(counts) < 8  # mixed, and fewer than k_max
        for row, count in enumerate(counts):
            alone = model(**batch(processor, slice(row, row + 1)))
            assert alone.selected_indices.shape == (1, 1, count)
            assert alone.kept_regions.item() == count
            torch.testing.assert_close(together.logits[row : row + 1], alone.logits)
            kept = together.selected_indices[row, :, :count]
            assert torch.equal(alone.selected_indices[0], kept)


def test_a_learned_budget_trains_on_all_k_max_slots_and_answers_on_its_largest_k(processor):
    """While training, the slots past every question's k still carry the budget's gradient."""
    model = make_model(processor, **BUDGET).train()
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    assert output.selected_indices.shape[-1] == 8
    model.eval()
    with torch.no_grad():
        output = model(**batch(processor))
    largest = int(output.kept_regions.max())
    assert largest < 8  # the untrained head's most likely k
    assert output.selected_indices.shape[-1] == largest


def test_fusion_flops_of_a_question_follow_its_adaptive_k(processor):
    """Counted alone, a top-p question costs what a fixed k equal to its k costs."""
    from vqa.ablation.probes import count_flops

    model = make_model(processor, fusion_mode="hybrid", **TOP_P)
    inputs = batch(processor)
    with torch.no_grad():
        counts = model(**inputs).kept_regions[:, 0].tolist()
    adaptive, _ = count_flops(model, inputs)
    fixed = []
    for row, count in enumerate(counts):
        model.set_fusion(k=count)
        fixed.append(count_flops(model, batch(processor, slice(row, row + 1)))[0])
    assert adaptive == pytest.approx(sum(fixed) / len(fixed))
    model.set_fusion(k=8)
    at_k_max, _ = count_flops(model, inputs)
    assert adaptive < at_k_max


@pytest.mark.parametrize("mode", ["hard", "hybrid"])
def test_each_question_of_a_mixed_k_batch_equals_it_alone_with_a_fixed_k(processor, mode):
    """The reasoner must not see the padded slots: alone with a fixed k equal to its adaptive
    k, a question has no padding at all."""
    model = make_model(processor, fusion_mode=mode, **TOP_P)
    with torch.no_grad():
        together = model(**batch(processor))
        counts = together.kept_regions[:, 0].tolist()
        assert len(set(counts)) > 1  # the batch mixes several k
        for row, count in enumerate(counts):
            model.set_fusion(k=count)
            alone = model(**batch(processor, slice(row, row + 1)))
            torch.testing.assert_close(together.logits[row : row + 1], alone.logits)
            model.set_fusion(k_rule="top_p")


def test_task_gradient_reaches_the_budget_head(processor):
    model = make_model(processor, **BUDGET).train()
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    output.answer_loss.mean().backward()
    assert model.fusion.budget.proj.weight.grad.abs().sum() > 0


def test_the_compute_penalty_adds_lambda_times_the_expected_k(processor):
    losses = {}
    for penalty in (0.0, 0.5):
        model = make_model(processor, **BUDGET, fusion_k_penalty=penalty).train()
        torch.manual_seed(1)  # the same sampled k
        output = model(**batch(processor), labels=processor.labels(ANSWERS))
        losses[penalty] = output.loss
    expected = 0.5 * output.expected_regions.mean()
    torch.testing.assert_close(losses[0.5] - losses[0.0], expected)


def test_reinforce_with_top_p_gives_a_finite_loss(processor):
    model = make_model(processor, **TOP_P, fusion_estimator="reinforce").train()
    output = model(**batch(processor), labels=processor.labels(ANSWERS))
    assert output.log_prob.shape == (len(QUESTIONS), 1)
    assert torch.isfinite(output.loss)


def test_rule_switches_at_inference_after_reload_and_back(processor, tmp_path):
    """Trained with a fixed k, evaluated with top-p, then with its own k again."""
    make_model(processor).save_pretrained(tmp_path)
    model = HybridVQAModel.from_pretrained(tmp_path).eval()
    inputs = batch(processor)
    with torch.no_grad():
        fixed = model(**inputs)
        model.set_fusion(k_rule="top_p", k_max=8, top_p=0.5)
        adaptive = model(**inputs)
        model.set_fusion(k=4)
        again = model(**inputs)
    assert (fixed.kept_regions == 4).all()
    assert len(adaptive.kept_regions.unique()) > 1 and adaptive.kept_regions.max() <= 8
    assert model.config.fusion_k_rule == "fixed"
    torch.testing.assert_close(again.logits, fixed.logits)


def test_a_budget_model_reloads_its_head(processor, tmp_path):
    model = make_model(processor, **BUDGET)
    model.save_pretrained(tmp_path)
    loaded = HybridVQAModel.from_pretrained(tmp_path).eval()
    inputs = batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
        loaded.set_fusion(k_rule="top_p")  # the head stays, unused
        loaded.set_fusion(k_rule="budget")
        assert torch.equal(loaded(**inputs).kept_regions, model(**inputs).kept_regions)


def test_the_budget_rule_needs_a_model_trained_with_it(processor):
    model = make_model(processor)
    with pytest.raises(ValueError, match="this model has no budget head"):
        model.set_fusion(k_rule="budget", k_max=8)
    assert model.config.fusion_k_rule == "fixed" and model.fusion.k == 4


def test_set_fusion_rejects_k_max_above_the_regions(processor):
    model = make_model(processor)
    with pytest.raises(ValueError, match=re.escape("'fusion_k_max' (17) is greater than the")):
        model.set_fusion(k_rule="top_p", k_max=17)


def test_predict_restores_the_models_adaptive_rule(processor):
    from vqa.inference import predict

    model = make_model(processor, **TOP_P)
    image = random_images(1)[0]
    fixed = predict(model, processor, image, QUESTIONS[0], k=3)
    adaptive = predict(model, processor, image, QUESTIONS[0])
    assert (fixed.k, fixed.kept) == (3, [3])
    assert adaptive.k == "top-p 0.5 (1..8)" and 1 <= adaptive.kept[0] <= 8
    assert len(adaptive.regions) == adaptive.kept[0]


# The command line.


def train_arguments(*flags: str) -> TrainingArguments:
    args = build_parser().parse_args(["train", "--output", "run", *flags])
    return from_namespace(TrainingArguments, args)


def test_train_flags_reach_the_config(processor):
    args = train_arguments("--k", "auto", "--k-min", "2", "--k-max", "8", "--top-p", "0.8")
    config = fresh_model(processor, get_preset("tiny"), args).config
    assert config.fusion_k_rule == "top_p"
    assert (config.fusion_k_min, config.fusion_k_max, config.fusion_top_p) == (2, 8, 0.8)


def test_train_budget_flags_build_the_budget_head(processor):
    args = train_arguments("--k", "budget", "--k-max", "8", "--k-penalty", "0.01")
    model = fresh_model(processor, get_preset("tiny"), args)
    assert model.config.fusion_k_rule == "budget" and model.config.fusion_k_penalty == 0.01
    assert model.fusion.budget is not None


def test_adaptive_flags_need_an_adaptive_k():
    with pytest.raises(ValueError, match="--top-p shapes an adaptive k: give --k auto"):
        train_arguments("--k", "4", "--top-p", "0.8")


def test_k_flag_refuses_other_words(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--output", "run", "--k", "many"])
    assert "'auto' (top-p) or 'budget', got 'many'" in capsys.readouterr().err


def test_predict_json_says_how_many_regions_the_question_kept(tiny_run, capsys):
    run, data = tiny_run
    row = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    command = ["predict", "--model", str(run), "--image", str(data / row["image"])]
    command += ["--question", row["question"], "--json"]
    assert main([*command, "--k", "auto", "--k-max", "8", "--top-p", "0.6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == "top-p 0.6 (1..8)"
    assert 1 <= result["kept"][0] <= 8
    assert len(result["regions"]) == result["kept"][0]
    assert main(command) == 0  # the model's own fixed k
    assert json.loads(capsys.readouterr().out)["kept"] == [get_preset("tiny").model["fusion_k"]]


def test_eval_with_top_p_reports_the_rule(tiny_run, capsys):
    run, data = tiny_run
    command = ["eval", "--model", str(run), "--data", str(data), "--split", "test", "--json"]
    assert main([*command, "--k", "auto", "--k-max", "8", "--top-p", "0.6"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["k"] == "top-p 0.6 (1..8)"
    assert 1 <= scores["regions_used"] <= 8
    histogram = scores["regions_used_histogram"]
    assert sum(histogram.values()) == scores["questions"]
    assert all(1 <= int(k) <= 8 for k in histogram)
    types = {json.loads(line)["question_type"] for line in (data / "test.jsonl").open()}
    assert set(scores["regions_used_by_type"]) == types
    assert all(1 <= value <= 8 for value in scores["regions_used_by_type"].values())


def test_k_max_must_fit_in_what_the_encoder_keeps():
    with pytest.raises(ValueError, match=re.escape("fewer tokens than the fusion keeps (up to 8)")):
        HybridVQAConfig(**TINY, **TOP_P, encoder_select_after=0, encoder_k=4)


def test_top_p_after_an_encoder_selection_maps_the_kept_slots_to_regions(processor):
    model = make_model(processor, **TOP_P, encoder_select_after=0, encoder_k=8)
    with torch.no_grad():
        output = model(**batch(processor))
    assert torch.equal((output.attention_weights > 0).sum(-1), output.kept_regions)
    kept = output.selected_indices[:, 0, 0]  # the best region of each question
    assert output.encoder_kept.gather(1, kept[:, None]).all()


def test_serve_flags_become_the_apps_fusion_settings():
    args = build_parser().parse_args(["serve", "--model", "m", "--k", "auto", "--top-p", "0.7"])
    expected = {"k": None, "k_rule": "top_p", "k_min": None, "k_max": None, "top_p": 0.7}
    assert fusion_k_settings(args) == expected


def test_app_answers_with_the_adaptive_k_and_says_how_many_regions_were_kept(tiny_run):
    from vqa.app import AppModel, answer, model_info

    run, data = tiny_run
    row = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    app_model = AppModel(run, fusion={"k_rule": "top_p", "k_max": 8, "top_p": 0.6})
    assert app_model.adaptive == "top-p 0.6 (1..8)"
    assert "k = top-p 0.6 (1..8) of 16 regions" in model_info(app_model)
    with Image.open(data / row["image"]) as image:
        *_, adaptive = answer(app_model, image, row["question"], "hybrid", 4, True)
        *_, fixed = answer(app_model, image, row["question"], "hybrid", 4)
    assert re.search(r"k = top-p 0\.6 \(1\.\.8\), kept [1-8] of 16", adaptive)
    assert "k = 4, kept 4 of 16" in fixed


def test_training_with_a_learned_budget_saves_its_rule_and_head(tiny_run, train_tiny, tmp_path):
    _, data = tiny_run
    run = tmp_path / "run"
    assert train_tiny(data, run, "--k", "budget", "--k-max", "8", "--k-penalty", "0.01") == 0
    model = HybridVQAModel.from_pretrained(run)
    config = model.config
    assert (config.fusion_k_rule, config.fusion_k_max, config.fusion_k_penalty) == (
        "budget",
        8,
        0.01,
    )
    assert model.fusion.budget is not None


def test_regions_histogram_counts_questions_per_number_of_regions():
    from vqa.evaluation import regions_histogram

    assert regions_histogram([5.0, 3.0, 5.0, 12.0]) == {"3": 1, "5": 2, "12": 1}
