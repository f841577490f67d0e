"""What the app shows for a prediction: the attention picture, the regions table, the answers,
and the model's description."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hybrid_attention import describe_k
from vqa.configuration import HybridVQAConfig
from vqa.inference import Prediction, describe_sight
from vqa.processing import to_rgb

if TYPE_CHECKING:
    from vqa.app.ui import AppModel

TOP_ANSWERS = 5
DISPLAY_SIDE = 384  # attention pictures are drawn this large on their shorter side ...
MAX_DISPLAY_SIDE = 640  # ... and at most this large on their longer one
BOX_COLOUR = (255, 140, 0)
HATCH_COLOUR = (150, 150, 150)  # stripes over the patches that the vision encoder dropped


def attention_overlay(image: Image.Image, prediction: Prediction) -> Image.Image:
    """``image`` with each region shaded by its weight and the selected regions boxed.

    A region keeps its brightness in proportion to its weight (relative to the largest);
    regions without weight are dimmed. The regions in ``prediction.regions`` get an outline and
    their rank. With a selection in the vision encoder, the patches that it dropped are hatched
    with diagonal stripes. The picture is drawn ``DISPLAY_SIDE`` pixels on its shorter side (at
    most ``MAX_DISPLAY_SIDE`` on its longer one): small images are enlarged with their pixels
    kept sharp, so that the boxes are readable; large ones are shrunk, so that it is quick to
    send.
    """
    image = to_rgb(image)
    scale = min(DISPLAY_SIDE / min(image.size), MAX_DISPLAY_SIDE / max(image.size))
    size = (round(image.width * scale), round(image.height * scale))
    upscale = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    base = image.resize(size, upscale)

    rows, cols = prediction.grid
    weights = np.asarray(prediction.weights, dtype=np.float32).reshape(rows, cols)
    strength = weights / weights.max() if weights.max() > 0 else weights
    mask = Image.fromarray(np.uint8(255 * strength)).resize(size, Image.Resampling.NEAREST)
    dimmed = Image.blend(base, Image.new("RGB", size, (0, 0, 0)), 0.7)
    picture = Image.composite(base, dimmed, mask)

    cell = min(size[0] / cols, size[1] / rows)
    if prediction.encoder_kept is not None:
        picture = hatch_dropped(picture, prediction, cell)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, round(cell / 3)))
    line = max(2, round(cell / 24))
    for region in prediction.regions:
        x0, y0, x1, y1 = (value * scale for value in region["box"])
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=line)
        label = str(region["rank"])
        left, top, right, bottom = draw.textbbox((x0 + line, y0 + line), label, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=BOX_COLOUR)
        draw.text((x0 + line, y0 + line), label, fill=(0, 0, 0), font=font)
    return picture


def hatch_dropped(picture: Image.Image, prediction: Prediction, cell: float) -> Image.Image:
    """``picture`` with diagonal stripes over the regions that the vision encoder dropped."""
    rows, cols = prediction.grid
    dropped = np.ones(rows * cols, dtype=bool)
    dropped[prediction.encoder_kept] = False
    where = Image.fromarray(np.uint8(255 * dropped.reshape(rows, cols)))
    where = np.asarray(where.resize(picture.size, Image.Resampling.NEAREST)) > 0  # (H, W)
    period = max(4, round(cell / 4))  # four stripes across a patch
    y, x = np.indices(where.shape)
    stripes = (x + y) % period < max(1, period // 4)
    pixels = np.array(picture)
    pixels[where & stripes] = HATCH_COLOUR
    return Image.fromarray(pixels)


def regions_table(prediction: Prediction) -> list[list]:
    """Rows of (rank, box "x0, y0, x1, y1" in image pixels, weight, what the region sees) for
    the selected regions; "sees" is empty for models without the region attribute head."""
    return [
        [
            region["rank"],
            ", ".join(f"{value:g}" for value in region["box"]),
            round(region["weight"], 4),
            describe_sight(region["sees"]) if "sees" in region else "",
        ]
        for region in prediction.regions
    ]


def answer_confidences(prediction: Prediction) -> dict[str, float]:
    """The top answers as ``{answer: probability}`` for ``gr.Label``."""
    return dict(prediction.answers)


def encoder_selection_info(config: HybridVQAConfig) -> str:
    """The selection inside the vision encoder, as text, e.g. "keeps 8 of 16 patches after
    block 1 (hard and hybrid modes)"."""
    keep = config.encoder_k
    kept = f"{keep:.0%} of the" if isinstance(keep, float) else f"{keep} of"
    after = config.encoder_select_after
    where = "before the first block" if after == 0 else f"after block {after}"
    folded = ", the rest folded into one token" if config.encoder_fold else ""
    rule = " by the CLS token's attention (EViT)" if config.encoder_rule == "cls" else ""
    return (
        f"keeps {kept} {config.num_regions} patches{rule} {where}{folded} (hard and hybrid modes)"
    )


def text_encoder_name(config: HybridVQAConfig) -> str:
    """The text encoder's architecture: a pretrained one's model type and source, or BERT."""
    if config.text_config:
        return f"{config.text_config.get('model_type', 'transformers')} ({config.text_pretrained})"
    return "BERT (trained from scratch)"


def model_info(app_model: AppModel) -> str:
    """Markdown: the checkpoint, its fusion and encoder settings, its recorded val accuracy."""
    config = app_model.model.config
    rows = [
        ("checkpoint", f"`{app_model.directory}`"),
        (
            "fusion",
            f"{config.fusion_mode}, k = {describe_k(app_model.model.fusion.k)} of "
            f"{config.num_regions} regions, "
            f"estimator {config.fusion_estimator}, {config.fusion_heads} head(s)"
            + (f", {config.fusion_hops} hops" if config.fusion_hops > 1 else ""),
        ),
        (
            "vision encoder",
            f"{config.vision_backend} ViT ({config.vision_stem} stem), {config.image_size} px "
            f"input, {config.patch_size} px patches, width {config.vision_hidden_size}, "
            f"{config.vision_layers} layers",
        ),
        (
            "text encoder",
            f"{text_encoder_name(config)}, width {config.text_hidden_size}, "
            f"{config.text_layers} layers, up to {app_model.processor.max_question_length} tokens",
        ),
        ("answers", f"{len(app_model.processor.answers)} in the vocabulary"),
        ("val accuracy", recorded_accuracy(app_model.directory)),
    ]
    if config.encoder_select_after is not None:
        rows.insert(2, ("encoder selection", encoder_selection_info(config)))
    lines = ["| setting | value |", "|---|---|"]
    return "\n".join(lines + [f"| **{name}** | {value} |" for name, value in rows])


def recorded_accuracy(directory: Path) -> str:
    """The val accuracy that ``metrics.json`` records for a run, as text."""
    path = directory / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        history = metrics["history"]
        last = history[-1]["val_accuracy"]
        best = metrics["best_accuracy"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "not recorded (no readable metrics.json in the run directory)"
    return f"{best:.1%} best, {last:.1%} after the last epoch ({len(history)} epochs)"
