"""A moving average of the weights (``--ema-decay``) and label smoothing (``--label-smoothing``):
the average follows every applied step with timm's warmed-up decay, is scored and saved, and
resumes exactly; smoothing changes the answer loss as the formula says, and reaches the config."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from conftest import Interrupted, stop_after_checkpoint
from safetensors.torch import load_file

import vqa.training
from vqa.checkpoints import latest_checkpoint
from vqa.cli import main
from vqa.configuration import HybridVQAConfig
from vqa.data.answers import AnswerVocab
from vqa.init_from import model_from_run
from vqa.modeling import answer_loss
from vqa.processing import HybridVQAProcessor
from vqa.training import TrainingArguments, train
from vqa.weight_average import AVERAGE_FILE, WARMUP_POWER, make_weight_average

DECAY = 0.9


def arguments(run: Path, dataset: Path, **fields) -> TrainingArguments:
    return TrainingArguments(
        output=str(run),
        data=str(dataset),
        preset="tiny",
        batch_size=8,
        seed=3,
        progress=False,
        **fields,
    )


def expected_decay(step: int) -> float:
    """timm's warmed-up decay after optimizer step ``step`` (1-based), written out here."""
    if step <= 1:
        return 0.0
    return min(DECAY, 1 - step**-WARMUP_POWER)


# The average during training.


def test_the_average_follows_each_step_with_the_warmed_up_decay_and_is_the_saved_model(
    dataset, tmp_path, monkeypatch
):
    trained: list[dict[str, torch.Tensor]] = []  # the weights after each applied step
    apply_update = vqa.training.apply_update

    def recording_update(accelerator, model, *args):
        applied = apply_update(accelerator, model, *args)
        weights = accelerator.unwrap_model(model).state_dict()
        trained.append({name: value.detach().clone() for name, value in weights.items()})
        return applied

    monkeypatch.setattr(vqa.training, "apply_update", recording_update)
    run = tmp_path / "run"
    summary = train(arguments(run, dataset, epochs=1, ema_decay=DECAY))

    assert len(trained) == 6  # 48 questions, batch 8
    expected = {name: value.clone() for name, value in trained[0].items()}
    for step, weights in enumerate(trained[1:], start=2):
        decay = expected_decay(step)
        for name, value in weights.items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
            else:
                expected[name] = value
    checkpoint = latest_checkpoint(run)
    average, saved = load_file(checkpoint / AVERAGE_FILE), load_file(run / "model.safetensors")
    raw = load_file(checkpoint / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(average[name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved[name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(saved[name], raw[name]) for name in raw)
    record = summary["history"][0]
    assert 0 <= record["val_accuracy"] <= 1 and 0 <= record["val_raw_accuracy"] <= 1
    assert set(record["val_raw_accuracy_by_type"]) == set(record["val_accuracy_by_type"])
    curve = vqa.training.learning_curve(summary["history"])
    assert curve[0]["val_raw_accuracy"] == record["val_raw_accuracy"]
    card = (run / "README.md").read_text()
    assert f"a moving average of the trained weights (`--ema-decay {DECAY}`)" in card


def test_the_trained_weights_follow_a_run_without_an_average_and_each_score_is_its_own(
    dataset, tmp_path, capsys
):
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    without = train(arguments(plain, dataset, epochs=2))
    HybridVQAProcessor.from_pretrained(plain).save_pretrained(averaged)  # the same tokenizer
    summary = train(arguments(averaged, dataset, epochs=2, ema_decay=DECAY, resume=True))
    assert "val_raw_accuracy" not in without["history"][0] and without["ema_decay"] is None
    assert not (latest_checkpoint(plain) / AVERAGE_FILE).exists()
    for record, reference in zip(summary["history"], without["history"], strict=True):
        assert record["step_losses"] == reference["step_losses"]
        assert record["val_raw_accuracy"] == reference["val_accuracy"]
    # the saved model is the average: evaluated on its own, it scores the best val_accuracy
    capsys.readouterr()
    command = ["eval", "--model", str(averaged), "--data", str(dataset), "--split", "val"]
    assert main([*command, "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    best = max(record["val_accuracy"] for record in summary["history"])
    assert scored["accuracy"] == pytest.approx(best)


def test_a_resumed_run_continues_the_average_exactly(dataset, tmp_path, monkeypatch):
    stop_after_checkpoint(monkeypatch, 8)  # once, mid-epoch 2 of the first run
    fields = {"epochs": 2, "ema_decay": DECAY, "save_every_steps": 2, "resume": True}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with pytest.raises(Interrupted):
        train(arguments(killed, dataset, **fields))
    assert (latest_checkpoint(killed) / AVERAGE_FILE).is_file()
    train(arguments(killed, dataset, **fields))
    # the same tokenizer: --resume keeps the processor of a run that has no checkpoint yet
    HybridVQAProcessor.from_pretrained(killed).save_pretrained(whole)
    train(arguments(whole, dataset, **fields))
    resumed, uninterrupted = (
        load_file(latest_checkpoint(run) / AVERAGE_FILE) for run in (killed, whole)
    )
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)
    histories = [
        json.loads((run / "metrics.json").read_text())["history"] for run in (killed, whole)
    ]
    for after, before in zip(*histories, strict=True):
        assert after["val_accuracy"] == before["val_accuracy"]
        assert after["val_raw_accuracy"] == before["val_raw_accuracy"]


@pytest.mark.parametrize(
    ("started", "resumed", "message"),
    [
        (None, DECAY, "was trained with no weight average"),
        (DECAY, None, f"was trained with --ema-decay {DECAY}"),
        (DECAY, 0.5, f"was trained with --ema-decay {DECAY}"),
    ],
)
def test_resuming_with_another_ema_decay_is_refused(dataset, tmp_path, started, resumed, message):
    run = tmp_path / "run"
    train(arguments(run, dataset, epochs=1, ema_decay=started))
    with pytest.raises(ValueError, match=message):
        train(arguments(run, dataset, epochs=2, ema_decay=resumed, resume=True))


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1"])
def test_an_ema_decay_outside_0_1_is_a_one_line_error(decay, tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path), "--ema-decay", decay]) == 2
    assert f"ema_decay must be in (0, 1), got {float(decay)!r}" in capsys.readouterr().err


def test_sharded_training_is_refused_naming_the_flag():
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        accelerator = SimpleNamespace(distributed_type=kind)
        with pytest.raises(ValueError, match="--ema-decay keeps a whole copy"):
            make_weight_average(accelerator, torch.nn.Linear(2, 2), 0.99)
    assert make_weight_average(SimpleNamespace(), torch.nn.Linear(2, 2), None) is None


# Label smoothing.


def test_label_smoothing_of_answer_ids_is_the_cross_entropy_s_own():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 3, -100, 2])
    loss = answer_loss(logits, labels, 0.2)
    log_p = logits.log_softmax(-1)
    for row in (0, 1, 3):
        expected = -(0.8 * log_p[row, labels[row]] + 0.2 * log_p[row].mean())
        assert loss[row].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss[2] == 0
    assert torch.equal(answer_loss(logits, labels), answer_loss(logits, labels, 0.0))


