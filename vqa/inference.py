"""Load a trained model directory and answer questions about images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vqa.metrics import patch_boxes, rank_regions
from vqa.modeling import HybridVQAModel
from vqa.processing import HybridVQAProcessor

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass
class Prediction:
    """One answered question.

    Attributes:
        answers: the top answers and their probabilities, best first.
        regions: the selected regions (or, in soft mode, the top-weighted ones), best first:
            ``{"rank", "region", "box": [x0, y0, x1, y1] in the input image's pixels, "weight"}``,
            and ``"sees"``, the object attributes the region head reads there (``{}`` for none),
            for models trained with the region attribute loss.
        weights: (N,) head-averaged weight of every region (0 outside the selection).
        grid: (rows, columns) of the region grid.
        mode, k: the fusion settings used.
        truncated: whether the question was cut to the tokenizer's limit.
        milliseconds: time of the model call.
    """

    answers: list[tuple[str, float]]
    regions: list[dict]
    weights: list[float]
    grid: tuple[int, int]
    mode: str
    k: int
    truncated: bool = False
    milliseconds: float = 0.0


def load_model(directory: str | Path) -> tuple[HybridVQAModel, HybridVQAProcessor]:
    """Model and processor from a run directory (safetensors and JSON only), in eval mode."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no config.json)")
    if not (directory / "model.safetensors").is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        refused = f"; refusing to unpickle {', '.join(pickles)}" if pickles else ""
        raise FileNotFoundError(
            f"{directory} has no model.safetensors (only safetensors are read){refused}"
        )
    model = HybridVQAModel.from_pretrained(directory, use_safetensors=True, local_files_only=True)
    processor = HybridVQAProcessor.from_pretrained(directory)
    return model.eval(), processor


@torch.no_grad()
def predict(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    image: Image.Image,
    question: str,
    *,
    mode: str | None = None,
    k: int | None = None,
    top: int = 5,
) -> Prediction:
    """Answer ``question`` about ``image``; ``mode`` / ``k`` override the fusion for this call.

    The model's own fusion settings are restored afterwards.
    """
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    saved = (model.fusion.mode, model.fusion.k)
    model.set_fusion(mode=mode, k=k)
    sees = model.region_head is not None and processor.region_attributes is not None
    try:
        inputs = processor([image], [question])
        start = time.perf_counter()
        output = model(**inputs.to(model.device), return_region_logits=sees)
        milliseconds = 1000 * (time.perf_counter() - start)
        used_mode, used_k = model.fusion.mode, model.fusion.k
    finally:
        model.set_fusion(mode=saved[0], k=saved[1])
    probabilities = output.logits[0].float().softmax(-1)
    best = probabilities.topk(min(top, len(probabilities)))
    answers = [
        (processor.answers.decode(i), float(p))
        for p, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
    ]
    weights = output.attention_weights[0].float().mean(0).cpu()  # (N,)
    scores = output.attention_scores[0].float().mean(0).cpu()  # (N,)
    regions = describe_regions(
        weights, scores, image.size, processor.image_size, model.config.patch_size, used_k
    )
    if output.region_logits is not None:
        attributes = processor.region_attributes.decode(output.region_logits[0].float().cpu())
        for region in regions:
            region["sees"] = attributes[region["region"]]
    side = processor.image_size // model.config.patch_size
    return Prediction(
        answers=answers,
        regions=regions,
        weights=weights.tolist(),
        grid=(side, side),
        mode=used_mode,
        k=used_k,
        truncated=processor.is_truncated(question),
        milliseconds=milliseconds,
    )


def describe_sight(attributes: dict[str, str]) -> str:
    """A region's ``"sees"`` as text, e.g. ``"colour=red shape=circle"``, or ``"no object"``."""
    return " ".join(f"{name}={value}" for name, value in attributes.items()) or "no object"


def describe_regions(
    weights: torch.Tensor,
    scores: torch.Tensor,
    image_size: tuple[int, int],
    input_size: int,
    patch_size: int,
    limit: int,
) -> list[dict]:
    """The ``limit`` highest-weighted regions with positive weight, boxes in image pixels.

    ``weights`` and ``scores`` are (N,); equal weights (hard attention) rank by score.
    """
    boxes = patch_boxes(input_size, patch_size)
    width, height = image_size
    scale = torch.tensor([width / input_size, height / input_size] * 2)
    order = rank_regions(weights, scores)[:limit]
    return [
        {
            "rank": rank + 1,
            "region": int(index),
            "box": [round(v, 1) for v in (boxes[index] * scale).tolist()],
            "weight": float(weights[index]),
        }
        for rank, index in enumerate(order.tolist())
        if weights[index] > 0
    ]
