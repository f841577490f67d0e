"""The balancing planner: scenes built *answer first*, so that answers stay level.

For every question the generator samples the family and the wording, then an answer that
keeps the answers of that wording level (see `AnswerBalancer`), and only then builds a scene
in which the wording has that answer. A model that reads the question but ignores the image
therefore does no better than chance. Every answer is finally recomputed from the finished
scene; a scene that does not give the planned answers is drawn again.

A scene is planned in three steps: pin the attributes the answers need on some objects,
forbid the matches that would change an answer, then fill in the rest at random and lay the
objects out so that the planned relations hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import (
    ATTRIBUTE_ORDER,
    VALUES,
    Description,
    SceneObject,
    SyntheticConfig,
    answer_space,
    supported_families,
)
from .grammar import (
    QuestionSpec,
    matching,
    pick,
    possible_answers,
    question_fields,
    sample_wording,
    with_answer,
)
from .layout import layout_boxes

_REPAIR_STEPS = 24  # attribute resamplings allowed when filling in a scene
_ATTEMPTS = 50  # scene draws for a set of answers before the last question is dropped


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

    def choose(
        self, rng: np.random.Generator, spec: QuestionSpec, answers: Sequence[str]
    ) -> QuestionSpec:
        """`spec` with an answer among `answers` that its form has had least."""
        counts = self.counts.setdefault(_form(spec), Counter())
        allowed = possible_answers(spec, answers)
        fewest = min(counts[a] for a in allowed)
        return with_answer(
            spec, pick(rng, [a for a in allowed if counts[a] <= fewest + self.slack])
        )

    def record(self, spec: QuestionSpec) -> None:
        """Count `spec`'s answer once its scene has been built."""
        self.counts.setdefault(_form(spec), Counter())[spec.answer] += 1


def _form(spec: QuestionSpec) -> tuple:
    """The wording of `spec` without attribute values (and without the relation, which is
    symmetric): the key the balancer levels answers within."""
    compared = spec.attribute if spec.family == "compare" else ""
    return spec.family, tuple(spec.description), compared, tuple(spec.other)


def generate_scene(rng: np.random.Generator, config: SyntheticConfig) -> list[SceneObject]:
    """A random scene with no question constraints: a list of object dicts.

    Each object is ``{"box": [x0, y0, x1, y1], "shape", "colour", "size"}``; boxes are in
    pixels (x1, y1 exclusive), inside the image and apart from each other.
    """
    scene = None
    while scene is None:  # with no questions to satisfy, the first try succeeds
        scene = _realise(rng, [], config)
    return scene[0]


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
            specs = [balancer.choose(rng, sample_wording(rng, f), spaces[f]) for f in families]
            scene = _realise(rng, specs, config)
            if scene is not None:
                for spec in specs:
                    balancer.record(spec)
                return scene
        families = families[:-1]
    raise RuntimeError(f"could not build a scene for {config}")  # unreachable for valid configs


def _choose_families(rng: np.random.Generator, config: SyntheticConfig) -> list[str]:
    """`questions_per_image` families, all different until every family has been used."""
    families = supported_families(config)
    chosen: list[str] = []
    while len(chosen) < config.questions_per_image:
        chosen += [families[i] for i in rng.permutation(len(families))]
    return chosen[: config.questions_per_image]


def _realise(
    rng: np.random.Generator, specs: Sequence[QuestionSpec], config: SyntheticConfig
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
    boxes = layout_boxes(rng, [a["size"] for a in attributes], plan.relations, size)
    if boxes is None:
        return None
    objects = [
        {"box": box, "shape": a["shape"], "colour": a["colour"], "size": a["size"]}
        for box, a in zip(boxes, attributes, strict=True)
    ]
    questions = [question_fields(s, objects, size) for s in specs]
    if any(q is None or q["answer"] != s.answer for q, s in zip(questions, specs, strict=True)):
        return None
    return objects, questions


def _min_objects(spec: QuestionSpec) -> int:
    """The fewest objects a scene needs to give `spec` its planned answer."""
    if spec.family == "count":
        return int(spec.answer)
    return 2 if spec.family in ("relate", "compare") else 1


def _rigidity(spec: QuestionSpec) -> int:
    """Planning order: the specs with the fewest ways to be met choose their objects first."""
    return ("relate", "count", "compare", "colour", "shape", "exist").index(spec.family)


# ---------------------------------------------------------------------------------------------
# Planning a scene for a set of specs


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


def _plan_describe(spec: QuestionSpec, plan: _Plan, rng: np.random.Generator) -> bool:
    target = _pin_one(plan, rng, {**spec.description, spec.family: spec.answer})
    return target >= 0 and plan.forbid(spec.description, [target])


def _plan_exist(spec: QuestionSpec, plan: _Plan, rng: np.random.Generator) -> bool:
    if spec.answer == "no":
        return plan.forbid(spec.description, [])
    return _pin_one(plan, rng, spec.description) >= 0


def _plan_count(spec: QuestionSpec, plan: _Plan, rng: np.random.Generator) -> bool:
    chosen = plan.candidates(rng, spec.description)[: int(spec.answer)]
    for index in chosen:
        plan.pin(index, spec.description)
    return len(chosen) == int(spec.answer) and plan.forbid(spec.description, chosen)


def _plan_relate(spec: QuestionSpec, plan: _Plan, rng: np.random.Generator) -> bool:
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


def _plan_compare(spec: QuestionSpec, plan: _Plan, rng: np.random.Generator) -> bool:
    values = VALUES[spec.attribute]
    first_value = pick(rng, values)
    second_value = first_value
    while spec.answer == "no" and second_value == first_value:
        second_value = pick(rng, values)
    first = _pin_one(plan, rng, {**spec.description, spec.attribute: first_value})
    second = _pin_one(plan, rng, {**spec.other, spec.attribute: second_value}, exclude=[first])
    if first < 0 or second < 0:
        return False
    return plan.forbid(spec.description, [first]) and plan.forbid(spec.other, [second])


_PLANNERS: dict[str, Callable[[QuestionSpec, _Plan, np.random.Generator], bool]] = {
    "colour": _plan_describe,
    "shape": _plan_describe,
    "exist": _plan_exist,
    "count": _plan_count,
    "relate": _plan_relate,
    "compare": _plan_compare,
}


# ---------------------------------------------------------------------------------------------
# Filling in the attributes the plan leaves free


def _fill_attributes(rng: np.random.Generator, plan: _Plan) -> list[dict[str, str]] | None:
    """Pinned attributes plus uniform random ones, repaired until no forbidden match is left."""
    attributes = [
        {a: pin.get(a) or pick(rng, VALUES[a]) for a in ATTRIBUTE_ORDER} for pin in plan.pins
    ]
    for _ in range(_REPAIR_STEPS):
        clash = _first_clash(attributes, plan)
        if clash is None:
            return attributes
        index, description = clash
        free = [a for a in description if a not in plan.pins[index]]
        if not free:
            return None
        attribute = pick(rng, free)
        others = tuple(v for v in VALUES[attribute] if v != description[attribute])
        attributes[index][attribute] = pick(rng, others)
    return None


def _first_clash(
    attributes: Sequence[dict[str, str]], plan: _Plan
) -> tuple[int, Description] | None:
    """The first (object, description) pair that breaks one of the plan's forbidden matches."""
    for description, allowed in plan.forbidden:
        for index in matching(attributes, description):
            if index not in allowed:
                return index, description
    return None
