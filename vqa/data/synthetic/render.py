"""The renderer: objects drawn as flat shapes on a grey background, plus pixel noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .config import SceneObject, SyntheticConfig

COLOUR_RGB = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230),
    "yellow": (240, 210, 0), "purple": (150, 40, 200), "cyan": (0, 200, 210),
}  # fmt: skip
BACKGROUND_RGB = (200, 200, 200)


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
    """Fill `obj`'s shape inside its box: the circle and square fill it, the triangle points up."""
    x0, y0, x1, y1 = obj["box"]
    right, bottom = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    fill = COLOUR_RGB[obj["colour"]]
    if obj["shape"] == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle((x0, y0, right, bottom), fill=fill)
    else:
        draw.polygon([(x0, bottom), (right, bottom), ((x0 + right) / 2, y0)], fill=fill)
