"""Load a trained model directory and answer questions about images: one, or a file of them."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from hybrid_attention import describe_k, most_kept
from vqa.data.formats import DatasetFormatError, check_row
from vqa.files import atomic_writer
from vqa.loading import loader_options
from vqa.machine import synchronize
from vqa.metrics import patch_boxes, rank_regions
from vqa.modeling import HybridVQAModel
from vqa.processing import BAD_IMAGE_ERRORS, HybridVQAProcessor, open_image

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DEVICE_NAME = re.compile(r"cpu|cuda(:\d+)?")


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
        mode, k: the fusion settings used; k is an int, or an adaptive rule as text, e.g.
            ``"top-p 0.9 (1..16)"``.
        kept: how many regions the question kept, per fusion head (k, or what the adaptive
            rule chose for it); None in soft mode, which weights every region.
        encoder_kept: the regions whose patch tokens the vision encoder kept, ascending (the
            fusion chose among these); None for a model without a selection in its encoder,
            and in soft mode, which keeps every patch.
        encoder_select_after: how many ViT blocks ran on every patch before the encoder's
            selection; None when ``encoder_kept`` is.
        truncated: whether the question was cut to the tokenizer's limit.
        milliseconds: time of the model call (in a batch, this question's share of it).
    """

    answers: list[tuple[str, float]]
    regions: list[dict]
    weights: list[float]
    grid: tuple[int, int]
    mode: str
    k: int | str
    kept: list[int] | None = None
    encoder_kept: list[int] | None = None
    encoder_select_after: int | None = None
    truncated: bool = False
    milliseconds: float = 0.0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``) checked to be there; None: the best available.

    The best available is ``cuda`` when torch sees a CUDA GPU, else ``cpu``. Raises ValueError,
    with a one-line message, for another name or a GPU that this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device)
    if not DEVICE_NAME.fullmatch(name):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name} is not available: torch sees no CUDA GPU here")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name} is not available: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    return device


def load_model(
    directory: str | Path, device: str | torch.device | None = None
) -> tuple[HybridVQAModel, HybridVQAProcessor]:
    """Model and processor from a run directory (safetensors and JSON only), in eval mode.

    The model is moved to ``device`` (see :func:`resolve_device`; default: the best available).
    """
    device = resolve_device(device)
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (no config.json)")
    if not (directory / "model.safetensors").is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        refused = f"; refusing to unpickle {', '.join(pickles)}" if pickles else ""
        raise FileNotFoundError(
            f"{directory} has no model.safetensors (only safetensors are read){refused}"
        )
    model = HybridVQAModel.from_pretrained(
        directory, use_safetensors=True, local_files_only=True, dtype=torch.float32
    )  # float32 whatever the file stores (the shipped default model stores float16)
    processor = HybridVQAProcessor.from_pretrained(directory)
    return model.to(device).eval(), processor


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
    return predict_batch(model, processor, [image], [question], mode=mode, k=k, top=top)[0]


@dataclass
class PreparedImages:
    """Images ready for the model: (U, 3, S, S) pixel values, and each image's (width, height)
    before resizing (the region boxes are given in those pixels)."""

    pixel_values: torch.Tensor
    sizes: list[tuple[int, int]]

    @classmethod
    def of(cls, images: Sequence[Image.Image], processor: HybridVQAProcessor) -> PreparedImages:
        return cls(processor.images(images), [image.size for image in images])

    def __len__(self) -> int:
        return len(self.sizes)


