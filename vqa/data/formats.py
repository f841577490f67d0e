"""The one local format (README, "Data format"), the common rows every reader produces, and checks.

Every reader returns a ``datasets.DatasetDict`` whose rows have:
``image`` ({"path", "bytes"}, decoded lazily), ``image_path`` (str: the image's identity, so
questions about one image can share its encoding), ``question`` (str), ``answers`` (list[str]:
one answer, or several human answers), ``question_type`` (str), ``answer_type`` (str),
``question_id`` (int), ``targets`` (list[int]), ``target_boxes`` (list of [x0, y0, x1, y1]) and
``objects_json`` (str: the row's ``objects`` as JSON, ``[]`` when it has none; their fields vary
from one dataset to the next, so they are kept as text).

Readers check that each image is there (where it is a file) but do not decode it: decoding
every image of VQAv2 (123,287 COCO images, 19 GB) would hold up the first step for many
minutes. ``vqa.processing.VQACollator`` decodes each image when a batch needs it, and there
an image that does not decode fails or is skipped (``BAD_IMAGE_CHOICES``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    List,
    Value,
    load_dataset,
)

COMMON_FEATURES = Features(
    {
        "image": Image(decode=False),
        "image_path": Value("string"),
        "question": Value("string"),
        "answers": List(Value("string")),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "question_id": Value("int64"),
        "targets": List(Value("int64")),
        "target_boxes": List(List(Value("float64"))),
        "objects_json": Value("string"),
    }
)
BAD_IMAGE_CHOICES = ("fail", "skip")
SPLITS = ("train", "val", "test")


class DatasetFormatError(ValueError):
    """A dataset file is malformed; the message names the file, line and field."""


def available_splits(directory: str | Path) -> list[str]:
    """The splits of the local format that ``directory`` holds (``<split>.jsonl`` files)."""
    return [split for split in SPLITS if (Path(directory) / f"{split}.jsonl").is_file()]


def check_row(row: object, path: Path, line: int) -> None:
    """Raise DatasetFormatError unless ``row`` is a valid local-format row."""
    where = f"{path}:{line}"
    if not isinstance(row, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for field in ("image", "question"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise DatasetFormatError(f"{where}: field {field!r} must be a non-empty string")
    answer, answers = row.get("answer"), row.get("answers")
    if answer is None and answers is None:
        raise DatasetFormatError(f"{where}: row has neither 'answer' nor 'answers'")
    if answer is not None and not isinstance(answer, str):
        raise DatasetFormatError(f"{where}: field 'answer' must be a string, got {answer!r}")
    # An empty 'answers' list is a question without ground truth (e.g. VQAv2 test-dev).
    if answers is not None and (
        not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)
    ):
        raise DatasetFormatError(f"{where}: field 'answers' must be a list of strings")
    question_id = row.get("question_id", -1)
    if not isinstance(question_id, int) or isinstance(question_id, bool):
        raise DatasetFormatError(
            f"{where}: field 'question_id' must be an integer, got {question_id!r}"
        )
    objects, targets = row.get("objects") or [], row.get("targets") or []
    if not isinstance(objects, list):
        raise DatasetFormatError(f"{where}: field 'objects' must be a list, got {objects!r}")
    for index, obj in enumerate(objects):
        box = obj.get("box") if isinstance(obj, dict) else None
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            raise DatasetFormatError(
                f"{where}: objects[{index}] must be an object with a 'box' of 4 numbers "
                f"[x0, y0, x1, y1], got {obj!r}"
            )
    if not all(isinstance(t, int) and 0 <= t < len(objects) for t in targets):
        raise DatasetFormatError(
            f"{where}: field 'targets' {targets!r} must index into 'objects' ({len(objects)})"
        )


def check_jsonl(path: Path, directory: Path) -> int:
    """Validate every line of a local-format JSONL file; return its number of rows."""
    count = 0
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DatasetFormatError(f"{path}:{number}: malformed JSON ({error.msg})") from None
            check_row(row, path, number)
            if not (directory / row["image"]).is_file():
                raise DatasetFormatError(
                    f"{path}:{number}: image {row['image']!r} not found in {directory}"
                )
            count += 1
    if count == 0:
        raise DatasetFormatError(f"{path}: the dataset is empty (the file has no rows)")
    return count


def to_common_row(row: dict, directory: str) -> dict:
    """A raw local-format row -> the common row described in the module docstring."""
    answers = row["answers"] if row.get("answers") is not None else [row["answer"]]
    objects = row.get("objects") or []
    targets = row.get("targets") or []
    image_path = str(Path(directory) / row["image"])
    return {
        "image": {"path": image_path, "bytes": None},
        "image_path": image_path,
        "question": row["question"],
        "answers": answers,
        "question_type": row.get("question_type") or "all",
        "answer_type": row.get("answer_type") or "all",
        "question_id": int(row.get("question_id", -1)),
        "targets": targets,
        "target_boxes": [[float(v) for v in objects[t]["box"]] for t in targets],
        "objects_json": json.dumps(objects),
    }


def load_local_dataset(directory: str | Path, splits: list[str] | None = None) -> DatasetDict:
    """Read a local-format dataset directory (``train.jsonl``, ``val.jsonl``, ...).

    Args:
        directory: the dataset directory; image paths in the files are relative to it.
        splits: which splits to read (default: all that exist).

    Raises:
        FileNotFoundError: the directory does not exist or holds no split.
        ValueError: a requested split is not there (the message lists those that are).
        DatasetFormatError: a malformed line, missing field or missing image (file:line).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory {directory} does not exist")
    present = available_splits(directory)
    if not present:
        raise FileNotFoundError(f"{directory} holds none of {[s + '.jsonl' for s in SPLITS]}")
    splits = splits or present
    missing = [split for split in splits if split not in present]
    if missing:
        raise ValueError(f"split(s) {missing} not in {directory}; it has {present}")
    files = {split: str(directory / f"{split}.jsonl") for split in splits}
    for split in splits:
        check_jsonl(Path(files[split]), directory)
    raw = load_dataset("json", data_files=files)
    return DatasetDict(
        {
            split: rows.map(
                to_common_row,
                fn_kwargs={"directory": str(directory)},
                remove_columns=rows.column_names,
                features=COMMON_FEATURES,
                desc=f"Reading {split}",
            )
            for split, rows in raw.items()
        }
    )


def check_not_empty(splits: Mapping[str, Dataset | IterableDataset], source: str) -> None:
    """Raise DatasetFormatError when the dataset has no split, or a map-style split has no rows."""
    if not splits:
        raise DatasetFormatError(f"{source}: the dataset is empty (it has no splits)")
    for name, rows in splits.items():
        if isinstance(rows, Dataset) and len(rows) == 0:
            raise DatasetFormatError(f"{source}: split {name!r} is empty (no rows)")
