"""Region labels from object boxes, for the auxiliary region attribute and pointing losses.

Rows whose ``objects`` carry attributes besides their box (the embedded scenes have
``{"box", "shape", "colour", "size"}``) tell, for every region of the patch grid, which object
is under its centre. :class:`RegionAttributes` is the vocabulary of those attributes, built from
the training objects and saved beside the model; :meth:`RegionAttributes.labels` turns one
image's objects into (N, A) class ids that the model learns to predict from its region tokens.
This teaches the vision encoder what objects look like far sooner than the answers alone do.

Class 0 of every attribute is "no object under this region's centre", so ``objects`` must list
every object in the image, and every row of one image the same ones. A value seen only after
training (or an object without that attribute) is ``IGNORE`` and costs nothing. A field with more
than ``MAX_VALUES`` distinct values (an id, a free-text name) is no attribute to learn and is
left out.

:func:`target_regions` marks, for one question, the regions of the objects it is about (its
``target_boxes``): what the pointing loss teaches the fusion scores to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

IGNORE = -100  # cross-entropy's ignore_index
NO_OBJECT = "<none>"
MAX_VALUES = 100


def target_regions(
    boxes: Sequence[Sequence[float]], image_size: tuple[int, int], grid: int
) -> torch.Tensor:
    """(grid * grid,) 1.0 for the regions whose centre lies in one of ``boxes``, else 0.

    A box too small to hold a region centre marks the region that holds the box's own
    centre, so every target object has at least one region.

    Args:
        boxes: [x0, y0, x1, y1] target boxes in the pixels of the image (x1, y1 exclusive).
        image_size: (width, height) of that image.
        grid: regions per side; region r covers row ``r // grid``, column ``r % grid``.
    """
    width, height = image_size
    centres = (torch.arange(grid, dtype=torch.float) + 0.5) / grid  # (grid,) in 0..1
    xs, ys = centres.repeat(grid) * width, centres.repeat_interleave(grid) * height  # (N,)
    marked = torch.zeros(grid * grid)
    for x0, y0, x1, y1 in ((float(v) for v in box) for box in boxes):
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)  # (N,)
        if not inside.any():
            column = min(max(int((x0 + x1) / 2 / width * grid), 0), grid - 1)
            row = min(max(int((y0 + y1) / 2 / height * grid), 0), grid - 1)
            inside[row * grid + column] = True
        marked[inside] = 1.0
    return marked


@dataclass(frozen=True)
class RegionAttributes:
    """Attribute name -> its values, in a fixed order; class 0 of each is :data:`NO_OBJECT`.

    Attributes:
        values: ``{"colour": ("<none>", "blue", ...), ...}``, names sorted, values sorted after
            the leading ``<none>``.
    """

    values: Mapping[str, tuple[str, ...]]

    @classmethod
    def build(cls, object_lists: Iterable[Sequence[Mapping]]) -> RegionAttributes | None:
        """The attributes of the objects of many rows: every string-valued field but ``box``
        that has at most ``MAX_VALUES`` distinct values.

        Returns None when no object has such a field (nothing to supervise).
        """
        seen: dict[str, set[str]] = {}
        for objects in object_lists:
            for obj in objects:
                for name, value in obj.items():
                    if name != "box" and isinstance(value, str):
                        seen.setdefault(name, set()).add(value)
        names = sorted(name for name, values in seen.items() if len(values) <= MAX_VALUES)
        if not names:
            return None
        return cls({name: (NO_OBJECT, *sorted(seen[name])) for name in names})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    @property
    def num_classes(self) -> dict[str, int]:
        """Attribute name -> number of classes (its values plus "no object")."""
        return {name: len(values) for name, values in self.values.items()}

    def labels(
        self, objects: Sequence[Mapping], image_size: tuple[int, int], grid: int
    ) -> torch.Tensor:
        """One image's objects -> (grid * grid, A) class ids of the object under each region.

        Args:
            objects: ``{"box": [x0, y0, x1, y1], name: value, ...}`` in the pixels of the image.
            image_size: (width, height) of the image the boxes are in.
            grid: regions per side; region r covers row ``r // grid``, column ``r % grid`` of
                an even grid over the image, and is labelled by the object whose box holds
                its centre (the later object where boxes overlap).
        """
        width, height = image_size
        centres = (torch.arange(grid, dtype=torch.float) + 0.5) / grid  # (grid,) in 0..1
        xs = centres.repeat(grid) * width  # (N,) region r's centre x
        ys = centres.repeat_interleave(grid) * height  # (N,)
        labels = torch.zeros(grid * grid, len(self.values), dtype=torch.long)
        for obj in objects:
            x0, y0, x1, y1 = (float(v) for v in obj["box"])
            inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)  # (N,)
            labels[inside] = torch.tensor([self._class(name, obj) for name in self.values])
        return labels

    def decode(self, logits: torch.Tensor) -> list[dict[str, str]]:
        """(N, sum of classes) region head logits -> each region's most likely attributes.

        A region whose most likely class is "no object" for an attribute omits it, so a
        background region gives ``{}``.
        """
        regions: list[dict[str, str]] = [{} for _ in range(logits.shape[0])]
        sizes = [len(values) for values in self.values.values()]
        for name, part in zip(self.values, logits.split(sizes, dim=-1), strict=True):
            for region, index in zip(regions, part.argmax(-1).tolist(), strict=True):
                if index:
                    region[name] = self.values[name][index]
        return regions

    def _class(self, name: str, obj: Mapping) -> int:
        value = obj.get(name)
        values = self.values[name]
        return values.index(value) if value in values and value != NO_OBJECT else IGNORE

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"values": dict(self.values)}, indent=2) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> RegionAttributes:
        """Read what :meth:`to_json_file` wrote; a ValueError names the file when malformed."""
        try:
            values = json.loads(Path(path).read_text())["values"]
            if not values or not all(
                isinstance(v, list)
                and len(v) >= 2
                and v[0] == NO_OBJECT
                and all(isinstance(x, str) for x in v)
                for v in values.values()
            ):
                raise ValueError(f"each attribute must list {NO_OBJECT!r} then its values")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"{path}: not a region attributes file ({error})") from None
        # sorted like `build`, and like config.json's keys, which the model's head follows
        return cls({name: tuple(values[name]) for name in sorted(values)})