@torch.no_grad()
def predict_batch(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    images: Sequence[Image.Image] | PreparedImages,
    questions: Sequence[str],
    image_index: Sequence[int] | None = None,
    *,
    mode: str | None = None,
    k: int | None = None,
    top: int = 5,
) -> list[Prediction]:
    """Answer ``questions[b]`` about ``images[image_index[b]]`` in one model call.

    Each image is encoded once, however many questions are about it; ``image_index`` defaults
    to one image per question; ``images`` may also come prepared (:class:`PreparedImages`).
    ``mode`` / a fixed ``k`` override the fusion for this call (None: the
    model's own, which may be an adaptive k); the model's own settings are restored afterwards.
    Returns one :class:`Prediction` per question.
    """
    questions = [question.strip() for question in questions]
    if not all(questions):
        raise ValueError("the question is empty")
    image_index = list(range(len(questions)) if image_index is None else image_index)
    device = model.device
    inputs = processor.questions(questions)
    if not isinstance(images, PreparedImages):
        images = PreparedImages.of(images, processor)
    inputs["pixel_values"] = images.pixel_values  # (U, 3, S, S)
    inputs["image_index"] = torch.tensor(image_index)  # (B,)
    inputs = inputs.to(device, non_blocking=True)
    saved = model.fusion_settings()
    model.set_fusion(mode=mode, k=k)
    sees = model.region_head is not None and processor.region_attributes is not None
    try:
        synchronize(device)  # the inputs are there: time the model alone
        start = time.perf_counter()
        output = model(**inputs, return_region_logits=sees)
        synchronize(device)  # CUDA returns once the work is queued, not done
        milliseconds = 1000 * (time.perf_counter() - start)
        used_mode, used_k = model.fusion.mode, model.fusion.k
    finally:
        model.set_fusion(**saved)
    probabilities = output.logits.float().softmax(-1).cpu()  # (B, A)
    best = probabilities.topk(min(top, probabilities.shape[-1]))
    weights = output.attention_weights.float().mean(1).cpu()  # (B, N)
    scores = output.attention_scores.float().mean(1).cpu()  # (B, N)
    # How many regions to list: every region some head or hop selected (their union), or in
    # soft mode the top k.
    listed = [most_kept(used_k)] * len(questions)
    if output.selected_indices is not None:
        listed = (weights > 0).sum(-1).tolist()
    kept = [None] * len(questions)  # per question: the regions each fusion head kept
    if output.kept_regions is not None:  # (B, H)
        kept = output.kept_regions.cpu().tolist()
    encoder_kept = [None] * len(questions)  # per question: the regions the encoder kept
    select_after = None
    if output.encoder_kept is not None:  # (B, N)
        encoder_kept = [row.nonzero().flatten().tolist() for row in output.encoder_kept.cpu()]
        select_after = model.config.encoder_select_after
    sights = None  # per question: what the region head reads in each region of its image
    if output.region_logits is not None:  # (B, N, classes)
        region_logits = output.region_logits.float().cpu()
        sights = [processor.region_attributes.decode(logits) for logits in region_logits]
    side = processor.image_size // model.config.patch_size
    predictions = []
    for row, (question, slot) in enumerate(zip(questions, image_index, strict=True)):
        regions = describe_regions(
            weights[row],
            scores[row],
            images.sizes[slot],
            processor.image_size,
            model.config.patch_size,
            listed[row],
        )
        if sights is not None:
            for region in regions:
                region["sees"] = sights[row][region["region"]]
        answers = zip(best.values[row].tolist(), best.indices[row].tolist(), strict=True)
        predictions.append(
            Prediction(
                answers=[(processor.answers.decode(i), p) for p, i in answers],
                regions=regions,
                weights=weights[row].tolist(),
                grid=(side, side),
                mode=used_mode,
                k=describe_k(used_k),
                kept=kept[row],
                encoder_kept=encoder_kept[row],
                encoder_select_after=select_after,
                truncated=processor.is_truncated(question),
                milliseconds=milliseconds / len(questions),
            )
        )
    return predictions


def read_questions(path: str | Path) -> list[dict]:
    """The rows of a local-format JSONL file of questions, checked; answers are optional.

    Returns one dict per row: ``where`` (``file:line``), ``image`` (as written), ``image_path``
    (resolved against the file's directory), ``question`` and ``question_id`` (None when the
    row has none).

    Raises:
        DatasetFormatError: a malformed line, a missing field or image (file:line), no rows.
    """
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise DatasetFormatError(f"{where}: malformed JSON ({error.msg})") from None
            # A question to answer needs no ground truth: check it as one without answers.
            check_row({"answers": [], **row} if isinstance(row, dict) else row, path, number)
            image_path = path.parent / row["image"]
            if not image_path.is_file():
                raise DatasetFormatError(
                    f"{where}: image {row['image']!r} not found in {path.parent}"
                )
            rows.append(
                {
                    "where": where,
                    "image": row["image"],
                    "image_path": image_path,
                    "question": row["question"],
                    "question_id": row.get("question_id"),
                }
            )
    if not rows:
        raise DatasetFormatError(f"{path}: the file has no questions")
    return rows


