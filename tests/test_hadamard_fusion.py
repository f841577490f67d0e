"""--hadamard-fusion: the answer head also reads tanh(W_q q) * tanh(W_v attended)."""

from __future__ import annotations

import pytest
import torch
from test_modeling import ANSWERS, batch, make_model, processor  # noqa: F401

from vqa.arguments import TrainingArguments, from_namespace
from vqa.cli import build_parser
from vqa.configuration import HybridVQAConfig
from vqa.model_card import model_section
from vqa.modeling import HybridVQAModel
from vqa.presets import get_preset
from vqa.run_setup import build_model


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_the_product_enters_the_logits_and_trains(processor, mode):  # noqa: F811
    model = make_model(processor, fusion_mode=mode, hadamard_fusion=True).train()
    inputs = batch(processor)
    output = model(**inputs, labels=processor.labels(ANSWERS))
    output.loss.backward()
    for parameter in model.hadamard.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        with_product = model(**inputs).logits
        torch.nn.init.zeros_(model.hadamard.attended.weight)
        torch.nn.init.zeros_(model.hadamard.attended.bias)  # tanh(0) = 0: no product
        without = model(**inputs).logits
    assert not torch.allclose(with_product, without)


def test_models_without_it_have_no_product_layers(processor):  # noqa: F811
    model = make_model(processor)
    assert model.hadamard is None
    assert not any(name.startswith("hadamard.") for name in model.state_dict())


def test_saved_and_loaded_with_the_same_logits(processor, tmp_path):  # noqa: F811
    model = make_model(processor, hadamard_fusion=True)
    model.save_pretrained(tmp_path)
    loaded = HybridVQAModel.from_pretrained(tmp_path).eval()
    assert loaded.config.hadamard_fusion is True
    inputs = batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    (fusion_line,) = [
        line for line in model_section(tmp_path, loaded.config.to_dict(), {}) if "Fusion" in line
    ]
    assert fusion_line.endswith(
        "product of the question and the attended vector (`hadamard_fusion`)"
    )


def test_the_flag_builds_the_layers_and_a_bad_value_is_named(processor):  # noqa: F811
    arguments = TrainingArguments(output="unused", preset="tiny", hadamard_fusion=True)
    model = build_model(processor, get_preset("tiny"), arguments)
    assert model.config.hadamard_fusion and model.hadamard is not None
    with pytest.raises(ValueError, match="'hadamard_fusion' must be a bool, got 'yes'"):
        HybridVQAConfig(hadamard_fusion="yes")


@pytest.mark.parametrize(
    ("flags", "value"),
    [([], None), (["--hadamard-fusion"], True), (["--no-hadamard-fusion"], False)],
)
def test_the_flag_is_on_off_or_the_presets(flags, value):
    namespace = build_parser().parse_args(["train", "--output", "run", *flags])
    assert from_namespace(TrainingArguments, namespace).hadamard_fusion is value
