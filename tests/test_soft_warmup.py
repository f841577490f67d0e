"""--soft-warmup: hard and hybrid runs train their first steps in soft mode, on the same weights."""

from __future__ import annotations

import json

import pytest

from hybrid_attention import HybridAttention
from vqa.arguments import TrainingArguments


def test_the_first_share_of_steps_trains_soft_then_the_runs_own_mode(
    tmp_path, tiny_run, train_tiny, monkeypatch
):
    _, data = tiny_run
    modes: list[str] = []
    forward = HybridAttention.forward

    def recording(self, *args, **kwargs):
        if self.training:
            modes.append(self.mode)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HybridAttention, "forward", recording)
    options = ("--epochs", "2", "--batch-size", "8", "--soft-warmup", "0.5", "--mode", "hybrid")
    assert train_tiny(data, tmp_path / "run", *options) == 0
    steps = len(modes)  # one forward per optimizer step (no accumulation)
    assert steps >= 4
    assert modes == ["soft"] * round(steps / 2) + ["hybrid"] * (steps - round(steps / 2))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["fusion_mode"] == "hybrid"


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="soft_warmup must be in \\[0, 1\\]"):
        TrainingArguments(output="run", soft_warmup=share)
