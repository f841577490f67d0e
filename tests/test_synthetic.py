"""Tests for the procedural scene dataset: format, exact answers, balance, atomic writes.

Answers are recomputed here from each row's objects with a parser and rules written
independently of the generator, for every question family.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqa.data.synthetic import (
    BACKGROUND_RGB,
    COLOUR_RGB,
    COLOURS,
    DATASET_VERSION,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    AnswerBalancer,
    SyntheticConfig,
    answer_space,
    ask_question,
    generate_example,
    generate_scene,
    generate_split,
    majority_baseline,
    render_scene,
    write_synthetic_dataset,
    writer,
)

SMALL = {"train": 40, "val": 12, "test": 12}
ROW_FIELDS = {
    "question_id": int, "image_id": str, "image": str, "question": str, "answer": str,
    "question_type": str, "answer_type": str, "objects": list, "targets": list,
}  # fmt: skip
ANSWER_TYPES = {
    "colour": "other", "shape": "other", "exist": "yes/no",
    "count": "number", "relate": "other", "compare": "yes/no",
}  # fmt: skip
# At most ~1.5x chance for a blind model that always gives the family's commonest answer.
MAJORITY_LIMITS = {
    "colour": 0.25, "shape": 0.45, "exist": 0.6, "count": 0.3, "relate": 0.2, "compare": 0.6,
}  # fmt: skip


# ------------------------------------------------------------------------------------------
# An independent answer checker: parse the question, recompute the answer from the objects.


def _d(prefix: str) -> str:
    """Regex of a description, with groups <prefix>size, <prefix>colour and <prefix>noun."""
    return (
        rf"(?:(?P<{prefix}size>{'|'.join(SIZES)}) )?"
        rf"(?:(?P<{prefix}colour>{'|'.join(COLOURS)}) )?"
        rf"(?P<{prefix}noun>{'|'.join(SHAPES)}|object)"
    )


_PATTERNS = {
    "colour": rf"what colour is the {_d('a')}\?",
    "shape": rf"what shape is the {_d('a')}\?",
    "exist": rf"is there a {_d('a')}\?",
    "count": rf"how many {_d('a')}s are there\?",
    "relate": rf"what (?P<asked>colour|shape) is the object "
    rf"(?P<relation>left of|right of|above|below) the {_d('a')}\?",
    "compare": rf"is the {_d('a')} the same (?P<compared>colour|shape|size) as the {_d('b')}\?",
}


def _description(match: re.Match, prefix: str) -> dict[str, str]:
    found = {"size": match[f"{prefix}size"], "colour": match[f"{prefix}colour"]}
    if match[f"{prefix}noun"] != "object":
        found["shape"] = match[f"{prefix}noun"]
    return {key: value for key, value in found.items() if value}


def _matches(objects: Sequence[dict], description: dict[str, str]) -> list[int]:
    return [i for i, obj in enumerate(objects) if all(obj[k] == v for k, v in description.items())]


def _the(objects: Sequence[dict], description: dict[str, str]) -> int:
    found = _matches(objects, description)
    assert len(found) == 1, f"{description} names {len(found)} objects, not exactly one"
    return found[0]


def _object_in_relation(objects: Sequence[dict], anchor: int, relation: str, size: int) -> int:
    """The object B with centre offset >= 0.15 * size in `relation`; no other object may be
    ahead of the anchor's centre at all."""
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in (o["box"] for o in objects)]
    ax, ay = centres[anchor]
    offset = {
        "left of": lambda c: ax - c[0],
        "right of": lambda c: c[0] - ax,
        "above": lambda c: ay - c[1],
        "below": lambda c: c[1] - ay,
    }[relation]
    ahead = [i for i, c in enumerate(centres) if i != anchor and offset(c) > 0]
    assert len(ahead) == 1, f"{len(ahead)} objects are {relation} the anchor"
    assert offset(centres[ahead[0]]) >= 0.15 * size, "the related object is within the margin"
    return ahead[0]


def recompute(row: dict, image_size: int) -> tuple[str, list[int]]:
    """(answer, targets) of `row` recomputed from its objects and question text."""
    family, objects = row["question_type"], row["objects"]
    match = re.fullmatch(_PATTERNS[family], row["question"])
    assert match, f"{row['question']!r} does not fit the {family} template"
    described = _description(match, "a")
    if family in ("colour", "shape"):
        target = _the(objects, described)
        return objects[target][family], [target]
    if family in ("exist", "count"):
        found = _matches(objects, described)
        answer = ("yes" if found else "no") if family == "exist" else str(len(found))
        return answer, found
    if family == "relate":
        anchor = _the(objects, described)
        other = _object_in_relation(objects, anchor, match["relation"], image_size)
        return objects[other][match["asked"]], [anchor, other]
    first, second = _the(objects, described), _the(objects, _description(match, "b"))
    assert first != second
    same = objects[first][match["compared"]] == objects[second][match["compared"]]
    return ("yes" if same else "no"), [first, second]