def test_label_smoothing_of_soft_scores_moves_each_target_towards_one_over_the_answers():
    torch.manual_seed(0)
    logits, scores = torch.randn(2, 4), torch.tensor([[1.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6]])
    targets = scores * 0.9 + 0.1 / 4
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    torch.testing.assert_close(answer_loss(logits, scores, 0.1), expected)


def test_label_smoothing_reaches_a_new_model_and_a_fine_tuned_one(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                *("train", "--data", str(dataset), "--output", str(run), "--preset", "tiny"),
                *("--no-progress", "--label-smoothing", "0.1"),
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["label_smoothing"] == 0.1
    answers = AnswerVocab.from_json_file(run / "answers.json")
    tuned = TrainingArguments(output=str(tmp_path / "out"), init_from=str(run), label_smoothing=0.3)
    assert model_from_run(tuned, answers)[0].config.label_smoothing == 0.3
    kept = TrainingArguments(output=str(tmp_path / "out"), init_from=str(run))
    assert model_from_run(kept, answers)[0].config.label_smoothing == 0.1


@pytest.mark.parametrize("value", [1.0, -0.1])
def test_label_smoothing_outside_0_1_is_refused(value):
    with pytest.raises(ValueError, match="label_smoothing"):
        HybridVQAConfig(label_smoothing=value)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        TrainingArguments(output="unused", label_smoothing=value)
