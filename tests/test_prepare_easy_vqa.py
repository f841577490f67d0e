"""scripts/prepare_easy_vqa.py: the easy-VQA package's files -> the local format, read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script
from PIL import Image

from vqa.data.formats import load_local_dataset

ROOT = Path(__file__).parents[1]

QUESTIONS = {
    "train": [
        ["what is the blue shape?", "rectangle", 0],
        ["is there not a red shape?", "yes", 0],
        ["does the image contain a circle?", "no", 1],
        ["what color is the shape?", "teal", 2],
    ],
    "test": [["is there a triangle in the image?", "yes", 0]],
}


@pytest.fixture
def package_data(tmp_path: Path) -> Path:
    """A ``data`` directory laid out as the easy-vqa package's: questions.json and images."""
    data = tmp_path / "easy_vqa" / "data"
    for split, questions in QUESTIONS.items():
        (data / split / "images").mkdir(parents=True)
        (data / split / "questions.json").write_text(json.dumps(questions))
        for image_id in {question[2] for question in questions}:
            colour = (40 * image_id, 90, 200)
            Image.new("RGB", (64, 64), colour).save(data / split / "images" / f"{image_id}.png")
    return data


def test_writes_splits_with_question_types_that_the_local_reader_loads(package_data, tmp_path):
    easy_vqa = load_script("prepare_easy_vqa")
    out = tmp_path / "easy"
    counts = easy_vqa.write_easy_vqa(package_data, out, val_from=2)
    assert counts == {"train": 3, "val": 1, "test": 1}
    train = load_local_dataset(out, ["train"])["train"]
    assert train["question_type"] == ["shape", "yes/no color", "yes/no shape"]
    assert train["answers"] == [["rectangle"], ["yes"], ["no"]]
    val = load_local_dataset(out, ["val"])["val"]
    assert val["question_type"] == ["color"] and val[0]["image_path"].endswith("train-2.png")
    test_row = load_local_dataset(out, ["test"])["test"][0]
    assert test_row["image_path"].endswith("images/test-0.png")
    assert test_row["question_type"] == "yes/no shape"


@pytest.mark.parametrize("entry", [["what shape?", "circle"], ["what shape?", 3, 0]])
def test_a_malformed_entry_is_named_and_nothing_is_left_behind(package_data, tmp_path, entry):
    questions = package_data / "train" / "questions.json"
    questions.write_text(json.dumps([*QUESTIONS["train"], entry]))
    out = tmp_path / "easy"
    with pytest.raises(ValueError, match=r"questions.json: entry 5 is not \[question, answer"):
        load_script("prepare_easy_vqa").write_easy_vqa(package_data, out)
    assert not out.exists() and list(tmp_path.glob(".easy*")) == []


def test_an_existing_directory_is_replaced_only_when_asked(package_data, tmp_path):
    easy_vqa = load_script("prepare_easy_vqa")
    out = tmp_path / "easy"
    easy_vqa.write_easy_vqa(package_data, out)
    with pytest.raises(FileExistsError):
        easy_vqa.write_easy_vqa(package_data, out)
    assert easy_vqa.write_easy_vqa(package_data, out, val_from=1, overwrite=True)["val"] == 2


def test_the_script_reads_the_installed_package(package_data, tmp_path):
    # run as the README says, with the fixture as the installed easy_vqa package: the script's
    # own name must not shadow the package's
    (package_data.parent / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{package_data.parents[1]}"}
    out = tmp_path / "easy"
    command = [sys.executable, "scripts/prepare_easy_vqa.py", str(out), "--val-from", "2"]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads(completed.stdout)["questions"] == {"train": 3, "val": 1, "test": 1}
    assert len(load_local_dataset(out, ["train"])["train"]) == 3
