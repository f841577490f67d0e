"""The flags of the box-free auxiliary losses reach the trained model, its metrics and card,
``--init-from`` adds the loss to a run trained without it, and a checkpoint written before a
loss existed resumes."""

from __future__ import annotations

import json

import pytest
from conftest import Interrupted, stop_after_checkpoint

from vqa.arguments import TrainingArguments
from vqa.checkpoints import STATE_FILE
from vqa.modeling import HybridVQAModel
from vqa.training import train

LOSSES = {  # flag name -> (head attribute, per-step series in metrics.json, model card text)
    "contrast": ("contrast", "step_contrast_losses", "recoloured-view contrast × 0.5"),
    "glimpse": ("glimpse", "step_glimpse_losses", "glimpse answer × 0.5"),
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_the_flag_reaches_the_trained_model_its_curve_and_card(
    loss, tmp_path, tiny_run, train_tiny
):
    head, series, card = LOSSES[loss]
    _, data = tiny_run
    run = tmp_path / "run"
    assert train_tiny(data, run, f"--{loss}-loss-weight", "0.5") == 0
    assert json.loads((run / "config.json").read_text())[f"{loss}_loss_weight"] == 0.5
    assert getattr(HybridVQAModel.from_pretrained(run), head) is not None
    history = json.loads((run / "metrics.json").read_text())["history"]
    losses = [value for epoch in history for value in epoch[series]]
    assert losses and all(value > 0 for value in losses)
    assert card in (run / "README.md").read_text()


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_init_from_adds_the_loss_to_a_run_trained_without_it(loss, tmp_path, tiny_run, train_tiny):
    trained, data = tiny_run
    run = tmp_path / "run"
    assert train_tiny(data, run, "--init-from", str(trained), f"--{loss}-loss-weight", "1") == 0
    assert json.loads((run / "config.json").read_text())[f"{loss}_loss_weight"] == 1.0
    assert getattr(HybridVQAModel.from_pretrained(run), LOSSES[loss][0]) is not None


def test_a_checkpoint_from_before_the_glimpse_loss_resumes(tiny_run, tmp_path, monkeypatch):
    _, data = tiny_run
    run = tmp_path / "run"
    arguments = TrainingArguments(
        output=str(run),
        data=str(data),
        preset="tiny",
        glimpse_loss_weight=0.5,
        save_every_steps=1,
        resume=True,
        progress=False,
    )
    stop_after_checkpoint(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(arguments)
    (state_file,) = run.glob(f"checkpoint/step-*/{STATE_FILE}")
    state = json.loads(state_file.read_text())
    del state["progress"]["glimpse_losses"]  # what a checkpoint of older code holds
    state_file.write_text(json.dumps(state))
    train(arguments)
    (epoch,) = json.loads((run / "metrics.json").read_text())["history"]
    assert 0 < len(epoch["step_glimpse_losses"]) < len(epoch["step_losses"])