# ------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "scenes"
    info = write_synthetic_dataset(out, **SMALL, seed=3, progress=False)
    return out, info


@pytest.fixture(scope="module")
def rows(dataset: tuple[Path, dict]) -> list[dict]:
    out, _ = dataset
    return [
        json.loads(line)
        for split in SMALL
        for line in (out / f"{split}.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def many_questions() -> list[dict]:
    """Questions (with their objects) of 2000 scenes, generated without rendering."""
    rng, config, balancer = np.random.default_rng(11), SyntheticConfig(), AnswerBalancer()
    questions = []
    for _ in range(2000):
        objects, asked = generate_example(rng, config, balancer)
        questions += [{**question, "objects": objects} for question in asked]
    return questions


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 31),
        ("image_size", 64.0),
        ("image_size", True),
        ("noise", -0.1),
        ("noise", 1.5),
        ("noise", "0.1"),
        ("questions_per_image", 0),
        ("min_objects", 0),
        ("max_objects", 7),
    ],
)
def test_config_rejects_bad_value_naming_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_config_rejects_max_objects_below_min_objects() -> None:
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticConfig(min_objects=4, max_objects=3)


def test_write_rejects_negative_split_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val"):
        write_synthetic_dataset(tmp_path / "d", train=1, val=-1, test=0, progress=False)


# ------------------------------------------------------------------------------------------
# Files and format


def test_writes_splits_images_and_info(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl", "val.jsonl", "test.jsonl", "images", "dataset_info.json"
    }  # fmt: skip
    for split, n_images in SMALL.items():
        assert len(list((out / "images" / split).glob("*.png"))) == n_images


def test_split_with_no_images_is_not_written(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "d", train=3, val=0, test=2, progress=False)
    assert not (tmp_path / "d" / "val.jsonl").exists()
    assert not (tmp_path / "d" / "images" / "val").exists()
    assert (tmp_path / "d" / "test.jsonl").exists()


def test_rows_have_every_field_with_its_type(rows: list[dict]) -> None:
    for row in rows:
        assert set(row) == set(ROW_FIELDS)
        for name, kind in ROW_FIELDS.items():
            assert isinstance(row[name], kind), name
        assert row["question_type"] in QUESTION_TYPES
        assert row["answer_type"] == ANSWER_TYPES[row["question_type"]]
        assert row["image"] == f"images/{row['image_id']}.png"
        assert all(isinstance(t, int) and 0 <= t < len(row["objects"]) for t in row["targets"])


def test_objects_have_known_attributes(rows: list[dict]) -> None:
    for row in rows:
        assert 1 <= len(row["objects"]) <= 6
        for obj in row["objects"]:
            assert set(obj) == {"box", "shape", "colour", "size"}
            assert (obj["shape"], obj["colour"], obj["size"]) in {
                (s, c, z) for s in SHAPES for c in COLOURS for z in SIZES
            }


def test_question_ids_are_unique_across_splits(rows: list[dict]) -> None:
    ids = [row["question_id"] for row in rows]
    assert len(ids) == len(set(ids))


def test_rows_of_one_image_share_its_objects(rows: list[dict]) -> None:
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image_id"], []).append(row)
    for image_rows in by_image.values():
        assert all(r["objects"] == image_rows[0]["objects"] for r in image_rows)
        assert len({r["question_type"] for r in image_rows}) == len(image_rows)


def test_boxes_are_inside_the_image_and_apart(rows: list[dict]) -> None:
    for row in rows:
        boxes = [obj["box"] for obj in row["objects"]]
        for x0, y0, x1, y1 in boxes:
            assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        for i, a in enumerate(boxes):
            for b in boxes[:i]:
                disjoint_x = a[2] < b[0] or b[2] < a[0]
                disjoint_y = a[3] < b[1] or b[3] < a[1]
                assert disjoint_x or disjoint_y, f"{a} touches {b}"


def test_large_objects_are_larger_than_small_ones(rows: list[dict]) -> None:
    sides = {(obj["size"], obj["box"][2] - obj["box"][0]) for r in rows for obj in r["objects"]}
    assert {size for size, _ in sides} == set(SIZES)
    small = max(side for size, side in sides if size == "small")
    large = min(side for size, side in sides if size == "large")
    assert small < large


def test_images_decode_as_rgb_of_image_size(dataset: tuple[Path, dict], rows: list[dict]) -> None:
    out, _ = dataset
    for path in {row["image"] for row in rows}:
        with Image.open(out / path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)


