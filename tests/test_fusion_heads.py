"""``vqa train --heads``: a new model's fusion with several heads, each selecting its own k."""

from __future__ import annotations

import json

import pytest
import torch

from vqa.modeling import HybridVQAModel
from vqa.training import TrainingArguments


def test_a_run_with_two_heads_saves_them_and_each_head_selects_its_own_regions(tiny_run, tmp_path):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--heads", "2", "--epochs", "1", "--k", "4") == 0
    config = json.loads((run / "config.json").read_text())
    assert config["fusion_heads"] == 2
    assert "2 heads" in (run / "README.md").read_text()

    model = HybridVQAModel.from_pretrained(run, use_safetensors=True).eval()
    size = model.config.image_size
    pixels = torch.rand(3, 3, size, size)
    input_ids = torch.randint(1, model.config.text_vocab_size, (3, 6))
    with torch.no_grad():
        output = model(pixel_values=pixels, input_ids=input_ids)
    assert output.attention_weights.shape == (3, 2, model.config.num_regions)
    kept = output.attention_weights > 0  # (B, H, N): 4 regions per head
    assert kept.sum(-1).tolist() == [[4, 4]] * 3


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heads": 0}, "heads must be >= 1, got 0"),
        ({"heads": 2, "init_from": "run"}, "--init-from keeps RUN's"),
    ],
)
def test_bad_heads_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(output="out", **fields)


def test_heads_that_do_not_divide_the_fusion_width_are_named(tiny_run, tmp_path, capsys):
    from conftest import run_train_tiny

    _, data = tiny_run
    run = tmp_path / "run"
    assert run_train_tiny(data, run, "--heads", "3", "--epochs", "1") != 0
    message = "config field 'fusion_dim' (32) must be divisible by 'fusion_heads' (3)"
    assert message in capsys.readouterr().err
    assert not (run / "model.safetensors").exists()
