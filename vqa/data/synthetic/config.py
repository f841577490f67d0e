"""The generator's vocabulary (shapes, colours, sizes, question families) and its parameters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
QUESTION_TYPES = ("colour", "shape", "exist", "count", "relate", "compare")
RELATIONS = ("left of", "right of", "above", "below")
ANSWER_TYPES = {
    "colour": "other", "shape": "other", "exist": "yes/no",
    "count": "number", "relate": "other", "compare": "yes/no",
}  # fmt: skip
YES_NO = ("yes", "no")
MAX_OBJECTS = 6
MAX_COUNT = 5
# Part of the cache key of the embedded dataset: bump it whenever the generated data changes.
DATASET_VERSION = 1

# Phrase order of the attributes in a description: "small red circle".
ATTRIBUTE_ORDER = ("size", "colour", "shape")
VALUES = {"size": SIZES, "colour": COLOURS, "shape": SHAPES}

Description = Mapping[str, str]  # attribute -> value, e.g. {"colour": "red", "shape": "circle"}
Point = tuple[float, float]  # (x, y) in pixels
Box = list[int]  # [x0, y0, x1, y1] in pixels, x1 and y1 exclusive
SceneObject = dict[str, Any]  # {"box": [x0, y0, x1, y1], "shape": ..., "colour": ..., "size": ...}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the scene generator.

    Args:
        image_size: side of the square RGB images in pixels (>= 32). Small objects are about
            0.16 and large ones 0.28 of it.
        noise: standard deviation of the per-pixel Gaussian noise, on a 0..1 intensity scale
            (0 disables it).
        questions_per_image: questions asked about each image, from different families
            while there are families left.
        min_objects: fewest objects in a scene (1..6).
        max_objects: most objects in a scene (min_objects..6).
    """

    image_size: int = 64
    noise: float = 0.02
    questions_per_image: int = 3
    min_objects: int = 1
    max_objects: int = MAX_OBJECTS

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, 32)
        check_int("questions_per_image", self.questions_per_image, 1)
        check_int("min_objects", self.min_objects, 1, MAX_OBJECTS)
        check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS)
        noise = self.noise
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
            raise ValueError(f"noise must be a number in [0, 1], got {noise!r}")


def check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise ValueError naming `name` unless `value` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


def answer_space(config: SyntheticConfig | None = None) -> dict[str, tuple[str, ...]]:
    """The possible answers of each question family that `config` can ask."""
    config = config or SyntheticConfig()
    spaces = {
        "colour": COLOURS,
        "shape": SHAPES,
        "exist": YES_NO,
        "count": tuple(str(n) for n in range(max_count(config) + 1)),
        "relate": COLOURS + SHAPES,
        "compare": YES_NO,
    }
    return {family: spaces[family] for family in supported_families(config)}


def max_count(config: SyntheticConfig) -> int:
    """The largest answer a count question of `config` can have."""
    return min(MAX_COUNT, config.max_objects)


def supported_families(config: SyntheticConfig) -> tuple[str, ...]:
    """The families a scene of `config` can support: relations and comparisons need 2 objects."""
    if config.max_objects >= 2:
        return QUESTION_TYPES
    return tuple(f for f in QUESTION_TYPES if f not in ("relate", "compare"))
