"""The question grammar: how each family is worded, and the rule that answers it on a scene.

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
count; the anchor then the answer object for relate; both objects for compare). The spatial
relations are defined in `layout`.

A `QuestionSpec` is a question before its scene exists: `sample_wording` draws its wording,
`with_answer` sets the answer to build the scene for, and `question_fields` answers it on a
finished scene.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .config import (
    ANSWER_TYPES,
    ATTRIBUTE_ORDER,
    COLOURS,
    MAX_COUNT,
    QUESTION_TYPES,
    RELATIONS,
    VALUES,
    Description,
    SceneObject,
    answer_space,
)
from .layout import centres, related

_ASK_TRIES = 64  # wordings tried by `ask_question` before it gives up


@dataclass(frozen=True)
class QuestionSpec:
    """A planned question: the family, the answer to build the scene for, and its wording."""

    family: str
    answer: str
    description: Description
    attribute: str = ""  # relate: the attribute asked for; compare: the attribute compared
    relation: str = ""  # relate only
    other: Description = field(default_factory=dict)  # compare only: the second object


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of `options`, uniformly, from a single draw of `rng`."""
    return options[int(rng.random() * len(options))]


# ---------------------------------------------------------------------------------------------
# Wordings


def sample_wording(rng: np.random.Generator, family: str) -> QuestionSpec:
    """A question of `family` without its answer yet."""
    return _WORDINGS[family](rng, family)


def possible_answers(spec: QuestionSpec, answers: Sequence[str]) -> list[str]:
    """`answers` less the ones the wording rules out: the object left of "the red object"
    cannot be red itself."""
    if spec.family == "relate" and len(spec.description) == 1:
        return [a for a in answers if a not in spec.description.values()]
    return list(answers)


def with_answer(spec: QuestionSpec, answer: str) -> QuestionSpec:
    """`spec` set to build its scene for `answer`."""
    if spec.family == "relate":
        return replace(spec, answer=answer, attribute="colour" if answer in COLOURS else "shape")
    return replace(spec, answer=answer)


def _sample_description(rng: np.random.Generator, attributes: Sequence[str]) -> dict[str, str]:
    """A uniformly chosen non-empty subset of `attributes` (in phrase order), uniform values."""
    mask = int(rng.integers(1, 1 << len(attributes)))
    return {a: pick(rng, VALUES[a]) for i, a in enumerate(attributes) if mask >> i & 1}


def _without(attribute: str) -> tuple[str, ...]:
    return tuple(a for a in ATTRIBUTE_ORDER if a != attribute)


def _wording_describe(rng: np.random.Generator, family: str) -> QuestionSpec:
    """colour / shape: "what colour is the large circle?" (never names the asked attribute)."""
    return QuestionSpec(family, "", _sample_description(rng, _without(family)))


def _wording_any(rng: np.random.Generator, family: str) -> QuestionSpec:
    """exist / count: any description, "is there a small red circle?", "how many circles"."""
    return QuestionSpec(family, "", _sample_description(rng, ATTRIBUTE_ORDER))


def _wording_relate(rng: np.random.Generator, family: str) -> QuestionSpec:
    """relate: the anchor and the relation; the answer later decides "what colour/shape"."""
    anchor = _sample_description(rng, ATTRIBUTE_ORDER)
    return QuestionSpec(family, "", anchor, relation=pick(rng, RELATIONS))


def _wording_compare(rng: np.random.Generator, family: str) -> QuestionSpec:
    """compare: "is the <d1> the same <attribute> as the <d2>?" with d1, d2 not naming it."""
    attribute = pick(rng, ATTRIBUTE_ORDER)
    first = _sample_description(rng, _without(attribute))
    second = dict(first)
    # If one description contains the other, both can only name the same object.
    while second.items() <= first.items() or first.items() <= second.items():
        second = _sample_description(rng, _without(attribute))
    return QuestionSpec(family, "", first, attribute, other=second)


_WORDINGS: dict[str, Callable[[np.random.Generator, str], QuestionSpec]] = {
    "colour": _wording_describe,
    "shape": _wording_describe,
    "exist": _wording_any,
    "count": _wording_any,
    "relate": _wording_relate,
    "compare": _wording_compare,
}


def _phrase(description: Description, plural: bool = False) -> str:
    """The words for `description`: size, colour, then the shape or "object" ("red circles")."""
    noun = description.get("shape", "object") + ("s" if plural else "")
    return " ".join([description[a] for a in ("size", "colour") if a in description] + [noun])


def _question_text(spec: QuestionSpec) -> str:
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


def question_fields(
    spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int
) -> dict | None:
    """The question row fields of `spec` answered on `objects`; None if it is ill-posed there.

    Returns ``{"question", "answer", "question_type", "answer_type", "targets"}``.
    """
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


def ask_question(
    objects: Sequence[SceneObject],
    family: str,
    rng: np.random.Generator,
    image_size: int = 64,
) -> dict | None:
    """Ask a `family` question about an existing scene (its answer is not balanced).

    Returns the fields of `question_fields`, or None when no well-posed question of that
    family was found (e.g. no uniquely describable object).
    """
    if family not in QUESTION_TYPES:
        raise ValueError(f"family must be one of {QUESTION_TYPES}, got {family!r}")
    answers = answer_space()[family]
    for _ in range(_ASK_TRIES):
        spec = sample_wording(rng, family)
        spec = with_answer(spec, pick(rng, possible_answers(spec, answers)))
        question = question_fields(spec, objects, image_size)
        if question is not None:
            return question
    return None


def matching(objects: Sequence[SceneObject], description: Description) -> list[int]:
    """Indices of the objects that have every attribute value of `description`."""
    return [i for i, o in enumerate(objects) if all(o[a] == v for a, v in description.items())]


def _unique(objects: Sequence[SceneObject], description: Description) -> int | None:
    found = matching(objects, description)
    return found[0] if len(found) == 1 else None


Answer = tuple[str, list[int]]  # (answer, targets)


def _answer_describe(
    spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int
) -> Answer | None:
    target = _unique(objects, spec.description)
    return None if target is None else (objects[target][spec.family], [target])


def _answer_exist(spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int) -> Answer:
    found = matching(objects, spec.description)
    return ("yes" if found else "no"), found


def _answer_count(
    spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int
) -> Answer | None:
    found = matching(objects, spec.description)
    return (str(len(found)), found) if len(found) <= MAX_COUNT else None


def _answer_relate(
    spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int
) -> Answer | None:
    anchor = _unique(objects, spec.description)
    if anchor is None:
        return None
    other = related(centres(o["box"] for o in objects), anchor, spec.relation, image_size)
    return None if other is None else (objects[other][spec.attribute], [anchor, other])


def _answer_compare(
    spec: QuestionSpec, objects: Sequence[SceneObject], image_size: int
) -> Answer | None:
    first, second = _unique(objects, spec.description), _unique(objects, spec.other)
    if first is None or second is None or first == second:
        return None
    same = objects[first][spec.attribute] == objects[second][spec.attribute]
    return ("yes" if same else "no"), [first, second]


_ANSWERERS: dict[str, Callable[[QuestionSpec, Sequence[SceneObject], int], Answer | None]] = {
    "colour": _answer_describe,
    "shape": _answer_describe,
    "exist": _answer_exist,
    "count": _answer_count,
    "relate": _answer_relate,
    "compare": _answer_compare,
}
