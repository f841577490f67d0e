"""Procedural scenes of coloured shapes with balanced, exactly answerable questions.

The embedded default dataset: each image holds 1 to 6 coloured shapes (circle, square,
triangle; six colours; small or large) on a light grey background, each question comes with
its exact answer, and each row carries the object boxes that let evaluation score whether
attention looked at the right place.

Question families, templates and answers (<d> is a description such as "small red circle",
"large object" or "circles": size, colour, then the shape or "object"):

==========  =============================================================  ==================
colour      what colour is the <d>?          (<d>: size and/or shape)      the 6 colours
shape       what shape is the <d>?           (<d>: size and/or colour)     the 3 shapes
exist       is there a <d>?                                                yes, no
count       how many <d>s are there?                                       0 to 5
relate      what colour|shape is the object left of|right of|above|below   6 colours and
            the <d>?                                                       3 shapes
compare     is the <d1> the same colour|shape|size as the <d2>?            yes, no
            (<d1>, <d2> do not name the compared attribute)
==========  =============================================================  ==================

Every <d> in colour, shape, relate and compare names exactly one object; "targets" lists the
objects a question is about (the described object; all the matching objects for exist and
count; the anchor then the answer object for relate; both objects for compare).

Scenes are built *answer first*. For every question the generator samples the family and the
wording, then an answer that keeps the answers of that wording level (see `AnswerBalancer`),
and only then builds a scene in which the wording has that answer. A model that reads the
question but ignores the image therefore does no better than chance. Every answer is finally
recomputed from the finished scene; a scene that does not give the planned answers is drawn
again.

Spatial relations (family ``relate``) use box centres ``c = ((x0 + x1) / 2, (y0 + y1) / 2)``
in pixels, with y growing downwards, and the margin ``tau = 0.15 * image_size``:

* B is *left of* A when ``c_A.x - c_B.x >= tau``, *right of* A when ``c_B.x - c_A.x >= tau``,
  *above* A when ``c_A.y - c_B.y >= tau`` and *below* A when ``c_B.y - c_A.y >= tau``.
* "the object left of the <anchor>" is asked only when exactly one object B is left of the
  anchor A and every other object C sits level with or beyond A's centre on the other side
  (``c_A.x - c_C.x <= 0``), so that no third object is even slightly left of the anchor.

Output format (see DESIGN.md): ``{split}.jsonl`` rows whose ``image`` paths point into
``images/{split}/``, and ``dataset_info.json`` with the parameters and majority baselines.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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
DATASET_VERSION = 1

COLOUR_RGB = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230),
    "yellow": (240, 210, 0), "purple": (150, 40, 200), "cyan": (0, 200, 210),
}  # fmt: skip
BACKGROUND_RGB = (200, 200, 200)

# Phrase order of the attributes in a description: "small red circle".
_ATTRIBUTE_ORDER = ("size", "colour", "shape")
_VALUES = {"size": SIZES, "colour": COLOURS, "shape": SHAPES}
# (axis, sign): the offset sign * (c_B[axis] - c_A[axis]) is positive in the relation's direction.
_DIRECTIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_RELATION_MARGIN = 0.15  # tau as a fraction of the image size
_CANDIDATE_POSITIONS = 64  # random positions offered to one sequential placement
_PLACEMENT_RESTARTS = 12  # sequential placements tried before falling back to a jittered grid
_REPAIR_STEPS = 24  # attribute resamplings allowed when filling in a scene
_LAYOUT_TRIES = 8  # layouts drawn for a planned scene before the plan is given up
_ATTEMPTS = 50  # scene draws for a set of answers before the last question is dropped
_ASK_TRIES = 64  # wordings tried by `ask_question` before it gives up

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
        _check_int("image_size", self.image_size, 32)
        _check_int("questions_per_image", self.questions_per_image, 1)
        _check_int("min_objects", self.min_objects, 1, MAX_OBJECTS)
        _check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS)
        noise = self.noise
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
            raise ValueError(f"noise must be a number in [0, 1], got {noise!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
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
        "count": tuple(str(n) for n in range(_max_count(config) + 1)),
        "relate": COLOURS + SHAPES,
        "compare": YES_NO,
    }
    return {family: spaces[family] for family in _families(config)}


def _max_count(config: SyntheticConfig) -> int:
    return min(MAX_COUNT, config.max_objects)


def _families(config: SyntheticConfig) -> tuple[str, ...]:
    """The families a scene of `config` can support: relations and comparisons need 2 objects."""
    if config.max_objects >= 2:
        return QUESTION_TYPES
    return tuple(f for f in QUESTION_TYPES if f not in ("relate", "compare"))


# ---------------------------------------------------------------------------------------------
# Geometry


def _object_sides(image_size: int) -> dict[str, int]:
    """Object side in pixels for each size."""
    return {"small": round(0.16 * image_size), "large": round(0.28 * image_size)}


def _gap(image_size: int) -> int:
    """Smallest empty margin between two objects, in pixels."""
    return max(1, round(0.03 * image_size))


def _place_boxes(rng: np.random.Generator, sizes: Sequence[str], image_size: int) -> list[Box]:
    """Boxes for objects of `sizes`, inside the image and at least a gap apart.

    Random sequential placement, restarted when it jams; a jittered 3x3 grid as a last resort.
    """
    sides = [_object_sides(image_size)[size] for size in sizes]
    for _ in range(_PLACEMENT_RESTARTS):
        boxes = _random_boxes(rng, sides, image_size)
        if boxes is not None:
            return boxes
    return _grid_boxes(rng, sides, image_size)


def _random_boxes(
    rng: np.random.Generator, sides: Sequence[int], image_size: int
) -> list[Box] | None:
    """Boxes placed largest first, each at the first free position of one random stream;
    None when the stream runs out."""
    stream = iter(rng.random((_CANDIDATE_POSITIONS, 2)).tolist())
    placed: dict[int, Box] = {}
    for i in sorted(range(len(sides)), key=lambda i: -sides[i]):
        box = _first_free(stream, sides[i], list(placed.values()), image_size)
        if box is None:
            return None
        placed[i] = box
    return [placed[i] for i in range(len(sides))]


def _first_free(
    stream: Iterator[list[float]], side: int, placed: Sequence[Box], image_size: int
) -> Box | None:
    """The first position in `stream` where a box of `side` keeps a gap to every placed box."""
    span, gap = image_size - side + 1, _gap(image_size)
    for u, v in stream:
        x, y = int(u * span), int(v * span)
        box = [x, y, x + side, y + side]
        if all(_apart(box, other, gap) for other in placed):
            return box
    return None


def _apart(a: Box, b: Box, gap: int) -> bool:
    """Whether boxes a and b have at least `gap` empty pixels between them on some axis."""
    return a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap


def _grid_boxes(rng: np.random.Generator, sides: Sequence[int], image_size: int) -> list[Box]:
    """Boxes in distinct cells of a 3x3 grid, jittered inside each cell."""
    cell, gap = image_size // 3, _gap(image_size)
    boxes = []
    cells = rng.permutation(9).tolist()[: len(sides)]
    for index, side in zip(cells, sides, strict=True):
        # cell - side - gap >= 0 for every image_size >= 32
        dx, dy = rng.integers(0, cell - side - gap + 1, size=2).tolist()
        x, y = index % 3 * cell + dx, index // 3 * cell + dy
        boxes.append([x, y, x + side, y + side])
    return boxes


def _centres(boxes: Iterable[Box]) -> list[Point]:
    """Box centres (x, y) in pixels."""
    return [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]


def _related(centres: Sequence[Point], anchor: int, relation: str, image_size: int) -> int | None:
    """The one object in `relation` to `anchor` under the module docstring's rule, else None."""
    axis, sign = _DIRECTIONS[relation]
    origin = centres[anchor][axis]
    offsets = [sign * (c[axis] - origin) for c in centres]
    ahead = [i for i, offset in enumerate(offsets) if offset > 0]
    if len(ahead) == 1 and offsets[ahead[0]] >= _RELATION_MARGIN * image_size:
        return ahead[0]
    return None


