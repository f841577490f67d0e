"""Checks of what a request brings: the uploaded image, the question, the mode and k.

Bad input never reaches the model: a missing image or question, a file that is not an image,
an image too large to decode, or a mode or k the model does not have becomes a ``gr.Error``
with a message that says what to do; a shrunk image still gets an answer, with a note.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps

from hybrid_attention import MODES
from vqa.processing import to_rgb

MAX_IMAGE_SIDE = 1024  # larger images are shrunk (aspect kept) before inference and display
MAX_IMAGE_PIXELS = 40_000_000  # refused before decoding: a small file can hide a huge image
MAX_QUESTION_CHARS = 1000  # longer text is cut before tokenizing (the model reads far fewer)


def refuse(message: str) -> gr.Error:
    """A ``gr.Error`` for bad input: shown to the user, not logged with a traceback."""
    return gr.Error(message, print_exception=False)


@contextmanager
def open_upload(payload: dict | None) -> Iterator[Image.Image | None]:
    """The image in an uploaded file (gradio's ``FileData`` as a dict), opened lazily.

    The app's events skip gradio's own preprocessing, which would fail on a file that is not
    an image with a bare "Error"; gradio still checks that the file is one of its uploads.
    """
    if payload is None:
        yield None
        return
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise refuse("Send the image as an uploaded file.")
    name = Path(payload.get("orig_name") or path).name
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise refuse(f"{name} is no longer on the server: please upload it again.") from error
    except Image.DecompressionBombError as error:
        raise refuse(f"{name} has too many pixels to decode safely.") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise refuse(
            f"{name} is not an image that can be read (PNG, JPEG, WebP, GIF, BMP, TIFF ...)."
        ) from error
    with image:
        yield image


def prepare_image(
    image: Image.Image, max_side: int = MAX_IMAGE_SIDE
) -> tuple[Image.Image, str | None]:
    """Any PIL image -> (8-bit RGB image at most ``max_side`` on its longer side, note or None).

    Greyscale, RGBA, palette and 16-bit images are converted; the note says when the image was
    shrunk. Raises ``gr.Error`` for images too large to decode or damaged files.
    """
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise refuse(
            f"The image is {width}×{height} pixels, more than the "
            f"{MAX_IMAGE_PIXELS // 1_000_000} million this app decodes. Please send a smaller one."
        )
    try:
        image.draft("RGB", (max_side, max_side))  # JPEG only: decode at a reduced scale
        image = to_rgb(ImageOps.exif_transpose(image))
    except OSError as error:
        raise refuse(f"The image file is damaged or incomplete ({error}).") from error
    if max(image.size) <= max_side:
        return image, None
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image, f"The image ({width}×{height}) was scaled down to {image.width}×{image.height}."


def check_question(question: str | None, max_chars: int = MAX_QUESTION_CHARS) -> str:
    """The stripped question, cut to ``max_chars``; ``gr.Error`` when it is empty."""
    question = (question or "").strip()
    if not question:
        raise refuse("Type a question about the image.")
    return question[:max_chars]


def check_k(k: object, num_regions: int, kept: int | None = None) -> int:
    """``k`` as an int in 1..num_regions, and at most ``kept`` (the patches that the vision
    encoder keeps for a hard or hybrid fusion) when given; ``gr.Error`` otherwise."""
    number = isinstance(k, int | float) and not isinstance(k, bool)
    if not number or not 1 <= k <= num_regions or k != int(k):  # NaN and inf fail the range
        raise refuse(
            f"k={k!r} is not possible: this model has {num_regions} regions, "
            f"so k must be a whole number from 1 to {num_regions}."
        )
    if kept is not None and k > kept:
        raise refuse(
            f"k={k!r} is not possible in hard and hybrid modes: the vision encoder keeps "
            f"{kept} patches, so k must be at most {kept}."
        )
    return int(k)


def check_mode(mode: object) -> str:
    """``mode`` if it is one of soft, hard and hybrid; ``gr.Error`` otherwise."""
    if mode not in MODES:
        raise refuse(f"Unknown mode {mode!r}: choose one of {', '.join(MODES)}.")
    return mode


def check_inputs(
    image: Image.Image | None,
    question: str | None,
    k: float | None,
    num_regions: int,
    max_side: int = MAX_IMAGE_SIDE,
    kept: int | None = None,
) -> tuple[Image.Image, str, int, list[str]]:
    """Validated (image, question, k, notes) for one request, or a ``gr.Error``; ``kept`` as
    in :func:`check_k`."""
    if image is None:
        raise refuse("Add an image first: upload one, paste one or pick an example.")
    question = check_question(question)
    k = check_k(k, num_regions, kept)
    image, note = prepare_image(image, max_side)
    return image, question, k, [note] if note else []
