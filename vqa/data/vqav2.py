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

At VQAv2's size (443,757 training questions; an annotations file of about 330 MB) reading the
files takes a while, so :func:`load_vqa_files` converts each split once into an Arrow file in a
cache directory (``$HYBRID_VQA_CACHE/vqa-files``, see :func:`default_cache_dir`) and
memory-maps it from there afterwards, until one of the files changes. The files are read in
chunks, one entry at a time (:mod:`vqa.data.json_stream`), so the whole text and its parsed
tree never sit in memory together. Images are only looked up by name here, never opened.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict
from datasets.arrow_writer import ArrowWriter
from datasets.utils.tqdm import tqdm

from vqa.data.formats import COMMON_FEATURES, DatasetFormatError
from vqa.data.json_stream import checked_entries, read_json, stream_entries

logger = logging.getLogger(__name__)

QUESTIONS_NAME = re.compile(
    r"^(?P<version>v2_)?OpenEnded_mscoco_(?P<subtype>[\w-]+)_questions\.json$"
)
CACHE_ENV = "HYBRID_VQA_CACHE"
CACHE_VERSION = 1  # bump when the rows a split converts to change: older caches are then unused
ROWS_FILE = "rows.arrow"  # in each cached split: its common rows
SOURCE_FILE = "source.json"  # and what they were converted from
BATCH_ROWS = 10_000  # rows converted into Arrow at a time, and rows per record batch


@dataclass(frozen=True)
class VQAFiles:
    """The files of one split: questions, annotations (None for test-dev) and images."""

    questions: Path
    annotations: Path | None
    images: Path


def image_names(images: Path) -> set[str]:
    """The file names in the image directory (empty if there is none), listed once per split."""
    try:
        return set(os.listdir(images))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def image_file(images: Path, names: set[str], subtype: str, image_id: int) -> Path | None:
    """The image of ``image_id`` among ``names`` in ``images``, by COCO naming; None if absent."""
    # test-dev2015 is a subset of test2015 and its images carry the test2015 name.
    subtypes = [subtype, "test2015"] if subtype.startswith("test-dev") else [subtype]
    candidates = [f"COCO_{name}_{image_id:012d}.jpg" for name in subtypes]
    candidates.append(f"{image_id:012d}.jpg")
    return next((images / name for name in candidates if name in names), None)


def answers_by_question(path: Path) -> dict[int, tuple[str, str, tuple[str, ...]]]:
    """The annotations file as {question_id: (question_type, answer_type, answers)}, checked.

    The same few strings recur millions of times (VQAv2 train: 4.4 million answers, mostly
    "yes", "no" and small numbers), so each distinct string is kept once.
    """
    strings: dict[str, str] = {}

    def shared(text: str) -> str:
        return strings.setdefault(text, text)

    by_id = {}
    fields = ("question_id", "answers")
    for index, annotation in enumerate(checked_entries(path, "annotations", fields, {})):
        answers = annotation["answers"]
        if not isinstance(answers, list) or not all(
            isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers
        ):
            raise DatasetFormatError(
                f"{path}: annotations[{index}] (question_id {annotation['question_id']}): "
                "'answers' must be a list of {\"answer\": str, ...} objects"
            )
        by_id[annotation["question_id"]] = (
            shared(annotation.get("question_type") or "all"),
            shared(annotation.get("answer_type") or "all"),
            tuple(shared(answer["answer"]) for answer in answers),
        )
    return by_id


def data_subtype(files: VQAFiles) -> str:
    """The questions file's ``data_subtype`` (read up to it), else the image directory's name."""
    header: dict = {}
    for _ in stream_entries(files.questions, "questions", header):
        if "data_subtype" in header:
            break  # the official files have it before the questions: nothing more is read
    return str(header.get("data_subtype") or files.images.name)


def vqa_rows(files: VQAFiles, subtype: str) -> Iterator[dict]:
    """The rows of one split, one question at a time: local-format fields, ``image`` absolute.

    Raises:
        DatasetFormatError: malformed JSON (file:line:column), an entry without a field, a
            question without an annotation, or a missing image (question id and path).
    """
    annotations = answers_by_question(files.annotations) if files.annotations else {}
    names = image_names(files.images)
    paths: dict[int, str] = {}  # image_id -> path, one string for the questions about an image
    fields = ("image_id", "question", "question_id")
    for question in checked_entries(files.questions, "questions", fields, {}):
        qid, image_id = question["question_id"], int(question["image_id"])
        if files.annotations and qid not in annotations:
            raise DatasetFormatError(f"{files.annotations}: no annotation for question_id {qid}")
        if image_id not in paths:
            image = image_file(files.images, names, subtype, image_id)
            if image is None:
                expected = files.images / f"COCO_{subtype}_{image_id:012d}.jpg"
                raise DatasetFormatError(
                    f"{files.questions}: question_id {qid}: image {expected} not found"
                )
            paths[image_id] = str(image)
        question_type, answer_type, answers = annotations.get(qid, ("all", "all", ()))
        yield {
            "image": paths[image_id],
            "question": question["question"],
            "answers": list(answers),
            "question_type": question_type,
            "answer_type": answer_type,
            "question_id": int(qid),
        }


def common_columns(rows: list[dict]) -> dict[str, list]:
    """Rows from :func:`vqa_rows` as columns of common rows (no target boxes)."""
    fields = ("question", "answers", "question_type", "answer_type", "question_id")
    columns = {name: [row[name] for row in rows] for name in fields}
    columns["image_path"] = [row["image"] for row in rows]
    columns["image"] = [{"path": row["image"], "bytes": None} for row in rows]
    columns["targets"] = columns["target_boxes"] = [[] for _ in rows]
    columns["objects_json"] = ["[]" for _ in rows]
    return columns


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