def _mirror(boxes: Iterable[Box], code: int, image_size: int) -> list[Box]:
    """One of the layout's 8 symmetries: bit 4 transposes, bits 1 and 2 flip x and y."""
    mirrored = []
    for x0, y0, x1, y1 in boxes:
        if code & 4:
            x0, y0, x1, y1 = y0, x0, y1, x1
        if code & 1:
            x0, x1 = image_size - x1, image_size - x0
        if code & 2:
            y0, y1 = image_size - y1, image_size - y0
        mirrored.append([x0, y0, x1, y1])
    return mirrored


def _arrange(
    rng: np.random.Generator,
    boxes: Sequence[Box],
    sizes: Sequence[str],
    relations: Sequence[tuple[int, int, str]],
    image_size: int,
) -> list[Box] | None:
    """Give each object a box of its size so that every (anchor, other, relation) holds.

    Tries the layout's symmetries in random order and puts the first relation's two objects
    on two boxes in that relation; the other objects share the remaining boxes of their size
    at random. Symmetries keep the layout distribution, so this is rejection sampling without
    the waste. Returns None when no symmetry works.
    """
    if not relations:
        return list(boxes)
    anchor, other, relation = relations[0]
    for code in rng.permutation(8).tolist():
        mirrored = _mirror(boxes, code, image_size)
        centres = _centres(mirrored)
        pairs = [(a, _related(centres, a, relation, image_size)) for a in range(len(boxes))]
        pairs = [
            (a, b)
            for a, b in pairs
            if b is not None and sizes[a] == sizes[anchor] and sizes[b] == sizes[other]
        ]
        if not pairs:
            continue
        a, b = pairs[int(rng.random() * len(pairs))]
        arranged = [mirrored[i] for i in _assign(rng, sizes, {anchor: a, other: b})]
        centres = _centres(arranged)
        if all(_related(centres, x, r, image_size) == y for x, y, r in relations[1:]):
            return arranged
    return None


