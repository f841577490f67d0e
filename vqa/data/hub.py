"""Hugging Face datasets as common rows: a hub id, or a local ``save_to_disk`` / parquet directory.

The usual VQA schemas work without options: ``image`` (an ``Image`` feature, a
{"bytes", "path"} struct, or a path string relative to a local dataset directory),
``question``, and the first of ``answers`` / ``answer`` / ``multiple_choice_answer`` that is
there. Answers may be a string, a list of strings, a list of {"answer": str, ...} objects
(lmms-lab/VQAv2, HuggingFaceM4/VQAv2) or the same as a dict of lists. ``question_id``,
``question_type``, ``answer_type`` and ``image_id`` are used when present. Other names are
given with :class:`ColumnMapping` (``--image-column``, ``--question-column``,
``--answer-column``). The split ``validation`` is called ``val``, as in the local format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from datasets import (
    Dataset,
    DatasetDict,
    Image,
    IterableDataset,
    IterableDatasetDict,
    load_dataset,
    load_dataset_builder,
    load_from_disk,
)

from vqa.data.formats import COMMON_FEATURES, DatasetFormatError

ANSWER_COLUMNS = ("answers", "answer", "multiple_choice_answer")
READ_ERRORS = (FileNotFoundError, ConnectionError, ValueError, OSError)
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns hold the image, the question and the answer(s); None = the usual names."""

    image: str = "image"
    question: str = "question"
    answer: str | None = None


def saved_to_disk(path: Path) -> bool:
    """Whether ``path`` was written by ``save_to_disk`` (a DatasetDict or one Dataset)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def stored_splits(source: str) -> dict[str, Path | list[str]]:
    """{stored split name: where its rows are}, read from metadata only, not from any rows.

    A ``save_to_disk`` directory gives each split's directory; a data-file directory or a hub
    id gives each split's data files, as ``load_dataset`` would find them.
    """
    path = Path(source)
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        return {name: path / name for name in names}
    if (path / "state.json").is_file():
        return {json.loads((path / "state.json").read_text()).get("_split") or "train": path}
    try:
        return dict(load_dataset_builder(source).config.data_files or {})
    except READ_ERRORS as error:
        raise unreadable(source, error) from error


def unreadable(source: str, error: Exception) -> DatasetFormatError:
    """The error for a ``source`` that ``datasets`` cannot read, saying what it was taken for."""
    what = "as a dataset directory" if Path(source).exists() else "as a hub id (no such local path)"
    return DatasetFormatError(f"{source}: cannot be read {what}: {type(error).__name__}: {error}")


def requested(names: list[str], splits: list[str] | None, source: str) -> dict[str, str]:
    """{split: stored name} of the requested ``splits`` (default: all) among the stored ``names``.

    Raises:
        ValueError: a requested split is not there (the message lists those that are).
    """
    present = {SPLIT_ALIASES.get(name, name): name for name in names}
    splits = splits or list(present)
    missing = [split for split in splits if split not in present]
    if missing:
        raise ValueError(f"split(s) {missing} not in {source}; it has {list(present)}")
    return {split: present[split] for split in splits}


def hub_splits(source: str) -> list[str]:
    """The splits of a Hugging Face dataset under this toolkit's names, reading no rows."""
    return list(requested(list(stored_splits(source)), None, source))


def read_raw(
    source: str, splits: list[str] | None, streaming: bool
) -> DatasetDict | IterableDatasetDict:
    """The requested splits as stored, under this toolkit's names (``validation`` -> ``val``).

    Other splits' files are not read: from a ``save_to_disk`` directory only the requested
    splits are loaded, and data files (a local directory, a hub id) are downloaded and prepared
    only for the requested splits, so training on train and val leaves test alone.
    """
    stored = stored_splits(source)
    wanted = requested(list(stored), splits, source)
    if saved_to_disk(Path(source)):
        rows = {split: load_from_disk(str(stored[name])) for split, name in wanted.items()}
        if streaming:
            return IterableDatasetDict({k: v.to_iterable_dataset() for k, v in rows.items()})
        return DatasetDict(rows)
    options = {}
    if len(wanted) < len(stored):
        options["data_files"] = {name: stored[name] for name in wanted.values()}
    try:
        raw = load_dataset(source, streaming=streaming, **options)
    except READ_ERRORS as error:
        raise unreadable(source, error) from error
    return type(raw)({split: raw[name] for split, name in wanted.items()})


def answer_list(cell: object) -> list[str] | None:
    """An answers cell in any of the supported shapes as a list of strings; None if unknown."""
    if isinstance(cell, str):
        return [cell]
    if isinstance(cell, dict) and isinstance(cell.get("answer"), list):
        cell = cell["answer"]  # a list of structs stored as a dict of lists
    if isinstance(cell, list):
        answers = [a.get("answer") if isinstance(a, dict) else a for a in cell]
        if all(isinstance(answer, str) for answer in answers):
            return answers
    return None


