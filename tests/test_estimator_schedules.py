"""Every estimator gets a fair chance: REINFORCE's baseline per question type and its entropy
bonus on a schedule, the relaxed selection's tau annealed, and all of it resumed exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import Interrupted, stop_after_checkpoint
from safetensors.torch import load_file, save_file

import vqa.modeling
import vqa.training
from hybrid_attention import HybridAttention, TokenSelector, reinforce_loss, selection_entropy
from vqa.configuration import HybridVQAConfig
from vqa.data.formats import load_local_dataset
from vqa.estimators import annealed_k, annealed_tau, check_k_schedule, scheduled_entropy_weight
from vqa.modeling import HybridVQAModel
from vqa.processing import QUESTION_GROUPS, HybridVQAProcessor, VQACollator, question_group
from vqa.training import TrainingArguments, train

FAMILIES = ("colour", "shape", "exist", "count", "relate", "compare")


# The schedules.


def test_tau_anneals_exponentially_from_the_first_to_the_last_step():
    taus = [annealed_tau(1.0, 0.1, step, 5) for step in range(6)]
    expected = [1.0, 0.1**0.25, 0.1**0.5, 0.1**0.75, 0.1, 0.1]  # and stays there
    assert taus == pytest.approx(expected, rel=1e-12)
    assert annealed_tau(2.0, 0.5, 1, 3) == pytest.approx(1.0)  # the geometric mean halfway
    assert annealed_tau(0.7, None, 3, 5) == 0.7  # no final tau: no annealing


def test_the_entropy_weight_is_constant_or_decays_to_zero_at_the_last_step():
    def weights(schedule: str) -> list[float]:
        return [scheduled_entropy_weight(schedule, 0.02, step, 5) for step in range(5)]

    assert weights("constant") == [0.02] * 5
    assert weights("linear") == pytest.approx([0.02, 0.015, 0.01, 0.005, 0.0])
    halfway = 0.02 * (1 + math.cos(math.pi / 4)) / 2
    assert weights("cosine") == pytest.approx([0.02, halfway, 0.01, 0.02 - halfway, 0.0])
    with pytest.raises(ValueError, match="entropy schedule must be one of"):
        scheduled_entropy_weight("step", 0.02, 0, 5)


def test_k_shrinks_geometrically_to_the_models_k_over_its_share_of_the_steps():
    ks = [annealed_k(64, 16, 0.5, step, 5) for step in range(6)]
    assert ks == [64, 32, 16, 16, 16, 16]  # 64 * (1/4) ** (progress / 0.5), then 16
    assert [annealed_k(16, 4, 1.0, step, 3) for step in range(3)] == [16, 8, 4]
    assert annealed_k(None, 16, 0.5, 0, 5) == 16  # no --k-start: the model's k throughout
    assert annealed_k(64, 16, 0.0, 0, 5) == 16  # no share of the steps to shrink over


def test_a_k_schedule_the_fusion_cannot_follow_is_refused():
    check_k_schedule(None, 4, "soft", "top_p", 16)
    check_k_schedule(16, 4, "hard", "fixed", 16)
    with pytest.raises(ValueError, match="soft mode has no k"):
        check_k_schedule(16, 4, "soft", "fixed", 16)
    with pytest.raises(ValueError, match="fusion_k_rule is 'budget'"):
        check_k_schedule(16, 4, "hybrid", "budget", 16)
    for start in (3, 17):
        with pytest.raises(ValueError, match=rf"fusion_k \(4\) .* reads \(16\), got {start}"):
            check_k_schedule(start, 4, "hybrid", "fixed", 16)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k_start", 0, "k_start must be >= 1"),
        ("k_anneal", 1.5, r"k_anneal must be in \[0, 1\]"),
        ("tau_final", 0.0, "tau_final must be > 0"),
        ("entropy_schedule", "step", "entropy_schedule must be one of"),
        ("reinforce_baseline", "answer", "reinforce_baseline must be one of"),
    ],
)
def test_bad_schedule_arguments_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output="run", **{field: value})


def test_an_unknown_baseline_kind_is_refused_by_the_config(tiny_fields):
    with pytest.raises(ValueError, match="config field 'reinforce_baseline' must be one of"):
        HybridVQAConfig(**tiny_fields, reinforce_baseline="answer")


# Question groups.


def test_the_collator_gives_each_question_the_stable_bucket_of_its_type(dataset):
    # CRC-32, not Python's salted hash: the same numbers in every process and run.
    assert [question_group(family) for family in FAMILIES] == [462, 984, 236, 98, 477, 93]
    rows = load_local_dataset(dataset, ["train"])["train"]
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    batch = [rows[i] for i in range(12)]
    inputs, meta = VQACollator(processor)(batch)
    expected = [question_group(row["question_type"]) for row in meta]
    assert inputs["question_group"].tolist() == expected
    assert inputs["question_group"].dtype == torch.long
    assert all(0 <= group < QUESTION_GROUPS for group in expected)


# The model.


def reinforce_model(tiny_fields: dict, **fields) -> HybridVQAModel:
    torch.manual_seed(0)
    config = HybridVQAConfig(**{**tiny_fields, "fusion_estimator": "reinforce", **fields})
    return HybridVQAModel(config).train()


def tiny_batch() -> dict:
    torch.manual_seed(1)
    return {
        "pixel_values": torch.randn(2, 3, 32, 32),
        "input_ids": torch.randint(5, 50, (4, 6)),
        "image_index": torch.tensor([0, 0, 1, 1]),
        "labels": torch.tensor([0, 1, 2, 0]),
    }


def test_reinforce_subtracts_each_questions_type_baseline_and_the_scheduled_entropy_bonus(
    tiny_fields,
):
    model = reinforce_model(tiny_fields)
    model.baseline.group_value[[3, 7]] = torch.tensor([-1.0, -5.0])
    model.baseline.group_initialized[[3, 7]] = True
    model.set_schedule(tau=0.5, entropy_weight=0.3, k=None)
    output = model(**tiny_batch(), question_group=torch.tensor([3, 3, 7, 7]))
    policy = reinforce_loss(
        output.log_prob,
        -output.answer_loss.detach(),
        torch.tensor([-1.0, -1.0, -5.0, -5.0]),
        entropy=selection_entropy(output.attention_scores),
        entropy_weight=0.3,
    )
    expected = output.answer_loss.mean() + model.config.reinforce_weight * policy
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.parametrize(
    ("kind", "groups", "grouped"),
    [("type", True, True), ("type", False, False), ("global", True, False)],
)
def test_the_groups_averages_learn_only_with_the_type_baseline_and_groups(
    tiny_fields, kind, groups, grouped
):
    model = reinforce_model(tiny_fields, reinforce_baseline=kind)
    inputs = tiny_batch()
    if groups:
        inputs["question_group"] = torch.tensor([3, 3, 7, 7])
    model(**inputs).loss.backward()
    assert bool(model.baseline.initialized)  # the global average always learns
    expected = {3, 7} if grouped else set()
    assert set(model.baseline.group_initialized.nonzero().flatten().tolist()) == expected


def test_eval_and_inference_need_no_question_group(tiny_fields):
    model = reinforce_model(tiny_fields).eval()
    inputs = tiny_batch()
    del inputs["labels"]
    with torch.no_grad():
        assert model(**inputs).logits.shape == (4, 3)


def test_set_schedule_reaches_the_fusion_and_the_encoders_selector(tiny_fields):
    model = reinforce_model(tiny_fields, encoder_select_after=0, encoder_k=8)
    model.set_schedule(tau=0.25, entropy_weight=0.0, k=3)
    assert model.fusion.tau == model.encoder_selector.tau == 0.25
    assert model.fusion.k == 3 and model.config.fusion_k == 4
    model.set_schedule(tau=0.25, entropy_weight=0.0, k=None)
    assert model.fusion.k == 4
    assert model.entropy_weight == 0.0
    assert model.config.fusion_tau == 1.0  # the config keeps the starting value


def test_a_model_saved_before_the_type_baseline_loads_with_empty_type_averages(
    tiny_fields, tmp_path
):
    model = reinforce_model(tiny_fields)
    model(**tiny_batch(), question_group=torch.tensor([3, 3, 7, 7]))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {name: value for name, value in weights.items() if ".group_" not in name}
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = HybridVQAModel.from_pretrained(tmp_path)
    assert not loaded.baseline.group_value.any()
    assert not loaded.baseline.group_initialized.any()
    assert loaded.baseline.value == model.baseline.value


# Training runs.


def history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


def test_a_reinforce_run_learns_a_baseline_per_type_and_decays_its_entropy_bonus(
    dataset, tmp_path, train_tiny
):
    run = tmp_path / "run"
    options = ("--epochs", "2", "--batch-size", "8", "--estimator", "reinforce")
    assert train_tiny(dataset, run, *options) == 0
    first, second = history(run)
    steps = 6  # 48 questions, batch 8: 6 optimizer steps per epoch, 12 in all
    assert first["entropy_weight"] == pytest.approx(0.01 * (1 - (steps - 1) / (2 * steps - 1)))
    assert second["entropy_weight"] == 0.0  # --entropy-schedule linear, the default
    assert first["tau"] == second["tau"] == 1.0  # no --tau-final: no annealing
    baseline = load_file(run / "model.safetensors")
    learned = set(baseline["baseline.group_initialized"].nonzero().flatten().tolist())
    types = set(load_local_dataset(dataset, ["train"])["train"]["question_type"])
    assert learned == {question_group(name) for name in types}


def test_gumbel_anneals_tau_in_the_fusion_and_the_encoders_selector(
    dataset, tmp_path, train_tiny, monkeypatch
):
    taus: dict[str, list[float]] = {"fusion": [], "encoder": []}
    for name, module in (("fusion", HybridAttention), ("encoder", TokenSelector)):
        monkeypatch.setattr(module, "forward", recording_tau(module.forward, taus[name]))
    options = ("--epochs", "2", "--batch-size", "8", "--estimator", "gumbel")
    options += ("--tau-final", "0.1", "--select-after", "0", "--encoder-k", "8")
    assert train_tiny(dataset, tmp_path / "run", *options) == 0
    steps = 12  # one training forward per optimizer step
    expected = [annealed_tau(1.0, 0.1, step, steps) for step in range(steps)]
    assert taus["fusion"] == taus["encoder"] == expected
    assert [record["tau"] for record in history(tmp_path / "run")] == [expected[5], 0.1]


def test_hybrid_shrinks_its_k_while_training_and_validates_with_its_own_k(
    dataset, tmp_path, train_tiny, monkeypatch
):
    ks: dict[bool, list[int]] = {True: [], False: []}  # training, validation
    forward = HybridAttention.forward

    def recording(self, *args, **kwargs):
        ks[self.training].append(self.k)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HybridAttention, "forward", recording)
    options = ("--epochs", "2", "--batch-size", "8", "--k-start", "16", "--k-anneal", "0.75")
    assert train_tiny(dataset, tmp_path / "run", *options) == 0
    expected = [annealed_k(16, 4, 0.75, step, 12) for step in range(12)]
    assert expected[0] == 16 and expected[-1] == 4 and len(set(expected)) > 4
    assert ks[True] == expected
    assert ks[False] and set(ks[False]) == {4}  # the tiny preset's fusion_k
    assert [record["k"] for record in history(tmp_path / "run")] == [expected[5], 4]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["fusion_k"] == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--k", "auto"), "--k-start anneals a fixed k; the model's fusion_k_rule is 'top_p'"),
        # the fusion reads only the 8 tokens that the encoder's selection keeps
        (("--select-after", "0", "--encoder-k", "8"), "the number of regions its fusion reads"),
    ],
)
def test_a_k_start_the_model_cannot_follow_is_refused_before_training(
    dataset, tmp_path, train_tiny, capsys, options, message
):
    assert train_tiny(dataset, tmp_path / "run", *options, "--k-start", "16") != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def recording_tau(forward, taus: list[float]):
    """``forward`` of a selection module that appends its tau to ``taus`` while training."""

    def recording(self, *args, **kwargs):
        if self.training:
            taus.append(self.tau)
        return forward(self, *args, **kwargs)

    return recording


def test_a_resumed_run_continues_the_schedules_and_the_type_baseline_exactly(
    dataset, tmp_path, monkeypatch
):
    used: list[tuple] = []  # (tau, k, entropy weight) of each training step
    forward, loss = HybridAttention.forward, vqa.modeling.reinforce_loss

    def recording_forward(self, *args, **kwargs):
        if self.training:
            used.append((self.tau, self.k, None))
        return forward(self, *args, **kwargs)

    def recording_loss(*args, entropy_weight, **kwargs):
        used[-1] = (*used[-1][:2], entropy_weight)
        return loss(*args, entropy_weight=entropy_weight, **kwargs)

    monkeypatch.setattr(HybridAttention, "forward", recording_forward)
    monkeypatch.setattr(vqa.modeling, "reinforce_loss", recording_loss)
    stop_after_checkpoint(monkeypatch, 8)  # once, mid-epoch 2 of the first run

    def arguments(run: Path) -> TrainingArguments:
        return TrainingArguments(
            output=str(run),
            data=str(dataset),
            preset="tiny",
            epochs=2,
            batch_size=8,
            estimator="reinforce",
            tau_final=0.1,
            k_start=16,
            entropy_schedule="cosine",
            save_every_steps=2,
            seed=3,
            resume=True,
            progress=False,
        )

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with pytest.raises(Interrupted):
        train(arguments(killed))
    before = used[:]
    used.clear()
    train(arguments(killed))
    resumed = used[:]
    used.clear()
    # the same tokenizer: --resume keeps the processor of a run that has no checkpoint yet
    HybridVQAProcessor.from_pretrained(killed).save_pretrained(whole)
    train(arguments(whole))

    assert len(used) == 12 and len(before) == 8
    assert before + resumed == used
    assert used[0][1] == 16 and used[-1] == (pytest.approx(0.1), 4, 0.0)
    for after, uninterrupted in zip(history(killed), history(whole), strict=True):
        assert after["tau"] == uninterrupted["tau"]
        assert after["entropy_weight"] == uninterrupted["entropy_weight"]
        assert after["k"] == uninterrupted["k"]
        assert after["step_losses"] == pytest.approx(uninterrupted["step_losses"], abs=1e-6)
    last = "checkpoint/step-00000012/model.safetensors"
    a, b = load_file(killed / last), load_file(whole / last)
    assert a["baseline.group_initialized"].any()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