def _assign(rng: np.random.Generator, sizes: Sequence[str], fixed: Mapping[int, int]) -> list[int]:
    """A box index for every object: `fixed` ones as given, the rest shuffled within a size."""
    order = [fixed.get(i, -1) for i in range(len(sizes))]
    for size in SIZES:
        objects = [i for i in range(len(sizes)) if sizes[i] == size and order[i] < 0]
        boxes = [i for i in range(len(sizes)) if sizes[i] == size and i not in fixed.values()]
        for i, k in zip(objects, rng.permutation(len(boxes)).tolist(), strict=True):
            order[i] = boxes[k]
    return order


def _layout(
    rng: np.random.Generator,
    sizes: Sequence[str],
    relations: Sequence[tuple[int, int, str]],
    image_size: int,
) -> list[Box] | None:
    """Boxes for objects of `sizes` that satisfy `relations`, or None if a few layouts fail."""
    for _ in range(_LAYOUT_TRIES):
        boxes = _arrange(rng, _place_boxes(rng, sizes, image_size), sizes, relations, image_size)
        if boxes is not None:
            return boxes
    return None


# ---------------------------------------------------------------------------------------------
# Questions: a spec is a question before its scene exists


@dataclass(frozen=True)
class _Spec:
    """A planned question: the family, the answer to build the scene for, and its wording."""

    family: str
    answer: str
    description: Description
    attribute: str = ""  # relate: the attribute asked for; compare: the attribute compared
    relation: str = ""  # relate only
    other: Description = field(default_factory=dict)  # compare only: the second object


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.random() * len(options))]