def test_objects_are_drawn_in_their_colour(dataset: tuple[Path, dict], rows: list[dict]) -> None:
    out, _ = dataset
    for row in rows[:30]:
        pixels = np.asarray(Image.open(out / row["image"]), dtype=float)
        for obj in row["objects"]:
            x0, y0, x1, y1 = obj["box"]
            centre = pixels[(y0 + y1) // 2 + 1, (x0 + x1) // 2]  # inside every shape
            distance = np.abs(centre - COLOUR_RGB[obj["colour"]]).max()
            assert distance < 40, (obj, centre)


def test_dataset_info_records_parameters_counts_and_baselines(
    dataset: tuple[Path, dict], rows: list[dict]
) -> None:
    out, info = dataset
    assert json.loads((out / "dataset_info.json").read_text()) == info
    assert info["seed"] == 3 and info["config"]["image_size"] == 64
    assert info["version"] == DATASET_VERSION
    for split, n_images in SMALL.items():
        split_rows = [r for r in rows if r["image_id"].startswith(f"{split}/")]
        assert info["splits"][split]["images"] == n_images
        assert info["splits"][split]["questions"] == len(split_rows)
        assert info["splits"][split]["majority_baseline"] == pytest.approx(
            majority_baseline(split_rows)
        )


# ------------------------------------------------------------------------------------------
# Answers and targets, recomputed from the objects


@pytest.mark.parametrize("family", QUESTION_TYPES)
def test_answer_recomputed_from_objects(many_questions: list[dict], family: str) -> None:
    questions = [q for q in many_questions if q["question_type"] == family]
    assert len(questions) > 500
    for question in questions:
        assert recompute(question, 64)[0] == question["answer"], question


@pytest.mark.parametrize("family", QUESTION_TYPES)
def test_targets_recomputed_from_objects(many_questions: list[dict], family: str) -> None:
    for question in (q for q in many_questions if q["question_type"] == family):
        assert recompute(question, 64)[1] == question["targets"], question


# A small red circle on the left and a large blue square on the right, 40 px apart.
HAND_WORKED_OBJECTS = [
    {"box": [4, 24, 14, 34], "shape": "circle", "colour": "red", "size": "small"},
    {"box": [40, 20, 58, 38], "shape": "square", "colour": "blue", "size": "large"},
]


@pytest.mark.parametrize(
    ("family", "question", "wrong", "right", "targets"),
    [
        ("colour", "what colour is the circle?", "blue", "red", [0]),
        ("shape", "what shape is the blue object?", "circle", "square", [1]),
        ("exist", "is there a green object?", "yes", "no", []),
        ("count", "how many objects are there?", "1", "2", [0, 1]),
        ("relate", "what colour is the object right of the circle?", "red", "blue", [0, 1]),
        ("compare", "is the circle the same size as the square?", "yes", "no", [0, 1]),
    ],
)
def test_checker_catches_a_wrong_answer(
    family: str, question: str, wrong: str, right: str, targets: list[int]
) -> None:
    """On a scene worked out by hand, the checker rejects a wrong answer and gives the right one."""
    row = {"question_type": family, "question": question, "answer": wrong}
    recomputed = recompute({**row, "objects": HAND_WORKED_OBJECTS}, 64)
    assert recomputed[0] != row["answer"]
    assert recomputed == (right, targets)


def test_written_rows_answers_recomputed_from_objects(rows: list[dict]) -> None:
    for row in rows:
        assert recompute(row, 64) == (row["answer"], row["targets"]), row


@pytest.mark.parametrize("image_size", [32, 45, 100])
def test_other_image_sizes_give_exact_answers(image_size: int) -> None:
    config = SyntheticConfig(image_size=image_size)
    for image, question_rows in generate_split(40, config, seed=1):
        assert image.size == (image_size, image_size)
        for row in question_rows:
            for x0, y0, x1, y1 in (obj["box"] for obj in row["objects"]):
                assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
            assert recompute(row, image_size) == (row["answer"], row["targets"])


@pytest.mark.parametrize("family", QUESTION_TYPES)
def test_ask_question_about_an_existing_scene(family: str) -> None:
    rng = np.random.default_rng(5)
    asked = 0
    for _ in range(30):
        objects = generate_scene(rng, SyntheticConfig(min_objects=3))
        question = ask_question(objects, family, rng)
        if question is not None:
            asked += 1
            assert recompute({**question, "objects": objects}, 64) == (
                question["answer"], question["targets"]
            )  # fmt: skip
    assert asked > 10


# ------------------------------------------------------------------------------------------
# Balance


@pytest.mark.parametrize("family", QUESTION_TYPES)
def test_majority_baseline_stays_near_chance(many_questions: list[dict], family: str) -> None:
    assert majority_baseline(many_questions)[family] <= MAJORITY_LIMITS[family]


@pytest.mark.parametrize("family", QUESTION_TYPES)
def test_every_answer_of_the_family_occurs(many_questions: list[dict], family: str) -> None:
    answers = {q["answer"] for q in many_questions if q["question_type"] == family}
    assert answers == set(answer_space()[family])


def test_families_are_sampled_evenly(many_questions: list[dict]) -> None:
    counts = [sum(q["question_type"] == f for q in many_questions) for f in QUESTION_TYPES]
    assert max(counts) / min(counts) < 1.2


def test_answers_are_level_within_each_wording(many_questions: list[dict]) -> None:
    """A blind model that knows the template and which attributes are named does no better."""
    names = "|".join(COLOURS + SHAPES + SIZES)
    by_wording: dict[tuple[str, str], list[str]] = {}
    for q in many_questions:
        wording = re.sub(rf"\b({names})(s?)\b", lambda m: "<word>" + m[2], q["question"])
        wording = re.sub(
            r"what (colour|shape) is the object", "what <asked> is the object", wording
        )
        by_wording.setdefault((q["question_type"], wording), []).append(q["answer"])
    checked = set()
    for (family, wording), answers in by_wording.items():
        if len(answers) >= 60 and family != "relate":
            top = max(answers.count(a) for a in set(answers)) / len(answers)
            assert top <= 1.5 / len(answer_space()[family]), (wording, top)
            checked.add(family)
    assert checked == set(QUESTION_TYPES) - {"relate"}, "too few questions to check a family"


def test_majority_baseline_counts_commonest_answer_per_family() -> None:
    rows = [{"question_type": "exist", "answer": a} for a in ("yes", "yes", "yes", "no")] + [
        {"question_type": "count", "answer": a} for a in ("1", "2", "2", "3")
    ]
    assert majority_baseline(rows) == {"count": 0.5, "exist": 0.75, "overall": 5 / 8}


def test_majority_baseline_of_no_rows_is_zero() -> None:
    assert majority_baseline([]) == {"overall": 0.0}


# ------------------------------------------------------------------------------------------
# Determinism


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "a", **SMALL, seed=4, progress=False)
    write_synthetic_dataset(tmp_path / "b", **SMALL, seed=4, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "a", train=5, val=0, test=0, seed=4, progress=False)
    write_synthetic_dataset(tmp_path / "b", train=5, val=0, test=0, seed=5, progress=False)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (
        tmp_path / "b" / "train.jsonl"
    ).read_bytes()


