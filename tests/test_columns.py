"""The Arrow-column paths give what the straightforward Python loops gave: the same answer
vocabulary (order and ties), coverage, kept rows, tokenizer, region objects and sampler order.

Each reference below is the Python version the column path replaced, kept here to compare
against, on small data with the edge cases: rows without answers, answers that normalise to
nothing or fall outside the vocabulary, several answers per row, ties in count, a table of
several chunks and rows seen through an indices mapping (``select``, ``shuffle``).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, concatenate_datasets

from vqa.arguments import TrainingArguments
from vqa.data.answers import AnswerVocab, normalize_answer
from vqa.data.columns import (
    arrow_column,
    distinct_codes,
    flat_lists,
    group_rows,
    row_sums,
    value_counts,
)
from vqa.data.regions import RegionAttributes
from vqa.data.sources import answerable_rows
from vqa.processing import train_tokenizer
from vqa.run_setup import ImageGroupedSampler, region_objects

EDGE_ROWS = [
    ["yes", "yes", "Yes.", "no"],  # several answers, two spellings of one
    ["two", "2", "3"],  # "two" and "2" are one answer
    [],  # no answers
    ["the"],  # normalises to nothing
    ["red"],
    ["blue", "cat"],  # ties in count
    ["Blue", "dog", "dog"],
    ["zebra crossing"],
    ["a dog", "Cat!"],
]
POOL = [
    "yes",
    "no",
    "Yes",
    "2",
    "two",
    "3",
    "red",
    "Red.",
    "blue",
    "a cat",
    "the",
    "x-ray",
    "1,000",
]


def random_rows(count: int, seed: int) -> list[list[str]]:
    """Rows of 0 to 10 answers from a small pool: many ties, variants and empty rows."""
    rng = random.Random(seed)
    return [rng.choices(POOL, k=rng.choice([0, 1, 3, 10])) for _ in range(count)]


def as_list(row: str | list[str]) -> list[str]:
    return [row] if isinstance(row, str) else list(row)


def reference_vocabulary(answer_lists, max_size: int = 3129, min_count: int = 1) -> list[str]:
    """``AnswerVocab.build`` as a Counter over every normalised answer."""
    counts = Counter(
        answer for row in answer_lists for answer in map(normalize_answer, as_list(row)) if answer
    )
    kept = [answer for answer, count in counts.items() if count >= min_count]
    kept.sort(key=lambda answer: (-counts[answer], answer))
    return kept[:max_size]


def reference_coverage(vocab: AnswerVocab, answer_lists) -> dict[str, float]:
    """``AnswerVocab.coverage`` as a lookup per answer."""
    rows = [[vocab.encode(a) is not None for a in as_list(row)] for row in answer_lists]
    answers = sum(len(row) for row in rows)
    covered = sum(any(row) for row in rows)
    return {
        "rows": len(rows),
        "row_coverage": covered / len(rows) if rows else math.nan,
        "answer_coverage": sum(map(sum, rows)) / answers if answers else math.nan,
        "rows_out_of_vocab": len(rows) - covered,
    }


def reference_answerable(rows: Dataset, vocab: AnswerVocab) -> Dataset:
    """``answerable_rows`` as a ``filter`` with a lookup per row."""
    return rows.filter(
        lambda answers: any(vocab.encode(answer) is not None for answer in answers),
        input_columns="answers",
    )


class ReferenceSampler:
    """``ImageGroupedSampler`` with its groups built by a dict over the rows."""

    def __init__(self, image_paths: list[str], seed: int, group_size: int | None = None) -> None:
        groups: dict[str, list[int]] = {}
        for row, path in enumerate(image_paths):
            groups.setdefault(path, []).append(row)
        self.groups = list(groups.values())
        if group_size is not None:
            self.groups = [
                group[start : start + group_size]
                for group in self.groups
                for start in range(0, len(group), group_size)
            ]
        self.seed, self.epoch = seed, 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            yield from self.groups[group]


def reference_region_objects(rows: Dataset) -> list[list[dict]]:
    """``region_objects`` as the first row's objects of each image, by a dict over the rows."""
    per_image: dict[str, str] = {}
    for path, objects in zip(rows["image_path"], rows["objects_json"], strict=True):
        per_image.setdefault(path, objects)
    return [json.loads(objects) for objects in per_image.values()]