def _sample_description(rng: np.random.Generator, attributes: Sequence[str]) -> dict[str, str]:
    """A uniformly chosen non-empty subset of `attributes` (in phrase order), uniform values."""
    mask = int(rng.integers(1, 1 << len(attributes)))
    return {a: _pick(rng, _VALUES[a]) for i, a in enumerate(attributes) if mask >> i & 1}


def _without(attribute: str) -> tuple[str, ...]:
    return tuple(a for a in _ATTRIBUTE_ORDER if a != attribute)


def _wording_describe(rng: np.random.Generator, family: str) -> _Spec:
    """colour / shape: "what colour is the large circle?" (never names the asked attribute)."""
    return _Spec(family, "", _sample_description(rng, _without(family)))


def _wording_any(rng: np.random.Generator, family: str) -> _Spec:
    """exist / count: any description, "is there a small red circle?", "how many circles"."""
    return _Spec(family, "", _sample_description(rng, _ATTRIBUTE_ORDER))


def _wording_relate(rng: np.random.Generator, family: str) -> _Spec:
    """relate: the anchor and the relation; the answer later decides "what colour/shape"."""
    anchor = _sample_description(rng, _ATTRIBUTE_ORDER)
    return _Spec(family, "", anchor, relation=_pick(rng, RELATIONS))


def _wording_compare(rng: np.random.Generator, family: str) -> _Spec:
    """compare: "is the <d1> the same <attribute> as the <d2>?" with d1, d2 not naming it."""
    attribute = _pick(rng, _ATTRIBUTE_ORDER)
    first = _sample_description(rng, _without(attribute))
    second = dict(first)
    # If one description contains the other, both can only name the same object.
    while second.items() <= first.items() or first.items() <= second.items():
        second = _sample_description(rng, _without(attribute))
    return _Spec(family, "", first, attribute, other=second)


_WORDINGS: dict[str, Callable[[np.random.Generator, str], _Spec]] = {
    "colour": _wording_describe,
    "shape": _wording_describe,
    "exist": _wording_any,
    "count": _wording_any,
    "relate": _wording_relate,
    "compare": _wording_compare,
}


def _sample_wording(rng: np.random.Generator, family: str) -> _Spec:
    """A question of `family` without its answer yet."""
    return _WORDINGS[family](rng, family)


def _possible_answers(spec: _Spec, answers: Sequence[str]) -> list[str]:
    """`answers` less the ones the wording rules out: the object left of "the red object"
    cannot be red itself."""
    if spec.family == "relate" and len(spec.description) == 1:
        return [a for a in answers if a not in spec.description.values()]
    return list(answers)


def _with_answer(spec: _Spec, answer: str) -> _Spec:
    """`spec` set to build its scene for `answer`."""
    if spec.family == "relate":
        return replace(spec, answer=answer, attribute="colour" if answer in COLOURS else "shape")
    return replace(spec, answer=answer)


class AnswerBalancer:
    """Chooses planned answers so that each wording gets every answer about equally often.

    Drawing answers uniformly is not enough when several questions share a scene: some
    pairings of wording and answer clash with the other questions more often ("is there a
    small object?" "no" needs every object large), so the scenes that succeed would tie the
    answer to the wording. The balancer counts the answers given to each wording form
    (family + which attributes are named, values aside) and draws among the answers used
    least so far (within `slack`), so the counts stay level whatever fails.
    """

    def __init__(self, slack: int = 1) -> None:
        self.slack = slack
        self.counts: dict[tuple, Counter[str]] = {}

    def choose(self, rng: np.random.Generator, spec: _Spec, answers: Sequence[str]) -> _Spec:
        """`spec` with an answer among `answers` that its form has had least."""
        counts = self.counts.setdefault(_form(spec), Counter())
        allowed = _possible_answers(spec, answers)
        fewest = min(counts[a] for a in allowed)
        return _with_answer(
            spec, _pick(rng, [a for a in allowed if counts[a] <= fewest + self.slack])
        )

    def record(self, spec: _Spec) -> None:
        """Count `spec`'s answer once its scene has been built."""
        self.counts.setdefault(_form(spec), Counter())[spec.answer] += 1


