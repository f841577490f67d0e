"""Write the easy-VQA dataset in the local format, to train and benchmark on a public dataset.

    pip install easy-vqa            # the dataset's package (MIT): 5,000 images, 3 MB
    python scripts/prepare_easy_vqa.py data/easy-vqa
    python scripts/bench_train.py --data data/easy-vqa --modes hybrid --peer --epochs 5

easy-VQA (github.com/vzhou842/easy-VQA) is the dataset of the tutorial that ``vqa.peer``
reproduces: 64 px images of one shape (circle, rectangle or triangle, in one of 7 colours) on a
pale background, 13 answers, questions about the shape, its colour and whether a shape or colour
is there (often negated: "is there not a red shape?"). It has no boxes, so ``vqa train`` trains
on it from the answers alone.

The package has a train split (4,000 images, 38,575 questions) and a test split (1,000 images,
9,673 questions). This writes ``train.jsonl`` and ``val.jsonl`` from the train split, the images
with ids of ``--val-from`` and above (the last 400 of 4,000 by default) going to val, and
``test.jsonl`` from the test split; images are copied under ``images/``. Each row's
``question_type`` is what its answer is: ``shape``, ``color``, or a yes/no question about a
shape (``yes/no shape``) or a colour (``yes/no color``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from vqa.files import staged_directory

SHAPES = ("circle", "rectangle", "triangle")


def package_data() -> Path:
    """The ``data`` directory of the installed ``easy_vqa`` package."""
    try:
        import easy_vqa
    except ImportError as error:
        raise SystemExit("easy-VQA is not installed: pip install easy-vqa") from error
    return Path(easy_vqa.__file__).parent / "data"


def question_type(question: str, answer: str) -> str:
    """``shape``, ``color``, ``yes/no shape`` or ``yes/no color``: what the question asks."""
    if answer in SHAPES:
        return "shape"
    if answer not in ("yes", "no"):
        return "color"
    return "yes/no shape" if any(shape in question for shape in SHAPES) else "yes/no color"


def split_rows(source: Path, split: str, val_from: int | None) -> dict[str, list[dict]]:
    """The rows of one split of the package, by the local split they go to."""
    rows: dict[str, list[dict]] = {}
    questions = json.loads((source / split / "questions.json").read_text())
    for line, entry in enumerate(questions, start=1):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and all(isinstance(text, str) for text in entry[:2])
            and isinstance(entry[2], int)
        ):
            raise ValueError(
                f"{source / split / 'questions.json'}: entry {line} is not "
                f"[question, answer, image id]: {entry!r}"
            )
        question, answer, image_id = entry
        target = "val" if val_from is not None and image_id >= val_from else split
        rows.setdefault(target, []).append(
            {
                "image": f"images/{split}-{image_id}.png",
                "question": question,
                "answer": answer,
                "question_type": question_type(question, answer),
            }
        )
    return rows


def write_easy_vqa(
    source: Path, out: Path, val_from: int = 3600, overwrite: bool = False
) -> dict[str, int]:
    """Write the local format of ``source`` (the package's data) into ``out``; questions per
    split. The directory appears complete or not at all; an existing one is replaced only
    with ``overwrite``."""
    counts = {}
    with staged_directory(out, overwrite=overwrite) as staging:
        (staging / "images").mkdir()
        for split in ("train", "test"):
            for image in sorted((source / split / "images").glob("*.png")):
                shutil.copyfile(image, staging / "images" / f"{split}-{image.name}")
            rows = split_rows(source, split, val_from if split == "train" else None)
            for name, local_rows in rows.items():
                lines = "".join(json.dumps(row) + "\n" for row in local_rows)
                (staging / f"{name}.jsonl").write_text(lines)
                counts[name] = len(local_rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the dataset directory to write")
    parser.add_argument(
        "--source", type=Path, help="easy-VQA's data directory (default: the installed package's)"
    )
    parser.add_argument(
        "--val-from",
        type=int,
        default=3600,
        help="training images with this id and above form the val split",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args()
    counts = write_easy_vqa(args.source or package_data(), args.out, args.val_from, args.overwrite)
    print(json.dumps({"out": str(args.out), "questions": counts}))


if __name__ == "__main__":
    main()
