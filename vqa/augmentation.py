"""Training augmentation that keeps every answer true: mirroring with its words, and shifting.

A VQA augmentation must not change what the image says about the question. Colour jitter can
turn red into orange and a crop can cut an object out of a count, so neither is here. What is:

* **mirror**: the image is flipped left to right, and in its questions and answers every
  left-right word is swapped (``MIRROR_WORDS``: "the object left of the square" becomes "the
  object right of the square"), so a spatial question stays true. Target boxes and object
  boxes are flipped too. It is for data whose "left" and "right" are directions: text, clocks
  and arrows in an image do not survive a mirror, and in "how many slices are left?" the word
  is no direction, so leave it off for such data (VQAv2 has both).
* **shift**: the image content moves by up to ``max_shift`` of the image side, within the
  empty margin around it, so nothing leaves the frame and no count or relation changes. The
  margin is the border around every pixel that differs from the background (the median
  colour of the image's edge) and every known box. The image is rolled rather than padded, so
  only background wraps round and its noise stays. An image whose edge is not one colour
  (most photographs) has no empty margin and is not shifted; one with a plain border (a sky,
  a studio backdrop) is, within that border.

Each image's draw depends only on (seed, epoch, the image's path inside the dataset), so a
run is the same with any number of DataLoader workers, when it resumes mid-epoch, and when
the dataset lies elsewhere.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MIRROR_WORDS = {
    "left": "right",
    "right": "left",
    "leftmost": "rightmost",
    "rightmost": "leftmost",
    "lefthand": "righthand",
    "righthand": "lefthand",
}
_MIRROR_PATTERN = re.compile(r"\b(" + "|".join(MIRROR_WORDS) + r")\b", re.IGNORECASE)
# How far (0-255, in any channel) a pixel must be from the background colour to be content:
# after a 3x3 median filter that removes pixel noise, or without it for thin lines that the
# filter would wipe out, where only a larger difference counts.
BACKGROUND_TOLERANCE = 48
LINE_TOLERANCE = 96


def mirror_text(text: str) -> str:
    """``text`` with every left-right word swapped, keeping its case ("Left" -> "Right")."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        mirrored = MIRROR_WORDS[word.lower()]
        if word.isupper():
            return mirrored.upper()
        return mirrored.capitalize() if word[0].isupper() else mirrored

    return _MIRROR_PATTERN.sub(swap, text)


def mirror_answers(answers: str | Sequence[str]) -> str | list[str]:
    """A row's answer, or list of answers, with every left-right word swapped."""
    if isinstance(answers, str):
        return mirror_text(answers)
    return [mirror_text(answer) for answer in answers]


def content_box(
    image: Image.Image, boxes: Sequence[Sequence[float]] = ()
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), x1 and y1 exclusive: the smallest box around every pixel that differs
    from the background (the median colour of the edge pixels) and around ``boxes``.

    A 3x3 median filter first removes pixel noise (``BACKGROUND_TOLERANCE``), and the box
    keeps a pixel more on each side for the tips that it wears off; a line too thin for the
    filter counts where it differs by ``LINE_TOLERANCE``. An image with no background (a
    photograph) gives its own frame, and so does one of background only without ``boxes``.
    """
    rgb = image.convert("RGB")
    filtered = np.asarray(rgb.filter(ImageFilter.MedianFilter(3)), dtype=np.int16)  # (H, W, 3)
    edge = np.concatenate([filtered[0], filtered[-1], filtered[:, 0], filtered[:, -1]])  # (P, 3)
    background = np.median(edge, axis=0)  # (3,)
    raw = np.asarray(rgb, dtype=np.int16)
    differs = (np.abs(filtered - background) > BACKGROUND_TOLERANCE).any(axis=-1)  # (H, W)
    differs |= (np.abs(raw - background) > LINE_TOLERANCE).any(axis=-1)
    height, width = differs.shape
    extents = [
        (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)) for x0, y0, x1, y1 in boxes
    ]
    if differs.any():
        rows, columns = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
        # one pixel more on each side: the median filter wears a pixel off thin tips
        extents.append((columns[0] - 1, rows[0] - 1, columns[-1] + 2, rows[-1] + 2))
    if not extents:
        return (0, 0, width, height)
    corners = np.array(extents)  # (E, 4)
    x0, y0 = (int(v) for v in corners[:, :2].min(axis=0))
    x1, y1 = (int(v) for v in corners[:, 2:].max(axis=0))
    return (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))


def move_box(box: Sequence[float], width: int, mirror: bool, dx: int, dy: int) -> list[float]:
    """[x0, y0, x1, y1] after a mirror of an image ``width`` wide (if ``mirror``), then a shift."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if mirror:
        x0, x1 = width - x1, width - x0
    return [x0 + dx, y0 + dy, x1 + dx, y1 + dy]