def _form(spec: _Spec) -> tuple:
    """The wording of `spec` without attribute values (and without the relation, which is
    symmetric): the key the balancer levels answers within."""
    compared = spec.attribute if spec.family == "compare" else ""
    return spec.family, tuple(spec.description), compared, tuple(spec.other)


def _phrase(description: Description, plural: bool = False) -> str:
    """The words for `description`: size, colour, then the shape or "object" ("red circles")."""
    noun = description.get("shape", "object") + ("s" if plural else "")
    return " ".join([description[a] for a in ("size", "colour") if a in description] + [noun])


def _question_text(spec: _Spec) -> str:
    """The question of `spec`; one template per family."""
    family, described = spec.family, _phrase(spec.description)
    if family in ("colour", "shape"):
        return f"what {family} is the {described}?"
    if family == "exist":
        return f"is there a {described}?"
    if family == "count":
        return f"how many {_phrase(spec.description, plural=True)} are there?"
    if family == "relate":
        return f"what {spec.attribute} is the object {spec.relation} the {described}?"
    return f"is the {described} the same {spec.attribute} as the {_phrase(spec.other)}?"


# ---------------------------------------------------------------------------------------------
# Answers, computed from a finished scene


def _matching(objects: Sequence[SceneObject], description: Description) -> list[int]:
    """Indices of the objects that have every attribute value of `description`."""
    return [i for i, o in enumerate(objects) if all(o[a] == v for a, v in description.items())]


def _unique(objects: Sequence[SceneObject], description: Description) -> int | None:
    found = _matching(objects, description)
    return found[0] if len(found) == 1 else None


Answer = tuple[str, list[int]]  # (answer, targets)


