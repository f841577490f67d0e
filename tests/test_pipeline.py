"""``pipeline("visual-question-answering", model=RUN)``: the same answers as vqa.inference, batched
or not, with top_k, the selected regions and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BertConfig, pipeline

from vqa.inference import load_model, predict
from vqa.pipeline import TASK, HybridVQAPipeline, load_pipeline


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run[0]


@pytest.fixture(scope="module")
def pipe(run) -> HybridVQAPipeline:
    return pipeline(TASK, model=str(run), trust_remote_code=False, device="cpu")


@pytest.fixture(scope="module")
def rows(tiny_run) -> list[dict]:
    """Six test questions as pipeline inputs, ``image`` a path."""
    data = tiny_run[1]
    lines = (data / "test.jsonl").read_text().splitlines()[:6]
    return [
        {"image": str(data / row["image"]), "question": row["question"]}
        for row in map(json.loads, lines)
    ]


@pytest.fixture(scope="module")
def loaded(run):
    return load_model(run, device="cpu")


def pairs(answers: list[dict]) -> list[tuple[str, float]]:
    return [(answer["answer"], answer["score"]) for answer in answers]


def test_the_pipeline_runs_the_run_directory_on_the_cpu(pipe):
    assert isinstance(pipe, HybridVQAPipeline)
    assert pipe.device == torch.device("cpu") and pipe.model.device == torch.device("cpu")


def test_vqa_is_an_alias_of_the_task(run):
    assert isinstance(pipeline("vqa", model=str(run), device="cpu"), HybridVQAPipeline)


def test_answers_and_scores_equal_predict(pipe, loaded, rows):
    image = Image.open(rows[0]["image"])
    expected = predict(*loaded, image, rows[0]["question"]).answers
    assert pairs(pipe(image=image, question=rows[0]["question"])) == expected
    assert pairs(pipe(rows[0])) == expected  # a path and a dict give the same


def test_top_k_answers_come_sorted_by_score(pipe, loaded, rows):
    answers = pipe(rows[0], top_k=3)
    assert len(answers) == 3
    scores = [answer["score"] for answer in answers]
    assert scores == sorted(scores, reverse=True)
    everything = pipe(rows[0], top_k=10_000)
    assert len(everything) == loaded[0].config.num_labels
    assert sum(answer["score"] for answer in everything) == pytest.approx(1, abs=1e-4)


def test_top_k_below_one_is_refused(pipe, rows):
    with pytest.raises(ValueError, match="top_k"):
        pipe(rows[0], top_k=0)


def test_batched_answers_equal_one_at_a_time(pipe, rows):
    one_by_one = [pipe(row, top_k=3) for row in rows]
    batched = pipe(rows, top_k=3, batch_size=4)  # a batch of 4, then one of 2
    assert len(batched) == len(rows)
    for together, alone in zip(batched, one_by_one, strict=True):
        assert [a["answer"] for a in together] == [a["answer"] for a in alone]
        assert [a["score"] for a in together] == pytest.approx(
            [a["score"] for a in alone], abs=1e-5
        )


def test_one_image_with_a_list_of_questions_asks_each(pipe, rows):
    image = Image.open(rows[0]["image"])
    questions = [row["question"] for row in rows[:3]]
    answers = pipe(image=image, question=questions, top_k=1)
    assert answers == [pipe(image=image, question=question, top_k=1) for question in questions]


def test_return_regions_gives_the_predicted_regions_with_pixel_boxes(pipe, loaded, rows):
    image = Image.open(rows[0]["image"]).resize((96, 64))
    question = rows[0]["question"]
    output = pipe(image=image, question=question, return_regions=True)
    prediction = predict(*loaded, image, question)
    assert pairs(output["answers"]) == prediction.answers
    assert output["regions"] == prediction.regions
    assert output["kept"] == prediction.kept and output["encoder_kept"] is None
    assert all(
        0 <= region["box"][2] <= 96 and 0 <= region["box"][3] <= 64 for region in output["regions"]
    )


def test_return_regions_gives_the_patches_the_encoder_kept(tiny_selecting_run, rows):
    selecting = pipeline(TASK, model=str(tiny_selecting_run), device="cpu")
    output = selecting(rows[0], return_regions=True)
    assert len(output["encoder_kept"]) == 8  # of the 16 patches
    assert {region["region"] for region in output["regions"]} <= set(output["encoder_kept"])


def test_mode_and_k_override_the_selection_for_the_call(pipe, rows):
    output = pipe(rows[0], mode="hard", k=2, return_regions=True)
    assert [region["weight"] for region in output["regions"]] == pytest.approx([0.5, 0.5])
    assert pipe.model.fusion.mode == pipe.model.config.fusion_mode  # restored afterwards


def test_a_missing_run_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} is not a model directory")):
        load_pipeline(missing)


def test_a_run_directory_without_safetensors_is_refused(run, tmp_path):
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape("refusing to unpickle pytorch_model.bin")):
        pipeline(TASK, model=str(tmp_path), trust_remote_code=False, device="cpu")


def test_a_directory_of_another_model_is_refused(tmp_path):
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a bert model"):
        pipeline(TASK, model=str(tmp_path), trust_remote_code=False, device="cpu")


def test_an_image_that_does_not_open_is_named(pipe, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=re.escape(f"image {missing} does not open")):
        pipe(image=missing, question="what colour is the circle?")
