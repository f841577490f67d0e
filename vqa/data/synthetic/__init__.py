"""Procedural scenes of coloured shapes with balanced, exactly answerable questions.

The embedded default dataset: each image holds 1 to 6 coloured shapes (circle, square,
triangle; six colours; small or large) on a light grey background, each question comes with
its exact answer, and each row carries the object boxes that let evaluation score whether
attention looked at the right place.

Where each thing lives:

* ``config``: the vocabulary (shapes, colours, sizes, question families, relations),
  `SyntheticConfig`, `answer_space` and `DATASET_VERSION`.
* ``grammar``: a question family's wording and question text, and its answer rule on a
  finished scene; `ask_question` for an existing scene. The table of families is there.
* ``layout``: object sizes, box placement and the geometry of the spatial relations.
* ``planner``: how a scene is built answer first (`AnswerBalancer`, the per-family plans,
  `generate_example`, `generate_scene`).
* ``render``: drawing the objects and the pixel noise (`render_scene`).
* ``writer``: splits and files on disk (`generate_split`, `write_synthetic_dataset`,
  `majority_baseline`, the format of ``dataset_info.json`` and the rows).

Dependencies run one way: config <- layout <- grammar <- planner <- writer, and
config <- render <- writer.
"""

from .config import (
    ANSWER_TYPES,
    COLOURS,
    DATASET_VERSION,
    MAX_COUNT,
    MAX_OBJECTS,
    QUESTION_TYPES,
    RELATIONS,
    SHAPES,
    SIZES,
    YES_NO,
    Box,
    Description,
    Point,
    SceneObject,
    SyntheticConfig,
    answer_space,
)
from .grammar import ask_question
from .planner import AnswerBalancer, generate_example, generate_scene
from .render import BACKGROUND_RGB, COLOUR_RGB, render_scene
from .writer import generate_split, majority_baseline, split_rng, write_synthetic_dataset

__all__ = [
    "ANSWER_TYPES",
    "BACKGROUND_RGB",
    "COLOURS",
    "COLOUR_RGB",
    "DATASET_VERSION",
    "MAX_COUNT",
    "MAX_OBJECTS",
    "QUESTION_TYPES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "YES_NO",
    "AnswerBalancer",
    "Box",
    "Description",
    "Point",
    "SceneObject",
    "SyntheticConfig",
    "answer_space",
    "ask_question",
    "generate_example",
    "generate_scene",
    "generate_split",
    "majority_baseline",
    "render_scene",
    "split_rng",
    "write_synthetic_dataset",
]