def _answer_describe(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> Answer | None:
    target = _unique(objects, spec.description)
    return None if target is None else (objects[target][spec.family], [target])


def _answer_exist(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> Answer:
    found = _matching(objects, spec.description)
    return ("yes" if found else "no"), found


def _answer_count(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> Answer | None:
    found = _matching(objects, spec.description)
    return (str(len(found)), found) if len(found) <= MAX_COUNT else None


def _answer_relate(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> Answer | None:
    anchor = _unique(objects, spec.description)
    if anchor is None:
        return None
    other = _related(_centres(o["box"] for o in objects), anchor, spec.relation, image_size)
    return None if other is None else (objects[other][spec.attribute], [anchor, other])


def _answer_compare(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> Answer | None:
    first, second = _unique(objects, spec.description), _unique(objects, spec.other)
    if first is None or second is None or first == second:
        return None
    same = objects[first][spec.attribute] == objects[second][spec.attribute]
    return ("yes" if same else "no"), [first, second]


_ANSWERERS: dict[str, Callable[[_Spec, Sequence[SceneObject], int], Answer | None]] = {
    "colour": _answer_describe,
    "shape": _answer_describe,
    "exist": _answer_exist,
    "count": _answer_count,
    "relate": _answer_relate,
    "compare": _answer_compare,
}


def _question(spec: _Spec, objects: Sequence[SceneObject], image_size: int) -> dict | None:
    """The question row fields of `spec` answered on `objects`; None if it is ill-posed there."""
    answered = _ANSWERERS[spec.family](spec, objects, image_size)
    if answered is None:
        return None
    return {
        "question": _question_text(spec),
        "answer": answered[0],
        "question_type": spec.family,
        "answer_type": ANSWER_TYPES[spec.family],
        "targets": answered[1],
    }


# ---------------------------------------------------------------------------------------------
# Building a scene for a set of specs: pin the attributes the answers need, forbid the matches
# that would change them, fill in the rest at random.


@dataclass
class _Plan:
    """A scene under construction: pinned attributes, forbidden matches, required relations."""

    pins: list[dict[str, str]]
    forbidden: list[tuple[Description, frozenset[int]]] = field(default_factory=list)
    relations: list[tuple[int, int, str]] = field(default_factory=list)  # (anchor, other, rel.)

    def fits(self, index: int, required: Description) -> bool:
        """Whether object `index` can take `required` without breaking a pin or a forbid."""
        merged = {**required, **self.pins[index]}
        if any(merged[a] != v for a, v in required.items()):
            return False
        return not any(
            index not in allowed and all(merged.get(a) == v for a, v in description.items())
            for description, allowed in self.forbidden
        )

    def candidates(
        self, rng: np.random.Generator, required: Description, exclude: Iterable[int] = ()
    ) -> list[int]:
        """Objects that fit `required`, shuffled, those with no pins yet first."""
        skip = set(exclude)
        fitting = [i for i in range(len(self.pins)) if i not in skip and self.fits(i, required)]
        fitting = [fitting[i] for i in rng.permutation(len(fitting))]
        return sorted(fitting, key=lambda i: bool(self.pins[i]))

    def pin(self, index: int, required: Description) -> None:
        self.pins[index].update(required)

    def forbid(self, description: Description, allowed: Iterable[int]) -> bool:
        """Let only `allowed` match `description`; False if a pinned object already must."""
        allowed = frozenset(allowed)
        self.forbidden.append((description, allowed))
        return not any(
            i not in allowed and all(pin.get(a) == v for a, v in description.items())
            for i, pin in enumerate(self.pins)
        )


def _pin_one(plan: _Plan, rng: np.random.Generator, required: Description, **kw: Any) -> int:
    """Pin `required` on a compatible object (unpinned if possible); -1 when there is none."""
    options = plan.candidates(rng, required, **kw)
    if not options:
        return -1
    plan.pin(options[0], required)
    return options[0]


def _plan_describe(spec: _Spec, plan: _Plan, rng: np.random.Generator) -> bool:
    target = _pin_one(plan, rng, {**spec.description, spec.family: spec.answer})
    return target >= 0 and plan.forbid(spec.description, [target])


def _plan_exist(spec: _Spec, plan: _Plan, rng: np.random.Generator) -> bool:
    if spec.answer == "no":
        return plan.forbid(spec.description, [])
    return _pin_one(plan, rng, spec.description) >= 0


def _plan_count(spec: _Spec, plan: _Plan, rng: np.random.Generator) -> bool:
    chosen = plan.candidates(rng, spec.description)[: int(spec.answer)]
    for index in chosen:
        plan.pin(index, spec.description)
    return len(chosen) == int(spec.answer) and plan.forbid(spec.description, chosen)


def _plan_relate(spec: _Spec, plan: _Plan, rng: np.random.Generator) -> bool:
    """Pin the anchor and the answer object; the layout puts them in relation later."""
    answer = {spec.attribute: spec.answer}
    for anchor in plan.candidates(rng, spec.description):
        others = plan.candidates(rng, answer, exclude=[anchor])
        if others:
            plan.pin(anchor, spec.description)
            plan.pin(others[0], answer)
            plan.relations.append((anchor, others[0], spec.relation))
            return plan.forbid(spec.description, [anchor])
    return False


def _plan_compare(spec: _Spec, plan: _Plan, rng: np.random.Generator) -> bool:
    values = _VALUES[spec.attribute]
    first_value = _pick(rng, values)
    second_value = first_value
    while spec.answer == "no" and second_value == first_value:
        second_value = _pick(rng, values)
    first = _pin_one(plan, rng, {**spec.description, spec.attribute: first_value})
    second = _pin_one(plan, rng, {**spec.other, spec.attribute: second_value}, exclude=[first])
    if first < 0 or second < 0:
        return False
    return plan.forbid(spec.description, [first]) and plan.forbid(spec.other, [second])


_PLANNERS: dict[str, Callable[[_Spec, _Plan, np.random.Generator], bool]] = {
    "colour": _plan_describe,
    "shape": _plan_describe,
    "exist": _plan_exist,
    "count": _plan_count,
    "relate": _plan_relate,
    "compare": _plan_compare,
}


def _rigidity(spec: _Spec) -> int:
    """Planning order: the specs with the fewest ways to be met choose their objects first."""
    return ("relate", "count", "compare", "colour", "shape", "exist").index(spec.family)


def _min_objects(spec: _Spec) -> int:
    if spec.family == "count":
        return int(spec.answer)
    return 2 if spec.family in ("relate", "compare") else 1


def _first_clash(
    attributes: Sequence[dict[str, str]], plan: _Plan
) -> tuple[int, Description] | None:
    """The first (object, description) pair that breaks one of the plan's forbidden matches."""
    for description, allowed in plan.forbidden:
        for index in _matching(attributes, description):
            if index not in allowed:
                return index, description
    return None


def _fill_attributes(rng: np.random.Generator, plan: _Plan) -> list[dict[str, str]] | None:
    """Pinned attributes plus uniform random ones, repaired until no forbidden match is left."""
    attributes = [
        {a: pin.get(a) or _pick(rng, _VALUES[a]) for a in _ATTRIBUTE_ORDER} for pin in plan.pins
    ]
    for _ in range(_REPAIR_STEPS):
        clash = _first_clash(attributes, plan)
        if clash is None:
            return attributes
        index, description = clash
        free = [a for a in description if a not in plan.pins[index]]
        if not free:
            return None
        attribute = _pick(rng, free)
        others = tuple(v for v in _VALUES[attribute] if v != description[attribute])
        attributes[index][attribute] = _pick(rng, others)
    return None


def _realise(
    rng: np.random.Generator, specs: Sequence[_Spec], config: SyntheticConfig
) -> tuple[list[SceneObject], list[dict]] | None:
    """One try at a scene where every spec gets its planned answer; None if this draw fails."""
    size = config.image_size
    low = max([config.min_objects] + [_min_objects(s) for s in specs])
    if low > config.max_objects:
        return None
    plan = _Plan([{} for _ in range(int(rng.integers(low, config.max_objects + 1)))])
    if not all(_PLANNERS[s.family](s, plan, rng) for s in sorted(specs, key=_rigidity)):
        return None
    attributes = _fill_attributes(rng, plan)
    if attributes is None:
        return None
    boxes = _layout(rng, [a["size"] for a in attributes], plan.relations, size)
    if boxes is None:
        return None
    objects = [
        {"box": box, "shape": a["shape"], "colour": a["colour"], "size": a["size"]}
        for box, a in zip(boxes, attributes, strict=True)
    ]
    questions = [_question(s, objects, size) for s in specs]
    if any(q is None or q["answer"] != s.answer for q, s in zip(questions, specs, strict=True)):
        return None
    return objects, questions


def _choose_families(rng: np.random.Generator, config: SyntheticConfig) -> list[str]:
    """`questions_per_image` families, all different until every family has been used."""
    families = _families(config)
    chosen: list[str] = []
    while len(chosen) < config.questions_per_image:
        chosen += [families[i] for i in rng.permutation(len(families))]
    return chosen[: config.questions_per_image]


# ---------------------------------------------------------------------------------------------
# Public API


def generate_scene(rng: np.random.Generator, config: SyntheticConfig) -> list[SceneObject]:
    """A random scene with no question constraints: a list of object dicts.

    Each object is ``{"box": [x0, y0, x1, y1], "shape", "colour", "size"}``; boxes are in
    pixels (x1, y1 exclusive), inside the image and apart from each other.
    """
    scene = None
    while scene is None:  # with no questions to satisfy, the first try succeeds
        scene = _realise(rng, [], config)
    return scene[0]


def ask_question(
    objects: Sequence[SceneObject],
    family: str,
    rng: np.random.Generator,
    image_size: int = 64,
) -> dict | None:
    """Ask a `family` question about an existing scene (its answer is not balanced).

    Returns ``{"question", "answer", "question_type", "answer_type", "targets"}``, or None when
    no well-posed question of that family was found (e.g. no uniquely describable object).
    """
    if family not in QUESTION_TYPES:
        raise ValueError(f"family must be one of {QUESTION_TYPES}, got {family!r}")
    answers = answer_space()[family]
    for _ in range(_ASK_TRIES):
        spec = _sample_wording(rng, family)
        spec = _with_answer(spec, _pick(rng, _possible_answers(spec, answers)))
        question = _question(spec, objects, image_size)
        if question is not None:
            return question
    return None


def generate_example(
    rng: np.random.Generator, config: SyntheticConfig, balancer: AnswerBalancer | None = None
) -> tuple[list[SceneObject], list[dict]]:
    """A scene and its questions, built answer first (see the module docstring).

    Returns (objects, questions): the object dicts of `generate_scene` and 1 to
    `questions_per_image` question dicts as returned by `ask_question`. Pass one `balancer`
    to all the examples of a split to keep answers level per wording. Each try draws new
    wordings and answers, since some contradict each other ("how many circles?" 0 with
    "what colour is the circle?"); a question that keeps failing is dropped as a last resort.
    """
    balancer = balancer or AnswerBalancer()
    spaces = answer_space(config)
    families = _choose_families(rng, config)
    while families:
        for _ in range(_ATTEMPTS):
            specs = [balancer.choose(rng, _sample_wording(rng, f), spaces[f]) for f in families]
            scene = _realise(rng, specs, config)
            if scene is not None:
                for spec in specs:
                    balancer.record(spec)
                return scene
        families = families[:-1]
    raise RuntimeError(f"could not build a scene for {config}")  # unreachable for valid configs


def render_scene(
    objects: Sequence[SceneObject], config: SyntheticConfig, rng: np.random.Generator
) -> Image.Image:
    """Draw `objects` on the background and add noise from `rng`; returns an RGB image."""
    size = config.image_size
    image = Image.new("RGB", (size, size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_object(draw, obj)
    if config.noise == 0:
        return image
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(config.noise * 255)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj["box"]
    right, bottom = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    fill = COLOUR_RGB[obj["colour"]]
    if obj["shape"] == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle((x0, y0, right, bottom), fill=fill)
    else:
        draw.polygon([(x0, bottom), (right, bottom), ((x0 + right) / 2, y0)], fill=fill)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split: derived from (seed, split name), so splits differ."""
    _check_int("seed", seed, 0)
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
    _check_int("n_images", n_images, 0)
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
        _check_int(split, n, 0)
    _check_int("seed", seed, 0)
    out = Path(os.path.abspath(out_dir))
    _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o755)
        info = _dataset_info(config, seed)
        info["splits"] = _write_splits(staging, sizes, config, seed, progress)
        (staging / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _check_destination(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if not overwrite and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already exists and is not empty; pass overwrite=True to replace it"
        )


def _move_into_place(staging: Path, out: Path) -> None:
    """Replace `out` by `staging`; an existing `out` is moved aside first, then deleted."""
    if not out.exists():
        os.replace(staging, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, trash / "old")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(trash / "old", out)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _dataset_info(config: SyntheticConfig, seed: int) -> dict[str, Any]:
    return {
        "name": "synthetic-scenes",
        "generator": __name__,
        "version": DATASET_VERSION,
        "seed": seed,
        "config": asdict(config),
        "shapes": list(SHAPES),
        "colours": list(COLOURS),
        "sizes": list(SIZES),
        "question_types": list(_families(config)),
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
