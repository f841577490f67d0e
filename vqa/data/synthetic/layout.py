"""Scene layout: object sizes, box placement and the geometry of spatial relations.

Spatial relations (family ``relate``) use box centres ``c = ((x0 + x1) / 2, (y0 + y1) / 2)``
in pixels, with y growing downwards, and the margin ``tau = 0.15 * image_size``:

* B is *left of* A when ``c_A.x - c_B.x >= tau``, *right of* A when ``c_B.x - c_A.x >= tau``,
  *above* A when ``c_A.y - c_B.y >= tau`` and *below* A when ``c_B.y - c_A.y >= tau``.
* "the object left of the <anchor>" is asked only when exactly one object B is left of the
  anchor A and every other object C sits level with or beyond A's centre on the other side
  (``c_A.x - c_C.x <= 0``), so that no third object is even slightly left of the anchor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from .config import SIZES, Box, Point

# (axis, sign): the offset sign * (c_B[axis] - c_A[axis]) is positive in the relation's direction.
_DIRECTIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
_RELATION_MARGIN = 0.15  # tau as a fraction of the image size
_CANDIDATE_POSITIONS = 64  # random positions offered to one sequential placement
_PLACEMENT_RESTARTS = 12  # sequential placements tried before falling back to a jittered grid
_LAYOUT_TRIES = 8  # layouts drawn for a planned scene before the plan is given up


def layout_boxes(
    rng: np.random.Generator,
    sizes: Sequence[str],
    relations: Sequence[tuple[int, int, str]],
    image_size: int,
) -> list[Box] | None:
    """Boxes for objects of `sizes` that satisfy `relations`, or None if a few layouts fail.

    Each relation is (anchor, other, relation): object `other` must be the one object in
    `relation` to object `anchor` under the rule of the module docstring.
    """
    for _ in range(_LAYOUT_TRIES):
        boxes = _arrange(rng, _place_boxes(rng, sizes, image_size), sizes, relations, image_size)
        if boxes is not None:
            return boxes
    return None


def centres(boxes: Iterable[Box]) -> list[Point]:
    """Box centres (x, y) in pixels."""
    return [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]


def related(points: Sequence[Point], anchor: int, relation: str, image_size: int) -> int | None:
    """The one object in `relation` to `anchor` under the module docstring's rule, else None.

    `points` are the centres of all the objects of the scene, as returned by `centres`.
    """
    axis, sign = _DIRECTIONS[relation]
    origin = points[anchor][axis]
    offsets = [sign * (c[axis] - origin) for c in points]
    ahead = [i for i, offset in enumerate(offsets) if offset > 0]
    if len(ahead) == 1 and offsets[ahead[0]] >= _RELATION_MARGIN * image_size:
        return ahead[0]
    return None


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
        mirrored_centres = centres(mirrored)
        pairs = [(a, related(mirrored_centres, a, relation, image_size)) for a in range(len(boxes))]
        pairs = [
            (a, b)
            for a, b in pairs
            if b is not None and sizes[a] == sizes[anchor] and sizes[b] == sizes[other]
        ]
        if not pairs:
            continue
        a, b = pairs[int(rng.random() * len(pairs))]
        arranged = [mirrored[i] for i in _assign(rng, sizes, {anchor: a, other: b})]
        arranged_centres = centres(arranged)
        if all(related(arranged_centres, x, r, image_size) == y for x, y, r in relations[1:]):
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