def test_splits_differ(rows: list[dict]) -> None:
    first = {
        split: tuple(r["question"] for r in rows if r["image_id"].startswith(f"{split}/"))[:10]
        for split in SMALL
    }
    assert len(set(first.values())) == len(SMALL)


def test_zero_noise_leaves_background_exact() -> None:
    config = SyntheticConfig(noise=0)
    rng = np.random.default_rng(0)
    assert np.all(np.asarray(render_scene([], config, rng)) == BACKGROUND_RGB)
    noisy = np.asarray(render_scene([], SyntheticConfig(noise=0.05), rng))
    assert noisy.std() > 5


# ------------------------------------------------------------------------------------------
# Atomic writes


def test_refuses_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic_dataset(tmp_path / "d", train=2, val=0, test=0, progress=False)
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_fills_existing_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_synthetic_dataset(tmp_path / "d", train=2, val=0, test=0, progress=False)
    assert (tmp_path / "d" / "train.jsonl").exists()


def test_overwrite_replaces_old_contents(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    write_synthetic_dataset(tmp_path / "d", train=2, val=0, test=0, overwrite=True, progress=False)
    assert not (tmp_path / "d" / "old.txt").exists()
    assert (tmp_path / "d" / "train.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_crash_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = []

    def render_then_crash(*args: object) -> Image.Image:
        if len(rendered) == 5:
            raise RuntimeError("crash after 5 images")
        rendered.append(1)
        return Image.new("RGB", (64, 64))

    monkeypatch.setattr(writer, "render_scene", render_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        write_synthetic_dataset(tmp_path / "d", train=10, val=0, test=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_crash_while_overwriting_keeps_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_dataset(tmp_path / "d", train=2, val=0, test=0, progress=False)
    before = _files(tmp_path / "d")

    def crash(*args: object) -> Image.Image:
        raise OSError("disk full")

    monkeypatch.setattr(writer, "render_scene", crash)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_dataset(
            tmp_path / "d", train=4, val=0, test=0, overwrite=True, progress=False
        )
    assert _files(tmp_path / "d") == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
