"""Every dataset format trains and evaluates; official evaluation; errors that name the place;
the official files at scale (converted once, only the splits asked for, images checked lazily).

Fixtures are written by the tests: the local JSONL format, the official VQA v2 files with tiny
COCO-named images, and Hugging Face datasets (``save_to_disk`` and parquet) in the schemas of
lmms-lab/VQAv2 (``answers`` as a list of {answer, answer_confidence, answer_id}) and of sets
with a single ``multiple_choice_answer`` string.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from vqa import processing
from vqa.cli import main
from vqa.data import json_stream, vqav2
from vqa.data.answers import AnswerVocab
from vqa.data.formats import DatasetFormatError, load_local_dataset
from vqa.data.hub import ColumnMapping
from vqa.data.sources import (
    answerable_rows,
    dataset_splits,
    load_vqa_dataset,
    source_format,
)
from vqa.data.vqav2 import VQAFiles, convert_vqa
from vqa.metrics import vqa_accuracy
from vqa.processing import HybridVQAProcessor, VQACollator
from vqa.training import TrainingArguments, train

COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 30, 220),
    "green": (30, 160, 30),
    "yellow": (230, 220, 40),
}


def image_bytes(colour: str, image_format: str = "PNG") -> bytes:
    """A 32x32 image of one colour, encoded."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (32, 32), COLOURS[colour]).save(buffer, image_format)
    return buffer.getvalue()


def questions_about(image_id: int) -> list[dict]:
    """Three questions (other, yes/no, number) about image ``image_id``, 10 human answers each."""
    colour = list(COLOURS)[image_id % len(COLOURS)]
    yes = "yes" if colour == "red" else "no"
    rows = [
        ("What color is the picture?", [colour] * 9 + ["orange"], "other", "what color is the"),
        ("Is the picture red?", [yes] * 10, "yes/no", "is the"),
        ("How many pictures?", ["one"] * 5 + ["1"] * 5, "number", "how many"),
    ]
    fields = ("question", "answers", "answer_type", "question_type")
    return [dict(zip(fields, row, strict=True)) for row in rows]


def write_jsonl_dataset(directory: Path, images: dict[str, int]) -> Path:
    """A local-format dataset: ``images`` maps a split to its number of images."""
    (directory / "images").mkdir(parents=True)
    for split, count in images.items():
        lines = []
        for image_id in range(count):
            name = f"images/{split}-{image_id}.png"
            (directory / name).write_bytes(image_bytes(list(COLOURS)[image_id % 4]))
            for number, row in enumerate(questions_about(image_id)):
                lines.append({**row, "image": name, "question_id": image_id * 10 + number})
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return directory


def write_vqa_split(directory: Path, subtype: str, images: int, annotated: bool = True) -> VQAFiles:
    """The official VQA v2 files of one split, under their official names, in ``directory``."""
    image_dir = directory / ("test2015" if subtype.startswith("test-dev") else subtype)
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for image_id in range(1, images + 1):
        (image_dir / f"COCO_{image_dir.name}_{image_id:012d}.jpg").write_bytes(
            image_bytes(list(COLOURS)[image_id % 4], "JPEG")
        )
        for number, row in enumerate(questions_about(image_id)):
            question_id = image_id * 1000 + number
            questions.append(
                {"image_id": image_id, "question": row["question"], "question_id": question_id}
            )
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": image_id,
                    "question_type": row["question_type"],
                    "answer_type": row["answer_type"],
                    "multiple_choice_answer": row["answers"][0],
                    "answers": [
                        {"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
                        for index, answer in enumerate(row["answers"])
                    ],
                }
            )
    header = {"info": {}, "license": {}, "data_subtype": subtype}
    question_file = directory / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    question_file.write_text(
        json.dumps({**header, "task_type": "Open-Ended", "questions": questions})
    )
    annotation_file = directory / f"v2_mscoco_{subtype}_annotations.json"
    if annotated:
        annotation_file.write_text(json.dumps({**header, "annotations": annotations}))
    return VQAFiles(question_file, annotation_file if annotated else None, image_dir)


LMMS_FEATURES = Features(
    {
        "question_type": Value("string"),
        "multiple_choice_answer": Value("string"),
        "answers": List(
            {
                "answer": Value("string"),
                "answer_confidence": Value("string"),
                "answer_id": Value("int64"),
            }
        ),
        "image_id": Value("int64"),
        "answer_type": Value("string"),
        "question_id": Value("int64"),
        "question": Value("string"),
        "image": Image(),
    }
)