def table(answer_lists: list[list[str]], seed: int = 0) -> Dataset:
    """Rows with answers, questions, images (interleaved, several rows each) and objects."""
    rng = random.Random(seed)
    images = [f"images/{index}.png" for index in range(max(1, len(answer_lists) // 3))]
    paths = [rng.choice(images) for _ in answer_lists]
    return Dataset.from_dict(
        {
            "answers": answer_lists,
            "question": [f"What is {rng.choice(['it', 'that', 'the dog'])}?" for _ in paths],
            "question_id": list(range(len(answer_lists))),
            "image_path": paths,
            # Objects per image, but a later row of an image may disagree: the first row counts.
            "objects_json": [
                json.dumps([{"box": [0, 0, 1, 1], "colour": rng.choice(["red", "blue"])}])
                for _ in paths
            ],
        }
    )


def chunked(rows: Dataset, pieces: int = 3) -> Dataset:
    """The same rows in a table of several chunks."""
    size = math.ceil(len(rows) / pieces)
    return concatenate_datasets(
        [
            rows.select(range(start, min(start + size, len(rows))))
            for start in range(0, len(rows), size)
        ]
    )


def views(rows: Dataset) -> dict[str, Dataset]:
    """The rows as they are, in chunks, shuffled (an indices mapping) and a selection of them."""
    return {
        "plain": rows,
        "chunked": chunked(rows),
        "shuffled": chunked(rows).shuffle(seed=1),
        "selected": rows.select([index for index in range(len(rows)) if index % 3 != 1]),
    }


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
def test_arrow_column_reads_the_rows_in_their_order(view):
    rows = views(table(random_rows(40, seed=0)))[view]
    assert arrow_column(rows, "answers").to_pylist() == list(rows["answers"])
    assert arrow_column(rows, "image_path").to_pylist() == list(rows["image_path"])


def test_value_counts_count_like_a_counter_and_keep_nulls():
    values = ["b", "a", "b", None, "a", "b", None]
    distinct, counts = value_counts(pa.chunked_array([values[:3], values[3:]]))
    assert dict(zip(distinct, counts.tolist(), strict=True)) == Counter(values)


def test_flat_lists_give_the_elements_row_after_row_and_each_rows_length():
    lists = pa.chunked_array([[["a", "b"], [], None], [["c"], ["d", None]]])
    values, lengths = flat_lists(lists)
    assert values.to_pylist() == ["a", "b", "c", "d", None]
    assert lengths.tolist() == [2, 0, 0, 1, 2]


def test_row_sums_add_each_rows_run_with_empty_rows_anywhere():
    values = np.array([True, False, True, True, False])
    assert row_sums(values, np.array([0, 2, 0, 3, 0])).tolist() == [0, 1, 0, 2, 0]
    assert row_sums(np.zeros(0, dtype=bool), np.array([0, 0])).tolist() == [0, 0]


def test_distinct_codes_number_values_in_order_of_first_occurrence():
    distinct, codes = distinct_codes(pa.chunked_array([["b", None], ["a", "b", "c", None]]))
    assert distinct == ["b", None, "a", "c"]
    assert codes.tolist() == [0, 1, 2, 0, 3, 1]


def test_group_rows_keep_row_order_within_groups_in_order_of_first_row():
    order, offsets = group_rows(["b", "a", "b", "c", "a", "b"])
    groups = [order[offsets[g] : offsets[g + 1]].tolist() for g in range(len(offsets) - 1)]
    assert groups == [[0, 2, 5], [1, 4], [3]]


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
@pytest.mark.parametrize(("max_size", "min_count"), [(3129, 1), (4, 1), (3129, 2), (1, 1)])
def test_vocabulary_from_a_column_matches_the_counter(view, max_size, min_count):
    rows = views(table(EDGE_ROWS * 2 + random_rows(60, seed=1)))[view]
    column = arrow_column(rows, "answers")
    expected = reference_vocabulary(list(rows["answers"]), max_size, min_count)
    assert AnswerVocab.build(column, max_size, min_count).answers == expected


def test_vocabulary_breaks_ties_alphabetically_whatever_the_order_of_first_occurrence():
    rows = [["cat"], ["blue"], ["ant", "dog"], ["Blue", "Cat", "ant", "dog"]]
    column = arrow_column(table(rows), "answers")
    assert AnswerVocab.build(column).answers == reference_vocabulary(rows)
    assert AnswerVocab.build(column).answers == ["ant", "blue", "cat", "dog"]


def test_vocabulary_from_a_column_of_bare_strings_matches_the_counter():
    answers = ["red", "Red.", "two", "2", "the", "blue"]
    column = pa.chunked_array([answers[:2], answers[2:]])
    assert AnswerVocab.build(column).answers == reference_vocabulary(answers)


def test_vocabulary_of_python_rows_matches_the_counter():
    rows = [*EDGE_ROWS, "yes", "Two", *random_rows(30, seed=2)]
    assert AnswerVocab.build(rows, max_size=5).answers == reference_vocabulary(rows, 5)


def test_vocabulary_refuses_an_answer_that_is_not_a_string():
    with pytest.raises(TypeError, match="string"):
        AnswerVocab.build([["yes", 3]])


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
def test_coverage_of_a_column_matches_the_lookup_per_answer(view):
    rows = views(table(EDGE_ROWS + random_rows(50, seed=3)))[view]
    vocab = AnswerVocab(["yes", "2", "blue", "cat", "x ray"])
    report = vocab.coverage(arrow_column(rows, "answers"))
    assert report == reference_coverage(vocab, list(rows["answers"]))
    assert vocab.coverage(list(rows["answers"])) == report


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
@pytest.mark.parametrize("answers", [["yes", "2", "blue"], ["no such answer"], ["yes", "no", "2"]])
def test_answerable_rows_keep_what_the_filter_kept_in_its_order(view, answers):
    rows = views(table(EDGE_ROWS + random_rows(50, seed=4)))[view]
    vocab = AnswerVocab(answers)
    kept, report = answerable_rows(rows, vocab)
    assert kept.to_list() == reference_answerable(rows, vocab).to_list()
    assert report == reference_coverage(vocab, list(rows["answers"]))
    assert arrow_column(kept, "image_path").to_pylist() == list(kept["image_path"])


def test_answerable_rows_of_a_fully_covered_split_are_all_its_rows():
    rows = table([["yes"], ["yes", "no"], ["no"]])
    kept, report = answerable_rows(rows, AnswerVocab(["yes", "no"]))
    assert kept.to_list() == rows.to_list() and report["rows_out_of_vocab"] == 0


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
def test_sampler_yields_the_order_of_the_dict_grouping(view):
    rows = views(table(random_rows(90, seed=5), seed=5))[view]
    paths = list(rows["image_path"])
    for seed in (0, 7):
        sampler = ImageGroupedSampler(arrow_column(rows, "image_path"), seed)
        reference = ReferenceSampler(paths, seed)
        assert len(sampler) == len(paths)
        for epoch in (0, 1, 2):
            sampler.set_epoch(epoch)
            reference.epoch = epoch
            assert list(sampler) == list(reference)


@pytest.mark.parametrize("group_size", [1, 2, 3, 100])
def test_a_group_size_splits_each_images_questions_in_row_order(group_size):
    rows = views(table(random_rows(90, seed=5), seed=5))["shuffled"]
    paths = list(rows["image_path"])
    sampler = ImageGroupedSampler(arrow_column(rows, "image_path"), 4, group_size)
    reference = ReferenceSampler(paths, 4, group_size)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        reference.epoch = epoch
        order = list(sampler)
        assert order == list(reference) and sorted(order) == list(range(len(paths)))
    per_image = Counter(paths).values()
    assert len(sampler.sizes) == sum(math.ceil(n / group_size) for n in per_image)
    assert max(sampler.sizes) == min(group_size, max(per_image))
    whole = ImageGroupedSampler(arrow_column(rows, "image_path"), 4)
    if group_size == 100:  # larger than any image's questions: the plain grouping
        assert list(ImageGroupedSampler(paths, 4, group_size)) == list(whole)
    else:
        assert list(ImageGroupedSampler(paths, 4, group_size)) != list(whole)


def test_a_group_size_below_one_is_refused():
    with pytest.raises(
        ValueError, match="group_size must be a positive number of questions, got 0"
    ):
        ImageGroupedSampler(["a", "b"], 0, 0)
    with pytest.raises(ValueError, match="image_group_size must be a positive integer, got 0"):
        TrainingArguments(output="run", image_group_size=0)


def test_sampler_of_python_paths_matches_the_column():
    paths = ["b", "a", "b", "c", "a", "b", "d"]
    assert list(ImageGroupedSampler(paths, 3)) == list(ReferenceSampler(paths, 3))


def test_sampler_of_no_rows_yields_nothing():
    sampler = ImageGroupedSampler(pa.chunked_array([], pa.string()), 0)
    assert len(sampler) == 0 and list(sampler) == []


@pytest.mark.parametrize("view", ["plain", "chunked", "shuffled", "selected"])
def test_region_objects_are_the_distinct_first_objects_of_each_image(view):
    rows = views(table(random_rows(60, seed=6), seed=6))[view]
    reference = reference_region_objects(rows)
    objects = region_objects(rows, weight=1.0)
    assert objects == [o for i, o in enumerate(reference) if o not in reference[:i]]
    assert RegionAttributes.build(objects).values == RegionAttributes.build(reference).values


def test_region_objects_are_none_without_the_region_loss():
    assert region_objects(table([["yes"]]), weight=0.0) == []


@pytest.mark.parametrize("view", ["plain", "shuffled"])
def test_tokenizer_from_a_column_matches_the_one_from_python_strings(view):
    rows = views(table(random_rows(60, seed=7)))[view]
    from_column = train_tokenizer(arrow_column(rows, "question"), vocab_size=80)
    from_strings = train_tokenizer(list(rows["question"]), vocab_size=80)
    assert from_column.get_vocab() == from_strings.get_vocab()