@dataclass(frozen=True)
class Augmentation:
    """Answer-preserving training augmentation (see the module docstring).

    Attributes:
        mirror: flip half of the images left to right, with their left-right words.
        max_shift: the largest shift, as a share of the image side (0 for none).
        seed: the run's seed; with the epoch and the image path it decides each draw.
        root: the dataset's directory: an image path inside it counts relative to it, so
            that the draws do not depend on where the dataset lies.
    """

    mirror: bool = False
    max_shift: float = 0.0
    seed: int = 0
    root: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_shift < 0.5:
            raise ValueError(f"max_shift must be in [0, 0.5), got {self.max_shift!r}")

    @property
    def active(self) -> bool:
        """Whether it changes anything: a mirror, or a shift of more than 0."""
        return self.mirror or self.max_shift > 0

    def __call__(
        self, image: Image.Image, rows: Sequence[dict], epoch: int
    ) -> tuple[Image.Image, list[dict]]:
        """One RGB image and the rows that ask about it -> both augmented by one draw.

        ``rows`` are common-format rows (``vqa.data.formats``); the returned rows are copies
        whose question, answers, ``target_boxes`` and ``objects_json`` boxes follow the image.
        """
        draw = random.Random(f"{self.seed}/{epoch}/{self.image_key(rows[0]['image_path'])}")
        mirror = self.mirror and draw.random() < 0.5
        objects = [json.loads(row["objects_json"]) for row in rows]
        boxes = [box for row in rows for box in row["target_boxes"]]
        boxes += [obj["box"] for row_objects in objects for obj in row_objects if "box" in obj]
        width = image.width
        if mirror:
            image = ImageOps.mirror(image)
            boxes = [move_box(box, width, True, 0, 0) for box in boxes]
        dx, dy = self._shift(image, boxes, draw)
        if not (mirror or dx or dy):
            return image, list(rows)
        if dx or dy:
            image = Image.fromarray(np.roll(np.asarray(image), (dy, dx), axis=(0, 1)))

        def move(box: Sequence[float]) -> list[float]:
            return move_box(box, width, mirror, dx, dy)

        text = mirror_text if mirror else str
        moved = []
        for row, row_objects in zip(rows, objects, strict=True):
            for obj in row_objects:
                if "box" in obj:
                    obj["box"] = move(obj["box"])
            moved.append(
                {
                    **row,
                    "question": text(row["question"]),
                    "answers": mirror_answers(row["answers"]) if mirror else row["answers"],
                    "target_boxes": [move(box) for box in row["target_boxes"]],
                    "objects_json": json.dumps(row_objects),
                }
            )
        return image, moved

    def image_key(self, path: str) -> str:
        """``path`` relative to ``root`` where it lies inside it, else ``path`` itself."""
        if self.root is not None and Path(path).is_relative_to(self.root):
            return Path(path).relative_to(self.root).as_posix()
        return path

    def _shift(
        self, image: Image.Image, boxes: Sequence[Sequence[float]], draw: random.Random
    ) -> tuple[int, int]:
        """(dx, dy) in pixels: uniform within the empty margin, at most ``max_shift``."""
        if self.max_shift <= 0:
            return 0, 0
        x0, y0, x1, y1 = content_box(image, boxes)
        limit_x = int(self.max_shift * image.width)
        limit_y = int(self.max_shift * image.height)
        dx = draw.randint(-min(x0, limit_x), min(image.width - x1, limit_x))
        dy = draw.randint(-min(y0, limit_y), min(image.height - y1, limit_y))
        return dx, dy
