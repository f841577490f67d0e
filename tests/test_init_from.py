"""``vqa train --init-from RUN``: fine-tuning a trained run on new data."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vqa.arguments import TrainingArguments
from vqa.cli import main
from vqa.data.answers import AnswerVocab
from vqa.init_from import describe_tokenizer, model_from_run
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor

NEW_ANSWER = "zebra"


def write_dataset(source: Path, target: Path, change: Callable[[dict], dict]) -> Path:
    """A local-format copy of ``source``'s train and val rows, each passed through ``change``;
    the images are ``source``'s (a symbolic link)."""
    target.mkdir()
    (target / "images").symlink_to(source / "images")
    for split in ("train", "val"):
        lines = (source / f"{split}.jsonl").read_text().splitlines()
        rows = [change(json.loads(line)) for line in lines]
        (target / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return target


def run_answers(run: Path) -> list[str]:
    return AnswerVocab.from_json_file(run / "answers.json").answers


def arguments(run: Path, tmp_path: Path) -> TrainingArguments:
    return TrainingArguments(output=str(tmp_path / "out"), preset="tiny", init_from=str(run))


def test_same_answers_keep_every_weight_of_the_run(tiny_run, tmp_path):
    run, _ = tiny_run
    model, notes = model_from_run(arguments(run, tmp_path), AnswerVocab(run_answers(run)))
    saved = load_file(run / "model.safetensors")
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
    assert notes[1] == f"answer head: RUN's {len(run_answers(run))} answers, kept as it is"


def test_new_answers_keep_the_head_rows_of_the_shared_ones(tiny_run, tmp_path):
    run, _ = tiny_run
    old = run_answers(run)
    answers = AnswerVocab([old[2], NEW_ANSWER, old[0]])
    model, notes = model_from_run(arguments(run, tmp_path), answers)
    saved = load_file(run / "model.safetensors")
    weight, bias = model.head[-1].weight, model.head[-1].bias
    assert weight.shape[0] == 3 and model.config.id2label == dict(enumerate(answers.answers))
    assert model.config.label2id[NEW_ANSWER] == 1
    for new_row, old_row in ((0, 2), (2, 0)):
        assert torch.equal(weight[new_row], saved["head.3.weight"][old_row])
        assert torch.equal(bias[new_row], saved["head.3.bias"][old_row])
    assert notes[1] == "answer head: 3 answers, 2 kept from RUN, 1 new"


def test_the_encoders_and_fusion_start_from_the_run(tiny_run, tmp_path):
    run, _ = tiny_run
    answers = AnswerVocab([NEW_ANSWER])
    model, _ = model_from_run(arguments(run, tmp_path), answers)
    saved = load_file(run / "model.safetensors")
    new = {name for name in model.state_dict() if name.startswith("head.3.")}
    assert new == {"head.3.weight", "head.3.bias"}  # the answer head's last layer
    assert all(
        torch.equal(value, saved[name])
        for name, value in model.state_dict().items()
        if name not in new
    )


def test_tokenizer_note_counts_the_words_split_into_pieces(tiny_run):
    run, _ = tiny_run
    tokenizer = HybridVQAProcessor.from_pretrained(run).tokenizer
    note = describe_tokenizer(tokenizer, ["zorblax 猫", "zorblax"])
    assert note.startswith("tokenizer: RUN's, unchanged; 1 of 2 distinct question words")
    assert note.endswith("1 cannot be encoded ([UNK])")


@pytest.mark.parametrize(
    "option", [("--image-size", "64"), ("--vision-stem", "patch"), ("--text-pretrained", "x")]
)
def test_options_that_change_the_architecture_are_refused(tiny_run, tmp_path, capsys, option):
    run, data = tiny_run
    command = ["train", "--data", str(data), "--output", str(tmp_path / "out")]
    assert main([*command, "--init-from", str(run), *option]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert option[0] in line and "--init-from" in line


def test_init_from_a_directory_without_a_model_is_a_one_line_error(tiny_run, tmp_path, capsys):
    _, data = tiny_run
    command = ["train", "--data", str(data), "--output", str(tmp_path / "out")]
    assert main([*command, "--init-from", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is not a model directory" in line and "model.safetensors" in line


def without_objects(row: dict) -> dict:
    return {key: value for key, value in row.items() if key not in ("objects", "targets")}


def test_data_without_boxes_fine_tunes_a_run_with_a_region_head(
    tiny_run, train_tiny, tmp_path, capsys
):
    run, data = tiny_run
    plain = write_dataset(data, tmp_path / "plain", without_objects)
    out = tmp_path / "out"
    assert train_tiny(plain, out, "--init-from", str(run)) == 0
    printed = capsys.readouterr().out
    assert "region head: RUN's, kept but frozen: the new objects have none" in printed
    assert HybridVQAProcessor.from_pretrained(out).region_attributes is not None
    before, after = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    assert torch.equal(after["region_head.weight"], before["region_head.weight"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arguments"]["init_from"] == str(run)
    assert metrics["config"]["region_loss_weight"] == 0.0
    assert set(metrics["history"][0]["step_region_losses"]) == {0.0}


def test_freeze_vision_keeps_the_run_s_vision_weights(tiny_run, train_tiny, tmp_path, capsys):
    run, data = tiny_run
    renamed = run_answers(run)[-1]

    def rename(row: dict) -> dict:
        return {**row, "answer": NEW_ANSWER} if row["answer"] == renamed else row

    out = tmp_path / "out"
    new_data = write_dataset(data, tmp_path / "renamed", rename)
    assert train_tiny(new_data, out, "--init-from", str(run), "--freeze-vision") == 0
    count = len(run_answers(run))
    assert f"answer head: {count} answers, {count - 1} kept from RUN, 1 new" in (
        capsys.readouterr().out
    )
    before = HybridVQAModel.from_pretrained(run, use_safetensors=True)
    after = HybridVQAModel.from_pretrained(out, use_safetensors=True)
    vision = dict(before.vision.named_parameters())
    assert vision and all(
        torch.equal(value, vision[name]) for name, value in after.vision.named_parameters()
    )
    assert not torch.equal(after.reasoner.norm.weight, before.reasoner.norm.weight)


def test_the_log_says_the_preset_s_model_sizes_are_not_used(tiny_run):
    """The architecture line is part of every --init-from run's log."""
    run, _ = tiny_run
    _, notes = model_from_run(
        TrainingArguments(output="unused", init_from=str(run)), AnswerVocab(run_answers(run))
    )
    assert re.fullmatch(r"model: .+'s architecture and weights \(.*not used\)", notes[0])