def default_cache_dir() -> Path:
    """Where converted splits go: ``vqa-files/`` in the toolkit's cache.

    That is ``$HYBRID_VQA_CACHE``, else ``$XDG_CACHE_HOME/hybrid-vqa``, else
    ``~/.cache/hybrid-vqa`` (the rule of ``vqa.cache.cache_dir``): a local, writable disk,
    where the official files often sit on shared, read-only storage.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "vqa-files"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "hybrid-vqa" / "vqa-files"


def file_identity(path: Path | None) -> list | None:
    """[absolute path, size, mtime in ns] of ``path``; None where there is no such path.

    A change to any of them makes a new cache entry. For the image directory the mtime
    changes when images are added, removed or renamed, which may change the paths found.
    """
    try:
        stat = path.stat() if path is not None else None
    except FileNotFoundError:
        stat = None
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns] if stat else None


def cache_source(files: VQAFiles) -> dict:
    """What a cached split is converted from; its hash names the cache entry."""
    return {
        "version": CACHE_VERSION,
        "questions": file_identity(files.questions),
        "annotations": file_identity(files.annotations),
        "images": file_identity(files.images),
    }


def write_rows(files: VQAFiles, path: Path) -> None:
    """Write the common rows of one split into the Arrow file ``path``, a batch at a time.

    Images stay paths: ``save_to_disk`` would copy every image file into the Arrow file.
    """
    rows = vqa_rows(files, data_subtype(files))
    progress = tqdm(desc=f"Converting {files.questions.name}", unit=" questions")
    # Record batches of BATCH_ROWS rather than the 100 rows datasets picks for image columns:
    # opening a file of many small batches reads every batch's header, most of the file.
    writer = ArrowWriter(features=COMMON_FEATURES, path=str(path), writer_batch_size=BATCH_ROWS)
    with progress, writer:
        while batch := list(itertools.islice(rows, BATCH_ROWS)):
            writer.write_batch(common_columns(batch))
            progress.update(len(batch))
        writer.finalize()


def write_cache(files: VQAFiles, directory: Path, source: dict) -> None:
    """Convert one split into ``directory``, atomically.

    The split is written into a staging directory beside it and renamed into place once
    complete, so ``directory`` either does not exist or holds a whole conversion: a crash
    leaves only a staging directory (``.<name>.partial-*``), which readers ignore. When two
    processes convert at once the first rename wins and the other's copy is dropped.
    """
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    except PermissionError as error:
        raise PermissionError(
            f"cannot convert the VQA files into {directory.parent} ({error}): set {CACHE_ENV} "
            "to a writable directory"
        ) from error
    try:
        write_rows(files, staging / ROWS_FILE)
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, directory)
        except OSError:
            if not directory.is_dir():
                raise
            logger.info("%s was converted by another process meanwhile: using it", directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cached_split(files: VQAFiles, cache_dir: Path) -> Dataset:
    """The common rows of one split, converted into ``cache_dir`` on first use, memory-mapped.

    The cache entry is named by the questions file and a hash of :func:`cache_source`: the
    files' absolute paths, sizes and modification times and :data:`CACHE_VERSION`, so a
    changed file is converted again and an unchanged one is not read at all.
    """
    source = cache_source(files)
    digest = hashlib.sha256(json.dumps(source).encode()).hexdigest()[:16]
    directory = cache_dir / f"{files.questions.stem}-{digest}"
    if not directory.is_dir():
        logger.info("Converting %s into %s; later loads reuse it", files.questions, directory)
        write_cache(files, directory, source)
    return Dataset.from_file(str(directory / ROWS_FILE))


def load_vqa_files(
    source: str | Path, splits: list[str] | None = None, *, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Read the official VQA files that ``source`` names (see the module docstring).

    Only the requested splits' files are read. Each is converted on first use into an Arrow
    file under ``cache_dir`` and memory-mapped from there (see :func:`cached_split`).

    Args:
        source: a directory with the files under their official names, or a JSON spec file.
        splits: which splits to read (default: all there are).
        cache_dir: where converted splits are kept (default: :func:`default_cache_dir`).

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
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return DatasetDict({split: cached_split(files[split], cache_dir) for split in splits})


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
    subtype = data_subtype(files)
    split = split or split_of(subtype)
    out = Path(out)
    targets = [out / f"{split}.jsonl", out / "images" / split]
    if not overwrite and any(os.path.lexists(path) for path in targets):
        raise FileExistsError(f"{out} already has split {split!r}; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        count = 0
        with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as jsonl:
            for row in vqa_rows(files, subtype):
                jsonl.write(json.dumps(local_row(row, f"images/{split}")) + "\n")
                count += 1
        if not count:
            raise DatasetFormatError(f"{files.questions}: the dataset is empty (no questions)")
        (staging / "images").mkdir()
        # Relative to out/images, which sits at the same depth as staging/images.
        link = os.path.relpath(files.images.resolve(), out.parent.resolve() / out.name / "images")
        (staging / "images" / split).symlink_to(link, target_is_directory=True)
        if not out.exists():
            os.replace(staging, out)
        else:
            (out / "images").mkdir(exist_ok=True)
            os.replace(staging / "images" / split, out / "images" / split)
            os.replace(staging / f"{split}.jsonl", out / f"{split}.jsonl")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"split": split, "questions": count, "images": str(files.images), "out": str(out)}