def image_cell(cell: object, base: Path | None, where: str) -> tuple[dict, str]:
    """An image cell as ({"path", "bytes"}, identity); DatasetFormatError if missing."""
    if isinstance(cell, str):
        cell = {"path": cell, "bytes": None}
    if not isinstance(cell, dict) or not (cell.get("bytes") or cell.get("path")):
        raise DatasetFormatError(f"{where}: no image (got {type(cell).__name__})")
    if cell.get("bytes"):
        identity = cell.get("path") or hashlib.sha1(cell["bytes"]).hexdigest()
        return {"path": cell.get("path"), "bytes": cell["bytes"]}, identity
    path = Path(cell["path"])
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise DatasetFormatError(f"{where}: image {str(path)!r} not found")
    return {"path": str(path), "bytes": None}, str(path)


def to_common_row(
    row: dict, index: int, columns: ColumnMapping, where: str, base: Path | None
) -> dict:
    """One raw row -> a common row; errors name the split, row index and column."""
    where = f"{where} row {index}"
    image, identity = image_cell(row.get(columns.image), base, f"{where}, column {columns.image!r}")
    question = row.get(columns.question)
    if not isinstance(question, str) or not question.strip():
        raise DatasetFormatError(f"{where}: no question in column {columns.question!r}")
    answers = answer_list(row.get(columns.answer))
    if answers is None:
        raise DatasetFormatError(
            f"{where}: no answer in column {columns.answer!r} (got {row.get(columns.answer)!r})"
        )
    image_id = row.get("image_id")
    return {
        "image": image,
        "image_path": f"image_id:{image_id}" if image_id is not None else identity,
        "question": question,
        "answers": answers,
        "question_type": row.get("question_type") or "all",
        "answer_type": row.get("answer_type") or "all",
        "question_id": int(row["question_id"]) if row.get("question_id") is not None else index,
        "targets": [],
        "target_boxes": [],
        "objects_json": "[]",
    }


def resolve_columns(
    rows: Dataset | IterableDataset, columns: ColumnMapping, where: str
) -> ColumnMapping:
    """``columns`` with the answer column filled in, checked against the split's columns."""
    present = rows.column_names
    if present is None:  # a stream whose features are unknown until read
        return ColumnMapping(columns.image, columns.question, columns.answer or ANSWER_COLUMNS[0])
    answer = columns.answer or next((name for name in ANSWER_COLUMNS if name in present), None)
    for role, name in (
        ("image", columns.image),
        ("question", columns.question),
        ("answer", answer),
    ):
        if name not in present:
            raise DatasetFormatError(
                f"{where}: no {role} column {name or ANSWER_COLUMNS!r}; it has {present} "
                f"(choose one with --{role}-column)"
            )
    return ColumnMapping(columns.image, columns.question, answer)


def common_split(
    rows: Dataset | IterableDataset, columns: ColumnMapping, where: str, base: Path | None
) -> Dataset | IterableDataset:
    """A raw split as common rows; images stay encoded until a batch needs them."""
    columns = resolve_columns(rows, columns, where)
    if rows.features is not None and isinstance(rows.features.get(columns.image), Image):
        rows = rows.cast_column(columns.image, Image(decode=False))
    options = {"desc": f"Reading {where}"} if isinstance(rows, Dataset) else {}
    return rows.map(
        to_common_row,
        with_indices=True,
        fn_kwargs={"columns": columns, "where": where, "base": base},
        remove_columns=rows.column_names,
        features=COMMON_FEATURES,
        **options,
    )


def load_hub_dataset(
    source: str,
    *,
    splits: list[str] | None = None,
    columns: ColumnMapping | None = None,
    streaming: bool = False,
) -> DatasetDict | IterableDatasetDict:
    """Read a Hugging Face dataset as common rows (see the module docstring).

    Args:
        source: a hub id (downloads unless offline), or a local directory written by
            ``save_to_disk`` or holding data files (parquet, ...) that ``load_dataset`` reads.
        splits: which splits to read (default: all); ``val`` finds ``validation``.
        columns: the column names, when they are not the usual ones.
        streaming: read rows lazily (an ``IterableDatasetDict``) instead of preparing the
            whole dataset on disk first.

    Raises:
        ValueError: a requested split is not there (the message lists those that are).
        DatasetFormatError: the source cannot be read, a column is missing, or a row has no
            image, question or answer (naming the split and row).
    """
    raw = read_raw(source, splits, streaming)
    base = Path(source) if Path(source).is_dir() else None
    return type(raw)(
        {
            split: common_split(rows, columns or ColumnMapping(), f"{source} [{split}]", base)
            for split, rows in raw.items()
        }
    )