def open_images(rows: Sequence[dict]) -> tuple[list[Image.Image], list[int]]:
    """The distinct images of ``rows`` (from :func:`read_questions`), each opened once, and
    which of them each row is about; an image that does not decode names its file and line."""
    slots: dict[Path, int] = {}
    images: list[Image.Image] = []
    for row in rows:
        if row["image_path"] in slots:
            continue
        try:
            images.append(open_image({"path": str(row["image_path"]), "bytes": None}))
        except BAD_IMAGE_ERRORS as error:
            raise DatasetFormatError(
                f"{row['where']}: image {row['image']!r} does not decode "
                f"({type(error).__name__}: {error})"
            ) from None
        slots[row["image_path"]] = len(images) - 1
    return images, [slots[row["image_path"]] for row in rows]


def write_predictions(
    model: HybridVQAModel,
    processor: HybridVQAProcessor,
    questions: Sequence[dict],
    out: str | Path,
    *,
    batch_size: int = 32,
    mode: str | None = None,
    k: int | None = None,
    top: int = 5,
    progress: bool = True,
    num_workers: int | None = None,
) -> None:
    """Answer ``questions`` (from :func:`read_questions`) and write them to ``out``.

    ``out`` gets one JSON line per question, in order: ``question_id`` (when the row has one),
    ``image`` and ``question`` as the row gives them, then the fields of :class:`Prediction`,
    as ``vqa predict --json`` prints them. ``batch_size`` consecutive questions make one model
    call, each distinct image among them encoded once (so files that keep an image's questions
    together run fastest). ``num_workers`` processes decode and transform the images of the
    next batches while the model answers (None: ``vqa.loading.default_workers``; 0: in this
    process). ``out`` is written atomically: a failure leaves no output.
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    batches = torch.utils.data.DataLoader(
        QuestionBatches(questions, processor, batch_size),
        batch_size=None,  # each item is already a batch
        **loader_options(num_workers, model.device),
    )
    with (
        atomic_writer(out) as lines,
        tqdm(total=len(questions), desc="Predicting", unit="question", disable=not progress) as bar,
    ):
        for batch, images, image_index in batches:
            if isinstance(images, DatasetFormatError):
                raise images
            texts = [row["question"] for row in batch]
            predictions = predict_batch(
                model, processor, images, texts, image_index, mode=mode, k=k, top=top
            )
            for row, prediction in zip(batch, predictions, strict=True):
                lines.write(json.dumps(prediction_record(row, prediction)) + "\n")
            bar.update(len(batch))


class QuestionBatches(torch.utils.data.Dataset):
    """``batch_size`` consecutive questions at a time, with the pixel values of their distinct
    images: what a ``DataLoader`` worker prepares while the model answers another batch.

    Item i: (its rows, its distinct :class:`PreparedImages`, which of them each row is about).
    An image that does not decode makes the item (its rows, the DatasetFormatError, []), so
    that :func:`write_predictions` raises the error naming the file and line in its own
    process, rather than inside a worker's traceback.
    """

    def __init__(
        self, questions: Sequence[dict], processor: HybridVQAProcessor, batch_size: int
    ) -> None:
        self.questions = questions
        self.processor = processor
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.questions) / self.batch_size)

    def __getitem__(
        self, index: int
    ) -> tuple[list[dict], PreparedImages | DatasetFormatError, list[int]]:
        start = index * self.batch_size
        batch = list(self.questions[start : start + self.batch_size])
        try:
            images, image_index = open_images(batch)
        except DatasetFormatError as error:
            return batch, error, []
        return batch, PreparedImages.of(images, self.processor), image_index


def prediction_record(row: dict, prediction: Prediction) -> dict:
    """One line of :func:`write_predictions`: the row's question and its prediction."""
    question_id = {} if row["question_id"] is None else {"question_id": row["question_id"]}
    return {**question_id, "image": row["image"], "question": row["question"], **asdict(prediction)}


def describe_sight(attributes: dict[str, str]) -> str:
    """A region's ``"sees"`` as text, e.g. ``"colour=red shape=circle"``, or ``"no object"``."""
    return " ".join(f"{name}={value}" for name, value in attributes.items()) or "no object"


def describe_encoder_selection(prediction: Prediction) -> str | None:
    """How many patches the vision encoder kept, and where, e.g. ``"encoder kept 8 of 16
    patches after block 1"``; None without a selection in the encoder, or in soft mode."""
    if prediction.encoder_kept is None:
        return None
    where = (
        "before its first block"
        if prediction.encoder_select_after == 0
        else f"after block {prediction.encoder_select_after}"
    )
    kept, total = len(prediction.encoder_kept), len(prediction.weights)
    return f"encoder kept {kept} of {total} patches {where}"


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
