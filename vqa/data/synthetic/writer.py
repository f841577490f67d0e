"""The writer: whole splits generated, rendered and written to disk as a dataset.

Output: the local format of `vqa.data.formats`, that is ``{split}.jsonl`` rows whose ``image``
paths point into ``images/{split}/``, and ``dataset_info.json`` with the parameters and
majority baselines. Each row holds the question fields of `grammar.question_fields`, plus
``question_id``, ``image_id``, ``image`` and the image's ``objects``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vqa.files import staged_directory

from .config import (
    COLOURS,
    DATASET_VERSION,
    SHAPES,
    SIZES,
    SyntheticConfig,
    answer_space,
    check_int,
    supported_families,
)
from .planner import AnswerBalancer, generate_example
from .render import render_scene


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split: derived from (seed, split name), so splits differ."""
    check_int("seed", seed, 0)
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8"))])


def generate_split(
    n_images: int,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    split: str = "train",
    first_question_id: int = 0,
) -> Iterator[tuple[Image.Image, list[dict]]]:
    """Yield (image, rows) for `n_images` scenes of `split`, deterministically for `seed`.

    `rows` (never empty) are the dataset rows of the image, in the format of the module
    docstring, with question ids counting up from `first_question_id`.
    """
    config = config or SyntheticConfig()
    check_int("n_images", n_images, 0)
    rng = split_rng(seed, split)
    balancer = AnswerBalancer()
    question_id = first_question_id
    for index in range(n_images):
        objects, questions = generate_example(rng, config, balancer)
        image = render_scene(objects, config, rng)
        image_id = f"{split}/{index:06d}"
        rows = []
        for question in questions:
            rows.append({
                "question_id": question_id, "image_id": image_id,
                "image": f"images/{image_id}.png", "question": question["question"],
                "answer": question["answer"], "question_type": question["question_type"],
                "answer_type": question["answer_type"], "objects": objects,
                "targets": question["targets"],
            })  # fmt: skip
            question_id += 1
        yield image, rows


def majority_baseline(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy of always giving each family's most frequent answer, per family and overall.

    "overall" is the accuracy over all rows of a blind model that knows the family of each
    question and answers that family's most frequent answer.
    """
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(row["question_type"], Counter())[row["answer"]] += 1
    return _baseline(counts)


def _baseline(counts: Mapping[str, Counter[str]]) -> dict[str, float]:
    best = {family: c.most_common(1)[0][1] for family, c in counts.items()}
    result = {family: best[family] / counts[family].total() for family in sorted(counts)}
    total = sum(c.total() for c in counts.values())
    result["overall"] = sum(best.values()) / total if total else 0.0
    return result


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    *,
    train: int = 2000,
    val: int = 500,
    test: int = 500,
    config: SyntheticConfig | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synthetic dataset (`train`/`val`/`test` images per split) to `out_dir`.

    The dataset is written into a temporary sibling directory and moved into place at the
    end, so a crash never leaves a half-written dataset. Splits with 0 images are not
    written. Raises FileExistsError if `out_dir` exists and is not empty, unless `overwrite`.
    Returns the info dict also written to ``dataset_info.json``.
    """
    config = config or SyntheticConfig()
    sizes = {"train": train, "val": val, "test": test}
    for split, n in sizes.items():
        check_int(split, n, 0)
    check_int("seed", seed, 0)
    with staged_directory(out_dir, overwrite) as staging:
        info = _dataset_info(config, seed)
        info["splits"] = _write_splits(staging, sizes, config, seed, progress)
        (staging / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _dataset_info(config: SyntheticConfig, seed: int) -> dict[str, Any]:
    return {
        "name": "synthetic-scenes",
        "generator": __package__,  # "vqa.data.synthetic", the name its users import
        "version": DATASET_VERSION,
        "seed": seed,
        "config": asdict(config),
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "question_types": list(supported_families(config)),
        "answers": {family: list(a) for family, a in answer_space(config).items()},
    }


def _write_splits(
    root: Path, sizes: Mapping[str, int], config: SyntheticConfig, seed: int, progress: bool
) -> dict[str, Any]:
    """Write every non-empty split under `root`; return per-split counts and baselines."""
    splits: dict[str, Any] = {}
    first_question_id = 0
    for split, n_images in sizes.items():
        if n_images == 0:
            continue
        counts = _write_split(root, n_images, config, seed, split, first_question_id, progress)
        n_questions = sum(c.total() for c in counts.values())
        first_question_id += n_questions
        splits[split] = {
            "images": n_images,
            "questions": n_questions,
            "majority_baseline": _baseline(counts),
            "answer_counts": {f: dict(sorted(counts[f].items())) for f in sorted(counts)},
        }
    return splits


def _write_split(
    root: Path,
    n_images: int,
    config: SyntheticConfig,
    seed: int,
    split: str,
    first_question_id: int,
    progress: bool,
) -> dict[str, Counter[str]]:
    """Write one split's images and jsonl; return its answer counts per family."""
    (root / "images" / split).mkdir(parents=True)
    counts: dict[str, Counter[str]] = {}
    examples = generate_split(n_images, config, seed, split, first_question_id)
    with open(root / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as jsonl:
        for image, rows in _progress(examples, n_images, split, progress):
            image.save(root / rows[0]["image"], format="PNG", optimize=False, compress_level=1)
            for row in rows:
                jsonl.write(json.dumps(row) + "\n")
                counts.setdefault(row["question_type"], Counter())[row["answer"]] += 1
    return counts


def _progress(items: Iterable[Any], total: int, split: str, enabled: bool) -> Iterable[Any]:
    """`items` wrapped in a tqdm bar when enabled and tqdm is installed."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=f"synthetic {split}", unit="image")
