"""One entry point for every dataset the toolkit reads: ``load_vqa_dataset(source)``.

``source`` is, in the order tried:
1. a directory in the local format (``train.jsonl``, ``val.jsonl``, ``test.jsonl``);
2. the official VQA v1/v2 files: a directory holding them under their official names, or a
   JSON spec file naming them (see :mod:`vqa.data.vqav2`);
3. a Hugging Face dataset: a ``save_to_disk`` or data-file directory, or a hub id (see
   :mod:`vqa.data.hub`).
``synthetic`` (the embedded scenes) is resolved to its cached directory by the caller
(``vqa.cache.resolve_data_dir``), which keeps this package free of the cache.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, IterableDatasetDict

from vqa.data.answers import AnswerVocab, coverage_report
from vqa.data.columns import arrow_column
from vqa.data.formats import (
    DatasetFormatError,
    available_splits,
    check_not_empty,
    load_local_dataset,
)
from vqa.data.hub import ColumnMapping, hub_splits, load_hub_dataset
from vqa.data.vqav2 import load_vqa_files, vqa_sources

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def source_format(source: str | Path) -> str:
    """Which reader ``source`` needs: ``local``, ``vqa`` or ``hub``."""
    path = Path(source)
    if path.is_dir() and available_splits(path):
        return "local"
    if vqa_sources(path):
        return "vqa"
    if not path.exists() and not HUB_ID.fullmatch(str(source)):
        raise DatasetFormatError(
            f"no dataset at {str(source)!r}: no such file or directory, and not a Hugging Face "
            "hub id (owner/name)"
        )
    return "hub"


def dataset_splits(source: str | Path) -> list[str]:
    """The splits that ``source`` has, from file names and metadata, reading no rows."""
    kind = source_format(source)
    if kind == "local":
        return available_splits(source)
    if kind == "vqa":
        return sorted(vqa_sources(Path(source)))
    return hub_splits(str(source))


def load_vqa_dataset(
    source: str | Path,
    splits: list[str] | None = None,
    *,
    columns: ColumnMapping | None = None,
    streaming: bool = False,
    cache_dir: str | Path | None = None,
) -> DatasetDict | IterableDatasetDict:
    """Read any supported dataset as common rows (see :mod:`vqa.data.formats`).

    Only the requested splits' files are read. Images are not decoded here: ``VQACollator``
    decodes them batch by batch, and there fails on (or skips) one that does not decode.

    Args:
        source: see the module docstring.
        splits: which splits to read (default: all there are; see :func:`dataset_splits`).
        columns: column names of a Hugging Face dataset (ignored by the other readers).
        streaming: stream a Hugging Face dataset (an ``IterableDatasetDict``) instead of
            preparing it on disk; the other readers ignore it.
        cache_dir: where the official VQA files are converted into Arrow once (default:
            ``vqa.data.vqav2.default_cache_dir()``); the other readers ignore it.

    Raises:
        ValueError: a requested split is not there (the message lists those that are).
        DatasetFormatError: malformed data, naming the file and line or the split and row;
            an empty dataset or split.
    """
    kind = source_format(source)
    if kind == "local":
        data = load_local_dataset(source, splits)
    elif kind == "vqa":
        data = load_vqa_files(source, splits, cache_dir=cache_dir)
    else:
        data = load_hub_dataset(str(source), splits=splits, columns=columns, streaming=streaming)
    check_not_empty(data, str(source))
    return data


def answerable_rows(rows: Dataset, vocab: AnswerVocab) -> tuple[Dataset, dict[str, float]]:
    """The rows with at least one answer in ``vocab``, and the coverage report of all rows.

    Training keeps only these: a row whose answers are all out of vocabulary has no target
    the model could learn (its cross-entropy is ignored, its soft scores are all zero).
    Evaluation keeps every row, and such rows count as wrong. The rows are looked up in
    Arrow and kept in their order by ``select`` (an indices mapping: no table is written).
    """
    answers, hits = vocab.hits(arrow_column(rows, "answers"))
    report = coverage_report(answers, hits)
    if report["rows_out_of_vocab"] == 0:
        return rows, report
    kept = hits > 0
    # What `select` would hash itself, the previous fingerprint and the indices, hashed as bits.
    digest = hashlib.sha256(rows._fingerprint.encode() + np.packbits(kept).tobytes())
    fingerprint = digest.hexdigest()[:32]
    return rows.select(np.flatnonzero(kept).tolist(), new_fingerprint=fingerprint), report