def hub_split(images: int) -> Dataset:
    """Rows in the lmms-lab/VQAv2 schema, images embedded as bytes."""
    rows = []
    for image_id in range(images):
        image = {"bytes": image_bytes(list(COLOURS)[image_id % 4]), "path": None}
        for number, row in enumerate(questions_about(image_id)):
            rows.append(
                {
                    "question_type": row["question_type"],
                    "multiple_choice_answer": row["answers"][0],
                    "answers": [
                        {"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
                        for index, answer in enumerate(row["answers"])
                    ],
                    "image_id": image_id,
                    "answer_type": row["answer_type"],
                    "question_id": image_id * 10 + number,
                    "question": row["question"],
                    "image": image,
                }
            )
    return Dataset.from_list(rows, features=LMMS_FEATURES)


def train_one_step(data: Path | str, run: Path, **options) -> dict:
    """Train the tiny preset for one epoch of one batch (at most 32 questions)."""
    return train(
        TrainingArguments(
            output=str(run),
            data=str(data),
            preset="tiny",
            epochs=1,
            batch_size=32,
            progress=False,
            **options,
        )
    )


def evaluate_run(run: Path, data: Path | str, capsys, *options: str) -> dict:
    """`vqa eval --json` on the val split; the printed scores."""
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(data), "--json", *options]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def vqa_cache(tmp_path_factory, monkeypatch) -> Path:
    """Where this test's official VQA files are converted: a cache of its own."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HYBRID_VQA_CACHE", str(root))
    return root / "vqa-files"


# Each format trains one step and evaluates.


def test_jsonl_dataset_trains_and_evaluates_per_answer_type(tmp_path, capsys):
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 4, "val": 2})
    summary = train_one_step(data, tmp_path / "run")
    assert len(summary["history"]) == 1 and summary["history"][0]["train_questions"] == 12
    scores = evaluate_run(tmp_path / "run", data, capsys)
    assert scores["questions"] == 6
    assert set(scores["accuracy_by_answer_type"]) == {"other", "yes/no", "number"}


def test_official_vqa_directory_trains_directly_and_evaluates(tmp_path, capsys):
    write_vqa_split(tmp_path / "vqa", "train2014", images=4)
    write_vqa_split(tmp_path / "vqa", "val2014", images=2)
    assert source_format(tmp_path / "vqa") == "vqa"
    summary = train_one_step(tmp_path / "vqa", tmp_path / "run")
    assert summary["history"][0]["train_questions"] == 12
    scores = evaluate_run(tmp_path / "run", tmp_path / "vqa", capsys)
    assert scores["questions"] == 6 and scores["scored_questions"] == 6


def test_vqa_rows_carry_the_ten_human_answers_and_types(tmp_path):
    write_vqa_split(tmp_path, "val2014", images=1)
    row = load_vqa_dataset(tmp_path)["val"][0]
    assert row["answers"] == ["blue"] * 9 + ["orange"]
    assert (row["question_type"], row["answer_type"], row["question_id"]) == (
        "what color is the",
        "other",
        1000,
    )
    assert row["image_path"].endswith("val2014/COCO_val2014_000000000001.jpg")


def test_vqa_spec_file_names_files_anywhere_relative_to_it(tmp_path):
    files = write_vqa_split(tmp_path / "elsewhere", "val2014", images=2)
    spec = tmp_path / "vqa.json"
    spec.write_text(
        json.dumps(
            {
                "val": {
                    "questions": str(files.questions.relative_to(tmp_path)),
                    "annotations": str(files.annotations.relative_to(tmp_path)),
                    "images": "elsewhere/val2014",
                }
            }
        )
    )
    assert len(load_vqa_dataset(spec, ["val"])["val"]) == 6


def test_plain_coco_2017_image_names_are_found(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    image = next(files.images.iterdir())
    image.rename(files.images / "000000000001.jpg")
    assert len(load_vqa_dataset(tmp_path)["val"]) == 3


def test_convert_vqa_writes_the_local_format_with_linked_images(tmp_path, capsys):
    files = write_vqa_split(tmp_path / "vqa", "val2014", images=2)
    out = tmp_path / "converted"
    command = ["data", "vqav2", "--questions", str(files.questions), "--annotations"]
    assert (
        main([*command, str(files.annotations), "--images", str(files.images), "--out", str(out)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["questions"] == 6
    assert source_format(out) == "local"
    link = out / "images" / "val"
    assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
    rows = load_vqa_dataset(out)["val"]
    assert rows[0]["answers"] == ["blue"] * 9 + ["orange"] and rows[0]["answer_type"] == "other"


def test_convert_vqa_adds_a_split_and_refuses_to_replace_one(tmp_path):
    train_files = write_vqa_split(tmp_path / "vqa", "train2014", images=1)
    val_files = write_vqa_split(tmp_path / "vqa", "val2014", images=1)
    out = tmp_path / "converted"
    convert_vqa(train_files, out)
    convert_vqa(val_files, out)
    assert sorted(load_vqa_dataset(out)) == ["train", "val"]
    with pytest.raises(FileExistsError, match="already has split 'val'; pass --overwrite"):
        convert_vqa(val_files, out)
    convert_vqa(val_files, out, overwrite=True)


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    files = write_vqa_split(tmp_path / "vqa", "val2014", images=2)
    next(files.images.iterdir()).unlink()
    with pytest.raises(
        DatasetFormatError, match=r"question_id \d+: image .*COCO_val2014_0+\d\.jpg not found"
    ):
        convert_vqa(files, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vqa"]


def test_test_dev_without_annotations_is_predicted_and_written_in_results_format(tmp_path, capsys):
    write_jsonl_dataset(tmp_path / "jsonl", {"train": 4, "val": 1})
    train_one_step(tmp_path / "jsonl", tmp_path / "run")
    write_vqa_split(tmp_path / "vqa", "test-dev2015", images=2, annotated=False)
    results = tmp_path / "results.json"
    options = ["--split", "test-dev", "--results", str(results)]
    scores = evaluate_run(tmp_path / "run", tmp_path / "vqa", capsys, *options)
    assert scores["questions"] == 6 and scores["scored_questions"] == 0
    predictions = json.loads(results.read_text())
    assert [set(p) for p in predictions] == [{"question_id", "answer"}] * 6
    assert [p["question_id"] for p in predictions] == [1000, 1001, 1002, 2000, 2001, 2002]
    assert not list(tmp_path.glob("results.json.*"))


def test_save_to_disk_dataset_in_the_lmms_lab_schema_trains_and_evaluates(tmp_path, capsys):
    DatasetDict({"train": hub_split(4), "validation": hub_split(2)}).save_to_disk(tmp_path / "hub")
    summary = train_one_step(tmp_path / "hub", tmp_path / "run")
    assert summary["history"][0]["train_questions"] == 12
    scores = evaluate_run(tmp_path / "run", tmp_path / "hub", capsys)
    assert scores["questions"] == 6 and "number" in scores["accuracy_by_answer_type"]


def test_parquet_directory_with_mapped_columns_trains_and_evaluates(tmp_path, capsys):
    renames = {"image": "picture", "question": "text", "multiple_choice_answer": "label"}
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for split, images in (("train", 4), ("validation", 2)):
        rows = hub_split(images).remove_columns("answers").rename_columns(renames)
        rows.to_parquet(str(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet"))
    columns = {"image_column": "picture", "question_column": "text", "answer_column": "label"}
    summary = train_one_step(tmp_path / "pq", tmp_path / "run", **columns)
    assert summary["history"][0]["train_questions"] == 12
    options = ["--image-column", "picture", "--question-column", "text", "--answer-column", "label"]
    assert evaluate_run(tmp_path / "run", tmp_path / "pq", capsys, *options)["questions"] == 6


def test_streamed_hub_dataset_evaluates_in_one_pass(tmp_path, capsys):
    DatasetDict({"train": hub_split(4), "validation": hub_split(2)}).save_to_disk(tmp_path / "hub")
    train_one_step(tmp_path / "hub", tmp_path / "run")
    streamed = evaluate_run(tmp_path / "run", tmp_path / "hub", capsys, "--streaming")
    stored = evaluate_run(tmp_path / "run", tmp_path / "hub", capsys)
    assert streamed["questions"] == 6
    assert streamed["accuracy_by_answer_type"] == stored["accuracy_by_answer_type"]


def test_hub_image_paths_are_relative_to_the_dataset_directory(tmp_path):
    (tmp_path / "hub" / "pictures").mkdir(parents=True)
    (tmp_path / "hub" / "pictures" / "a.png").write_bytes(image_bytes("red"))
    rows = Dataset.from_dict({"image": ["pictures/a.png"], "question": ["q?"], "answer": ["red"]})
    rows.save_to_disk(tmp_path / "hub")
    (row,) = load_vqa_dataset(tmp_path / "hub")["train"]
    assert row["image_path"] == str(tmp_path / "hub" / "pictures" / "a.png")
    assert row["answers"] == ["red"]


# Scale: official files converted once into Arrow, only the splits asked for, images lazily.


def test_official_files_are_converted_once_then_memory_mapped(tmp_path, vqa_cache, monkeypatch):
    write_vqa_split(tmp_path, "val2014", images=2)
    first = load_vqa_dataset(tmp_path)["val"].to_list()
    (entry,) = vqa_cache.iterdir()
    assert entry.name.startswith("v2_OpenEnded_mscoco_val2014_questions-")
    monkeypatch.setattr(vqav2, "vqa_rows", lambda *args: pytest.fail("parsed the files again"))
    second = load_vqa_dataset(tmp_path)["val"]
    assert second.cache_files[0]["filename"].startswith(str(entry))
    assert second.to_list() == first


@pytest.mark.parametrize("answer", ["purple", "pink"])  # a new size; the same size, a new mtime
def test_a_changed_official_file_is_converted_again(tmp_path, vqa_cache, answer):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    assert load_vqa_dataset(tmp_path)["val"][0]["answers"][0] == "blue"
    mtime = files.annotations.stat().st_mtime_ns + 10**9
    document = json.loads(files.annotations.read_text())
    document["annotations"][0]["answers"][0]["answer"] = answer
    files.annotations.write_text(json.dumps(document))
    os.utime(files.annotations, ns=(mtime, mtime))
    assert load_vqa_dataset(tmp_path)["val"][0]["answers"][0] == answer
    assert len(list(vqa_cache.iterdir())) == 2


def test_a_half_written_cache_entry_is_ignored(tmp_path, vqa_cache):
    write_vqa_split(tmp_path, "val2014", images=1)
    expected = load_vqa_dataset(tmp_path)["val"].to_list()
    (entry,) = vqa_cache.iterdir()
    staging = entry.with_name(f".{entry.name}.partial-killed")  # as a killed conversion leaves it
    entry.rename(staging)
    for arrow in staging.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:100])
    assert load_vqa_dataset(tmp_path)["val"].to_list() == expected
    assert sorted(path.name for path in vqa_cache.iterdir()) == [staging.name, entry.name]


def test_an_interrupted_conversion_leaves_no_cache_entry(tmp_path, vqa_cache, monkeypatch):
    write_vqa_split(tmp_path, "val2014", images=1)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(vqav2.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_vqa_dataset(tmp_path)
    assert list(vqa_cache.iterdir()) == []


def test_a_conversion_that_loses_a_race_keeps_the_winners_entry(tmp_path, vqa_cache):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    expected = load_vqa_dataset(tmp_path)["val"].to_list()
    (entry,) = vqa_cache.iterdir()
    vqav2.write_cache(files, entry, vqav2.cache_source(files))  # a second process, finishing last
    assert list(vqa_cache.iterdir()) == [entry]
    assert load_vqa_dataset(tmp_path)["val"].to_list() == expected


def test_a_failed_conversion_leaves_no_cache_entry(tmp_path, vqa_cache):
    files = write_vqa_split(tmp_path, "val2014", images=2)
    next(files.images.iterdir()).unlink()
    with pytest.raises(DatasetFormatError, match=r"image .*COCO_val2014_0+\d\.jpg not found"):
        load_vqa_dataset(tmp_path)
    assert list(vqa_cache.iterdir()) == []


def test_official_files_are_read_in_chunks_whatever_their_key_order(tmp_path, monkeypatch):
    files = write_vqa_split(tmp_path, "val2014", images=2)
    expected = load_vqa_dataset(tmp_path, cache_dir=tmp_path / "cache-a")["val"].to_list()
    for path, key in ((files.questions, "questions"), (files.annotations, "annotations")):
        document = json.loads(path.read_text())
        path.write_text(json.dumps({key: document.pop(key), **document}, indent=1))  # list first
    monkeypatch.setattr(json_stream, "CHUNK_CHARS", 5)
    assert load_vqa_dataset(tmp_path, cache_dir=tmp_path / "cache-b")["val"].to_list() == expected


def test_only_the_requested_vqa_splits_are_read(tmp_path, vqa_cache):
    write_vqa_split(tmp_path, "train2014", images=2)
    files = write_vqa_split(tmp_path, "test-dev2015", images=1, annotated=False)
    files.questions.write_text("{broken")
    next(files.images.iterdir()).unlink()
    assert dataset_splits(tmp_path) == ["test-dev", "train"]
    assert len(load_vqa_dataset(tmp_path, ["train"])["train"]) == 6
    assert [path.name[:29] for path in vqa_cache.iterdir()] == ["v2_OpenEnded_mscoco_train2014"]


def test_only_the_requested_local_splits_are_read(tmp_path):
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 1, "val": 1, "test": 1})
    (data / "test.jsonl").write_text("{broken\n")
    assert dataset_splits(data) == ["train", "val", "test"]
    assert sorted(load_vqa_dataset(data, ["train", "val"])) == ["train", "val"]


def test_only_the_requested_hub_splits_are_read(tmp_path):
    files = tmp_path / "pq" / "data"
    files.mkdir(parents=True)
    for split, images in (("train", 2), ("validation", 1)):
        hub_split(images).to_parquet(str(files / f"{split}-00000-of-00001.parquet"))
    (files / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
    DatasetDict({"train": hub_split(2), "test": hub_split(1)}).save_to_disk(tmp_path / "saved")
    for arrow in (tmp_path / "saved" / "test").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    assert dataset_splits(tmp_path / "pq") == ["train", "val", "test"]
    rows = load_vqa_dataset(tmp_path / "pq", ["train", "val"])
    assert {split: len(rows[split]) for split in rows} == {"train": 6, "val": 3}
    assert len(load_vqa_dataset(tmp_path / "saved", ["train"])["train"]) == 6


# Answer vocabulary: top N, coverage, rows with no answer in it.


def test_training_keeps_the_top_n_answers_and_reports_coverage(tmp_path):
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 4})
    summary = train_one_step(data, tmp_path / "run", max_answers=3)
    assert json.loads((tmp_path / "run" / "answers.json").read_text()) == ["1", "no", "yes"]
    # The colour questions have no answer among the top 3: counted, and left out of training.
    assert summary["answer_coverage"]["rows_out_of_vocab"] == 4
    assert summary["answer_coverage"]["row_coverage"] == pytest.approx(8 / 12)
    assert summary["history"][0]["train_questions"] == 8
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["answer_coverage"] == summary["answer_coverage"]


def test_ten_human_answers_train_on_vqa_soft_scores(tmp_path):
    write_vqa_split(tmp_path, "val2014", images=1)
    rows = load_vqa_dataset(tmp_path)["val"]
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    scores = processor.labels(rows["answers"][:1])[0]
    encode = processor.answers.encode
    assert scores[encode("blue")] == pytest.approx(1.0)  # 9 humans
    assert scores[encode("orange")] == pytest.approx(1 / 3)  # 1 human
    assert scores.sum() == pytest.approx(4 / 3)


def test_answerable_rows_drop_rows_with_no_answer_in_vocabulary(tmp_path):
    rows = Dataset.from_dict({"answers": [["red", "blue"], ["green"], []]})
    kept, report = answerable_rows(rows, AnswerVocab(["blue"]))
    assert kept["answers"] == [["red", "blue"]] and report["rows_out_of_vocab"] == 2


# Official evaluation: cases the official script (vqaEval.py) documents by its behaviour.


@pytest.mark.parametrize(
    ("prediction", "humans", "accuracy"),
    [
        ("Two", ["2"] * 10, 1.0),  # number words become digits
        ("a dog.", ["dog"] * 3 + ["cat"] * 7, 0.9),  # articles and the final period go
        ("dont know", ["don't know"] * 2 + ["no"] * 8, 0.6),  # contractions get their apostrophe
        ("1,000", ["1000"] + ["many"] * 9, 0.3),  # thousands commas go
        ("yes", ["no"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_follows_the_official_normalisation(prediction, humans, accuracy):
    assert vqa_accuracy(prediction, humans) == pytest.approx(accuracy)


# Errors that name the file, line, row, split or column.


def test_malformed_vqa_json_names_the_file_line_and_column(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    files.annotations.write_text('{"annotations": [\n  {"question_id": 1,,}\n]}')
    with pytest.raises(DatasetFormatError, match=r"annotations\.json:2:\d+: malformed JSON"):
        load_vqa_dataset(tmp_path)


def test_vqa_question_without_annotation_names_the_question(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    document = json.loads(files.annotations.read_text())
    document["annotations"].pop()
    files.annotations.write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match="no annotation for question_id 1002"):
        load_vqa_dataset(tmp_path)


def test_vqa_entry_without_a_question_names_the_entry(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=1)
    document = json.loads(files.questions.read_text())
    del document["questions"][1]["question"]
    files.questions.write_text(json.dumps(document))
    with pytest.raises(DatasetFormatError, match=r"questions\[1\] has no question"):
        load_vqa_dataset(tmp_path)


def test_unknown_vqa_split_lists_the_splits_there_are(tmp_path):
    write_vqa_split(tmp_path, "val2014", images=1)
    with pytest.raises(ValueError, match=r"\['train'\] not in .* it has \['val'\]"):
        load_vqa_dataset(tmp_path, ["train"])


def test_unknown_hub_split_lists_the_splits_there_are(tmp_path):
    DatasetDict({"train": hub_split(1), "validation": hub_split(1)}).save_to_disk(tmp_path / "hub")
    with pytest.raises(ValueError, match=r"\['test'\] not in .* it has \['train', 'val'\]"):
        load_vqa_dataset(tmp_path / "hub", ["test"])


def test_hub_row_without_a_question_names_the_split_row_and_column(tmp_path):
    rows = hub_split(1).map(
        lambda row, i: {"question": "" if i == 2 else row["question"]}, with_indices=True
    )
    rows.save_to_disk(tmp_path / "hub")
    with pytest.raises(
        DatasetFormatError, match=r"\[train\] row 2: no question in column 'question'"
    ):
        load_vqa_dataset(tmp_path / "hub")


def test_hub_row_without_an_answer_names_the_split_row_and_column(tmp_path):
    rows = Dataset.from_dict(
        {"image": [image_bytes("red")] * 2, "question": ["q?"] * 2, "answer": ["red", None]},
        features=Features(
            {"image": Image(), "question": Value("string"), "answer": Value("string")}
        ),
    )
    rows.save_to_disk(tmp_path / "hub")
    with pytest.raises(DatasetFormatError, match=r"\[train\] row 1: no answer in column 'answer'"):
        load_vqa_dataset(tmp_path / "hub")


def test_hub_missing_column_lists_the_columns_there_are(tmp_path):
    hub_split(1).save_to_disk(tmp_path / "hub")
    with pytest.raises(
        DatasetFormatError, match=r"no image column 'img'; it has \[.*'question'.*--image-column"
    ):
        load_vqa_dataset(tmp_path / "hub", columns=ColumnMapping(image="img"))


def test_hub_missing_image_file_names_the_row_and_path(tmp_path):
    Dataset.from_dict({"image": ["gone.png"], "question": ["q?"], "answer": ["a"]}).save_to_disk(
        tmp_path / "hub"
    )
    with pytest.raises(
        DatasetFormatError, match=r"row 0, column 'image': image '.*gone\.png' not found"
    ):
        load_vqa_dataset(tmp_path / "hub")


def test_jsonl_row_without_a_question_names_the_file_and_line(tmp_path):
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 1})
    with (data / "train.jsonl").open("a") as file:
        file.write(json.dumps({"image": "images/train-0.png", "answer": "red"}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"train\.jsonl:4: field 'question' must be"):
        load_vqa_dataset(data)


def bad_image_rows(tmp_path: Path) -> tuple[list[dict], HybridVQAProcessor]:
    """Six rows about two images, the second of which (question_id 10..12) does not decode."""
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 2})
    (data / "images" / "train-1.png").write_bytes(image_bytes("red")[:60])  # truncated
    rows = load_vqa_dataset(data)["train"]  # reading does not decode: no error yet
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    return list(rows), processor


def test_an_image_that_does_not_decode_fails_in_its_batch_naming_the_question_and_path(tmp_path):
    rows, processor = bad_image_rows(tmp_path)
    with pytest.raises(
        DatasetFormatError,
        match=r"question_id 10: image .*train-1\.png does not decode.*--on-bad-image skip",
    ):
        VQACollator(processor)(rows)


def test_an_image_that_does_not_decode_is_skipped_counted_and_logged_on_request(tmp_path, caplog):
    rows, processor = bad_image_rows(tmp_path)
    collator = VQACollator(processor, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="vqa.processing"):
        inputs, meta = collator(rows)
        collator(rows[3:] + rows[:1])  # the bad image again, in the next batch: not decoded again
    assert [row["question_id"] for row in meta] == [0, 1, 2]
    assert inputs["pixel_values"].shape[0] == 1 and inputs["input_ids"].shape[0] == 3
    assert collator.skipped_rows == 6
    assert list(collator.bad_images) == [rows[3]["image_path"]]
    assert caplog.text.count("skipping the questions about image") == 1
    assert "train-1.png: it does not decode (OSError: image file is truncated)" in caplog.text


def test_questions_skipped_in_loader_workers_are_counted_in_the_main_process(tmp_path):
    rows, processor = bad_image_rows(tmp_path)
    collator = VQACollator(processor, on_bad_image="skip")
    mixed = [rows[index] for index in (0, 3, 1, 4, 2, 5)]  # one good, one bad image per batch
    loader = DataLoader(mixed, batch_size=2, num_workers=1, collate_fn=collator)
    assert sum(len(meta) for _, meta in loader) == 3
    assert collator.skipped_rows == 3


def test_a_batch_of_only_bad_images_says_so(tmp_path):
    rows, processor = bad_image_rows(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"every question of a batch of 3 is about an"):
        VQACollator(processor, on_bad_image="skip")(rows[3:])


def test_an_image_broken_after_conversion_fails_in_its_batch(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=2)
    load_vqa_dataset(tmp_path)
    (files.images / "COCO_val2014_000000000002.jpg").write_bytes(b"no longer a JPEG")
    rows = load_vqa_dataset(tmp_path)["val"]  # from the cache: no image is looked at
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    with pytest.raises(
        DatasetFormatError, match=r"question_id 2000: image .*000000000002\.jpg does not decode"
    ):
        VQACollator(processor)(list(rows))


def test_each_image_is_decoded_once_however_many_questions_share_it(tmp_path, monkeypatch):
    data = write_jsonl_dataset(tmp_path / "jsonl", {"train": 2})
    rows = load_local_dataset(data)["train"]
    processor = HybridVQAProcessor.train(rows["question"], rows["answers"], image_size=32)
    decoded = []
    monkeypatch.setattr(
        processing, "open_image", lambda image: decoded.append(image) or PILImage.new("RGB", (8, 8))
    )
    inputs, _ = VQACollator(processor)(list(rows))
    assert len(rows) == 6 and len(decoded) == 2
    assert inputs["image_index"].tolist() == [0, 0, 0, 1, 1, 1]


def test_an_empty_jsonl_split_says_so(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(DatasetFormatError, match=r"train\.jsonl: the dataset is empty"):
        load_vqa_dataset(tmp_path)


def test_an_empty_vqa_questions_file_says_so(tmp_path):
    files = write_vqa_split(tmp_path, "val2014", images=0)
    with pytest.raises(DatasetFormatError, match="split 'val' is empty"):
        load_vqa_dataset(tmp_path)
    with pytest.raises(DatasetFormatError, match="the dataset is empty"):
        convert_vqa(files, tmp_path / "out")


def test_a_directory_without_data_says_so(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetFormatError, match=r"nothing: cannot be read as a dataset directory"):
        load_vqa_dataset(tmp_path / "nothing")


def test_a_missing_path_that_is_no_hub_id_says_so_without_trying_the_hub(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"no such file or directory, and not a"):
        load_vqa_dataset(tmp_path / "missing")


def test_a_missing_owner_name_path_is_tried_as_a_hub_id_and_says_so():
    with pytest.raises(
        DatasetFormatError, match=r"cannot be read as a hub id \(no such local path\)"
    ):
        load_vqa_dataset("no-such-owner/no-such-dataset")


def test_atomic_writes_get_the_usual_permissions_and_leave_nothing_on_error(tmp_path):
    from vqa.files import atomic_writer, current_umask, write_json

    write_json(tmp_path / "out.json", {"a": 1})
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    with pytest.raises(RuntimeError), atomic_writer(tmp_path / "broken.txt") as file:
        file.write("half")
        raise RuntimeError("stop")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json"]
