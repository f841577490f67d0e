"""Whole columns of common rows as Arrow arrays, and the per-row work done on them in bulk.

Reading a column as ``rows["answers"]`` formats it row by row in Python: seconds for VQAv2's
443,757 training questions and 4.4 million answers. These read it as Arrow and count, flatten,
sum and group it in Arrow and numpy; only the distinct values reach Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

ArrowColumn = pa.Array | pa.ChunkedArray


def arrow_column(rows: Dataset, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``rows`` as Arrow, in row order (after ``select`` or ``shuffle``)."""
    column = rows.data.column(name)
    # datasets would apply an indices mapping one row at a time (a slice per row): one take.
    indices = rows._indices
    return column if indices is None else column.take(indices.column(0))


def string_array(values: Iterable[str | None] | ArrowColumn) -> ArrowColumn:
    """``values`` as Arrow strings; an Arrow input is kept as it is."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    return pa.array(list(values), pa.string())


def value_counts(values: Iterable[str | None] | ArrowColumn) -> tuple[list, np.ndarray]:
    """The distinct values (None for nulls) and how often each occurs: (D,) list, (D,) int64."""
    counts = pc.value_counts(string_array(values))
    return counts.field("values").to_pylist(), counts.field("counts").to_numpy()


def to_numpy(values: ArrowColumn) -> np.ndarray:
    """Arrow numbers or booleans without nulls as one numpy array (chunks joined)."""
    if isinstance(values, pa.ChunkedArray):
        return values.to_numpy()
    return values.to_numpy(zero_copy_only=False)


def flat_lists(lists: ArrowColumn) -> tuple[ArrowColumn, np.ndarray]:
    """Every element of a column of lists, row after row, and each row's number of elements:
    (E,) Arrow (slices of ``lists``' buffers, not copies), (R,) int64. A null list is empty."""
    lengths = to_numpy(pc.list_value_length(lists).fill_null(0)).astype(np.int64)
    return pc.list_flatten(lists), lengths


def row_sums(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(R,) int64 sums of consecutive runs of ``values`` (E,), of ``lengths`` (R,) each."""
    sums = np.zeros(len(lengths), dtype=np.int64)
    filled = lengths > 0  # reduceat would give an empty run the next run's first value
    if filled.any():
        starts = np.cumsum(lengths) - lengths
        # int32: reduceat casts all of ``values`` first, and no row has 2**31 elements.
        sums[filled] = np.add.reduceat(values, starts[filled], dtype=np.int32)
    return sums


def distinct_codes(values: Iterable[str | None] | ArrowColumn) -> tuple[list, np.ndarray]:
    """The distinct values in order of first occurrence, and each value's position among them:
    (D,) list (None for nulls), (N,) int32."""
    encoded = pc.dictionary_encode(string_array(values), null_encoding="encode")
    if isinstance(encoded, pa.ChunkedArray):  # its chunks share one dictionary
        encoded = encoded.combine_chunks()
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)


def group_rows(keys: Iterable[str | None] | ArrowColumn) -> tuple[np.ndarray, np.ndarray]:
    """The rows grouped by key: ``order[offsets[g]:offsets[g + 1]]`` are the rows of group g,
    in row order, and groups come in the order of their first row. (N,) and (G + 1,) int64."""
    distinct, codes = distinct_codes(keys)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(distinct))
    return order, np.concatenate([[0], np.cumsum(sizes)])
