"""The official VQA v1/v2 files (visualqa.org): questions JSON + annotations JSON + COCO images.

One split is a ``VQAFiles``: the questions file (``{"data_subtype": "val2014", "questions":
[{"image_id", "question", "question_id"}]}``), its annotations file (``{"annotations":
[{"question_id", "question_type", "answer_type", "answers": [{"answer", ...}] * 10}]}``;
absent for test-dev) and the image directory, whose files are named
``COCO_{subtype}_{image_id:012d}.jpg`` (as in the COCO 2014/2015 zips) or ``{image_id:012d}.jpg``
(COCO 2017). A split becomes common rows (see :mod:`vqa.data.formats`) whose ``answers`` are
the human answers, or ``[]`` without annotations.

``--data`` may name the files in two ways:
- a directory holding them under their official names
  (``v2_OpenEnded_mscoco_val2014_questions.json``, ``v2_mscoco_val2014_annotations.json``; v1
  without ``v2_``) with the images in ``val2014/`` or ``images/val2014/`` beside them; the
  split is the subtype without its year (``val``);
- a JSON spec file: ``{"train": {"questions": Q, "annotations": A, "images": DIR}, ...}``,
  paths relative to the spec file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from vqa.data.formats import COMMON_FEATURES, DatasetFormatError

QUESTIONS_NAME = re.compile(
    r"^(?P<version>v2_)?OpenEnded_mscoco_(?P<subtype>[\w-]+)_questions\.json$"
)


@dataclass(frozen=True)
class VQAFiles:
    """The files of one split: questions, annotations (None for test-dev) and images."""

    questions: Path
    annotations: Path | None
    images: Path


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; DatasetFormatError naming the file, line and column if not."""
    try:
        with path.open(encoding="utf-8") as file:
            value = json.load(file)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such file") from None
    except json.JSONDecodeError as error:
        where = f"{path}:{error.lineno}:{error.colno}"
        raise DatasetFormatError(f"{where}: malformed JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def entries(document: dict, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    """``document[key]``: a list of objects that all have ``fields``; errors name the entry."""
    items = document.get(key)
    if not isinstance(items, list):
        raise DatasetFormatError(f"{path}: no {key!r} list (not an official VQA {key} file?)")
    for index, item in enumerate(items):
        missing = [field for field in fields if not isinstance(item, dict) or field not in item]
        if missing:
            raise DatasetFormatError(f"{path}: {key}[{index}] has no {', '.join(missing)}")
    return items


def image_file(images: Path, subtype: str, image_id: int) -> Path | None:
    """The image of ``image_id`` under ``images``, by COCO naming; None if there is none."""
    # test-dev2015 is a subset of test2015 and its images carry the test2015 name.
    subtypes = [subtype, "test2015"] if subtype.startswith("test-dev") else [subtype]
    names = [f"COCO_{name}_{image_id:012d}.jpg" for name in subtypes] + [f"{image_id:012d}.jpg"]
    return next((images / name for name in names if (images / name).is_file()), None)


def answers_by_question(path: Path) -> dict[int, dict]:
    """The annotations file as {question_id: annotation}, each answer list checked."""
    annotations = entries(read_json(path), "annotations", path, ("question_id", "answers"))
    by_id = {}
    for index, annotation in enumerate(annotations):
        answers = annotation["answers"]
        if not isinstance(answers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers
        ):
            raise DatasetFormatError(
                f"{path}: annotations[{index}] (question_id {annotation['question_id']}): "
                "'answers' must be a list of {\"answer\": str, ...} objects"
            )
        by_id[annotation["question_id"]] = annotation
    return by_id


def vqa_rows(files: VQAFiles) -> tuple[str, list[dict]]:
    """The questions' data subtype and their rows: local-format fields, ``image`` absolute.

    Raises:
        DatasetFormatError: malformed JSON (file:line:column), an entry without a field, a
            question without an annotation, or a missing image (question id and path).
    """
    document = read_json(files.questions)
    questions = entries(
        document, "questions", files.questions, ("image_id", "question", "question_id")
    )
    subtype = str(document.get("data_subtype") or files.images.name)
    annotations = answers_by_question(files.annotations) if files.annotations else {}
    rows = []
    for question in questions:
        qid = question["question_id"]
        if files.annotations and qid not in annotations:
            raise DatasetFormatError(f"{files.annotations}: no annotation for question_id {qid}")
        image = image_file(files.images, subtype, int(question["image_id"]))
        if image is None:
            expected = files.images / f"COCO_{subtype}_{int(question['image_id']):012d}.jpg"
            raise DatasetFormatError(
                f"{files.questions}: question_id {qid}: image {expected} not found"
            )
        annotation = annotations.get(qid, {})
        rows.append(
            {
                "image": str(image),
                "question": question["question"],
                "answers": [answer["answer"] for answer in annotation.get("answers", [])],
                "question_type": annotation.get("question_type") or "all",
                "answer_type": annotation.get("answer_type") or "all",
                "question_id": int(qid),
            }
        )
    return subtype, rows


def common_rows(rows: list[dict]) -> Dataset:
    """Rows from :func:`vqa_rows` as a Dataset of common rows (no target boxes)."""
    fields = ("question", "answers", "question_type", "answer_type", "question_id")
    columns = {name: [row[name] for row in rows] for name in fields}
    columns["image_path"] = [row["image"] for row in rows]
    columns["image"] = [{"path": row["image"], "bytes": None} for row in rows]
    columns["targets"] = columns["target_boxes"] = [[] for _ in rows]
    columns["objects_json"] = ["[]" for _ in rows]
    return Dataset.from_dict(columns, features=COMMON_FEATURES)


def split_of(subtype: str) -> str:
    """The split of a data subtype: ``train2014`` -> ``train``, ``test-dev2015`` -> ``test-dev``."""
    return re.sub(r"\d+$", "", subtype)


def discover(directory: Path) -> dict[str, VQAFiles]:
    """The official files in ``directory``, by their official names, per split ({} if none)."""
    found = {}
    for questions in sorted(directory.glob("*.json")):
        match = QUESTIONS_NAME.match(questions.name)
        if not match:
            continue
        subtype = match["subtype"]
        annotations = directory / f"{match['version'] or ''}mscoco_{subtype}_annotations.json"
        image_subtype = "test2015" if subtype.startswith("test-dev") else subtype
        images = next(
            (
                path
                for path in (directory / image_subtype, directory / "images" / image_subtype)
                if path.is_dir()
            ),
            directory / image_subtype,
        )
        found[split_of(subtype)] = VQAFiles(
            questions, annotations if annotations.is_file() else None, images
        )
    return found


def read_spec(path: Path) -> dict[str, VQAFiles]:
    """A spec file ``{split: {"questions", "annotations"?, "images"}}``; paths relative to it."""
    spec = read_json(path)
    files = {}
    for split, entry in spec.items():
        if not isinstance(entry, dict) or not {"questions", "images"} <= set(entry):
            raise DatasetFormatError(
                f"{path}: split {split!r} must be an object with 'questions', 'images' "
                "and optionally 'annotations'"
            )
        annotations = entry.get("annotations")
        files[split] = VQAFiles(
            path.parent / entry["questions"],
            path.parent / annotations if annotations else None,
            path.parent / entry["images"],
        )
    return files


def vqa_sources(source: Path) -> dict[str, VQAFiles]:
    """The VQA files that ``source`` (a directory or a spec file) names, per split; {} if none."""
    if source.is_dir():
        return discover(source)
    if source.is_file() and source.suffix == ".json":
        return read_spec(source)
    return {}


def load_vqa_files(source: str | Path, splits: list[str] | None = None) -> DatasetDict:
    """Read the official VQA files that ``source`` names (see the module docstring).

    Raises:
        FileNotFoundError: ``source`` names no VQA files.
        ValueError: a requested split is not there (the message lists those that are).
        DatasetFormatError: see :func:`vqa_rows`.
    """
    source = Path(source)
    files = vqa_sources(source)
    if not files:
        raise FileNotFoundError(f"{source} holds no official VQA questions file")
    splits = splits or sorted(files)
    missing = [split for split in splits if split not in files]
    if missing:
        raise ValueError(f"split(s) {missing} not in {source}; it has {sorted(files)}")
    return DatasetDict({split: common_rows(vqa_rows(files[split])[1]) for split in splits})


def local_row(row: dict, images_link: str) -> dict:
    """A row of :func:`vqa_rows` as a local-format JSON object, its image under ``images_link``."""
    return {**row, "image": f"{images_link}/{Path(row['image']).name}"}


def convert_vqa(
    files: VQAFiles, out: str | Path, *, split: str | None = None, overwrite: bool = False
) -> dict:
    """Write one split of the official files into the local format in ``out``, atomically.

    ``out/<split>.jsonl`` gets one line per question; ``out/images/<split>`` is a relative
    symbolic link to ``files.images`` (no image is copied). Everything is written into a
    staging directory beside ``out`` first and moved in place only when complete, so a failed
    conversion leaves nothing behind. Other splits already in ``out`` are kept.

    Args:
        split: the split name (default: from the questions' data subtype, ``val2014`` -> ``val``).
        overwrite: replace this split if ``out`` already has it.

    Returns:
        {"split", "questions", "images", "out"}.
    """
    subtype, rows = vqa_rows(files)
    if not rows:
        raise DatasetFormatError(f"{files.questions}: the dataset is empty (no questions)")
    split = split or split_of(subtype)
    out = Path(out)
    targets = [out / f"{split}.jsonl", out / "images" / split]
    if not overwrite and any(os.path.lexists(path) for path in targets):
        raise FileExistsError(f"{out} already has split {split!r}; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (staging / "images").mkdir()
        # Relative to out/images, which sits at the same depth as staging/images.
        link = os.path.relpath(files.images.resolve(), out.parent.resolve() / out.name / "images")
        (staging / "images" / split).symlink_to(link, target_is_directory=True)
        with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as jsonl:
            for row in rows:
                jsonl.write(json.dumps(local_row(row, f"images/{split}")) + "\n")
        if not out.exists():
            os.replace(staging, out)
        else:
            (out / "images").mkdir(exist_ok=True)
            os.replace(staging / "images" / split, out / "images" / split)
            os.replace(staging / f"{split}.jsonl", out / f"{split}.jsonl")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"split": split, "questions": len(rows), "images": str(files.images), "out": str(out)}
