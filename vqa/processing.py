"""HybridVQAProcessor: image transform + question tokenizer + answer vocabulary, in one directory.

Saved beside the model (``save_pretrained``), so that one directory answers questions:
``preprocessor_config.json`` (transformers ``ViTImageProcessor``), ``tokenizer.json`` and
friends (a transformers fast tokenizer), ``answers.json`` (the answer vocabulary), and
``region_attributes.json`` when the training objects had attributes to supervise the regions with.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import string
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    BatchFeature,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ViTImageProcessor,
)

from vqa.augmentation import Augmentation
from vqa.data.answers import AnswerLists, AnswerVocab, soft_scores
from vqa.data.columns import ArrowColumn, value_counts
from vqa.data.formats import BAD_IMAGE_CHOICES, DatasetFormatError
from vqa.data.regions import RegionAttributes, target_regions

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
REGION_ATTRIBUTES_FILE = "region_attributes.json"
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation  # always in the vocab
# What PIL raises for a missing, truncated or corrupt image file, or one too large to be safe.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Question types are hashed into this many buckets (see question_group).
QUESTION_GROUPS = 1024
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_tokenizer(
    questions: Iterable[str] | ArrowColumn, vocab_size: int = 4000
) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer built offline from ``questions`` (strings, or an Arrow
    string column: ``arrow_column(rows, "question")``): "[CLS] q [SEP]".

    The vocabulary is the special tokens, every character seen or in ``ALPHABET`` (alone and
    as a "##" continuation, so few words are unknown) and then the most frequent whole words,
    ties in alphabetical order. It is counted here rather than with ``trainers.WordPieceTrainer``,
    whose result changes from one process to the next (huggingface/tokenizers#1794): the same
    questions must give the same token ids in every run and every process.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for question, repeats in zip(*value_counts(questions), strict=True):  # each split once
        words = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(question))
        for word, _ in words:
            counts[word] += int(repeats)
    characters = sorted({character for word in counts for character in word} | set(ALPHABET))
    vocab = list(SPECIAL_TOKENS.values())  # [PAD] gets id 0
    vocab += characters + [f"##{character}" for character in characters]
    by_frequency = sorted(counts, key=lambda word: (-counts[word], word))
    vocab += [word for word in by_frequency if len(word) > 1][: max(vocab_size - len(vocab), 0)]
    model = models.WordPiece(
        {token: index for index, token in enumerate(vocab)}, unk_token=SPECIAL_TOKENS["unk_token"]
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def question_group(question_type: str) -> int:
    """The bucket of a question type, in 0..QUESTION_GROUPS-1: its CRC-32, the same in every
    process and run (Python's ``hash`` of a string is salted per process). The REINFORCE
    baseline keeps one average per bucket; 65 types (VQAv2's) are expected to share a bucket
    in about 2 pairs."""
    return zlib.crc32(question_type.encode("utf-8")) % QUESTION_GROUPS


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (greyscale, RGBA, palette, 16-bit) as 8-bit RGB; transparency on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class HybridVQAProcessor:
    """Turns images, questions and answers into model inputs, and answer ids back into text.

    Args:
        image_processor: resizes and normalises images to the model's input size.
        tokenizer: a fast tokenizer whose first token is CLS (the fusion query).
        answers: the answer vocabulary (the model's labels).
        max_question_length: questions are truncated to this many tokens.
        region_attributes: the object attributes that label each region (see
            ``vqa.data.regions``), or None when the training rows had none.
    """

    def __init__(
        self,
        image_processor: ViTImageProcessor,
        tokenizer: PreTrainedTokenizerFast,
        answers: AnswerVocab,
        max_question_length: int = 32,
        region_attributes: RegionAttributes | None = None,
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.answers = answers
        self.max_question_length = max_question_length
        self.region_attributes = region_attributes

    @classmethod
    def train(
        cls,
        questions: Iterable[str] | ArrowColumn,
        answer_lists: AnswerLists,
        *,
        image_size: int,
        max_answers: int = 3129,
        tokenizer_vocab_size: int = 4000,
        max_question_length: int = 32,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        tokenizer: PreTrainedTokenizerBase | None = None,
        object_lists: Iterable[Sequence[dict]] = (),
    ) -> HybridVQAProcessor:
        """Build a processor from training questions and answers, offline.

        Questions and answers may be Python sequences or Arrow columns of the training rows
        (``vqa.data.columns.arrow_column``), which are counted without a loop over the rows.
        A pretrained encoder brings its own ``tokenizer`` (used instead of training one) and
        image normalisation (``image_mean``, ``image_std``; see
        ``vqa.encoders.pretrained_image_settings``). ``object_lists`` (the training rows'
        ``objects``) give the region attributes, when their objects have any.
        """
        image_processor = ViTImageProcessor(
            size={"height": image_size, "width": image_size},
            image_mean=list(image_mean),
            image_std=list(image_std),
        )
        if tokenizer is None:
            tokenizer = train_tokenizer(questions, tokenizer_vocab_size)
        tokenizer.model_max_length = max_question_length
        answers = AnswerVocab.build(answer_lists, max_size=max_answers)
        regions = RegionAttributes.build(object_lists)
        return cls(image_processor, tokenizer, answers, max_question_length, regions)

    @property
    def image_size(self) -> int:
        return int(self.image_processor.size["height"])

    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (U, 3, S, S) float pixel values."""
        rgb = [to_rgb(image) for image in images]
        return self.image_processor(rgb, return_tensors="pt")["pixel_values"]

    def questions(self, questions: Sequence[str]) -> BatchFeature:
        """Questions -> ``input_ids`` and ``attention_mask`` (B, L), padded to the longest."""
        return self.tokenizer(
            list(questions),
            padding="longest",
            truncation=True,
            max_length=self.max_question_length,
            return_token_type_ids=False,  # the model takes ids and mask only (BERT would add these)
            return_tensors="pt",
        )

    def is_truncated(self, question: str) -> bool:
        """Whether ``question`` has more tokens than ``max_question_length``."""
        return len(self.tokenizer(question)["input_ids"]) > self.max_question_length

    def labels(self, answer_lists: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """Answers -> training labels.

        All rows with one answer: (B,) answer ids, -100 where out of vocabulary. Otherwise
        (B, A) VQA soft scores (see :func:`vqa.data.answers.soft_scores`).
        """
        single = all(isinstance(a, str) or len(a) == 1 for a in answer_lists)
        if single:
            ids = [self.answers.encode(a if isinstance(a, str) else a[0]) for a in answer_lists]
            return torch.tensor([-100 if i is None else i for i in ids], dtype=torch.long)
        scores = torch.zeros(len(answer_lists), len(self.answers))
        for row, answers in enumerate(answer_lists):
            for index, score in soft_scores(answers, self.answers).items():
                scores[row, index] = score
        return scores

    def __call__(self, images: Sequence[Image.Image], questions: Sequence[str]) -> BatchFeature:
        """One image per question -> pixel_values (B, 3, S, S), input_ids, attention_mask."""
        features = self.questions(questions)
        features["pixel_values"] = self.images(images)
        return features

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the image processor, tokenizer and answer vocabulary into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.answers.to_json_file(directory / ANSWERS_FILE)
        if self.region_attributes is not None:
            self.region_attributes.to_json_file(directory / REGION_ATTRIBUTES_FILE)
        else:  # a stale file from an earlier run in this directory would be read back
            (directory / REGION_ATTRIBUTES_FILE).unlink(missing_ok=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> HybridVQAProcessor:
        """Load what :meth:`save_pretrained` wrote (local directory only)."""
        directory = Path(directory)
        for required in ("preprocessor_config.json", "tokenizer.json", ANSWERS_FILE):
            if not (directory / required).is_file():
                raise FileNotFoundError(f"{directory} has no {required}: not a processor directory")
        image_processor = ViTImageProcessor.from_pretrained(directory, local_files_only=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
        answers = AnswerVocab.from_json_file(directory / ANSWERS_FILE)
        regions_file = directory / REGION_ATTRIBUTES_FILE
        regions = RegionAttributes.from_json_file(regions_file) if regions_file.is_file() else None
        return cls(image_processor, tokenizer, answers, tokenizer.model_max_length, regions)


def open_image(image: dict | Image.Image) -> Image.Image:
    """A dataset ``image`` cell ({"path", "bytes"}) or a PIL image -> a loaded PIL image."""
    if isinstance(image, Image.Image):
        return image
    source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    with Image.open(source) as opened:
        opened.load()
        return opened


class VQACollator:
    """Common-format rows -> (model inputs, per-row metadata).

    Each distinct image in a batch is decoded and transformed once; ``image_index`` (B,)
    tells the model which image each question is about. The metadata (answers, question id,
    question and answer type, target boxes scaled to the model's input pixels) is what
    evaluation scores against. ``question_group`` (B,) is the bucket of each question's type
    (:func:`question_group`), for the REINFORCE baseline. With ``region_grid`` (regions per
    side) and a processor that has region attributes, the inputs also hold ``region_labels``
    (U, grid * grid, A): what lies under each region. With ``target_grid``, they hold
    ``target_regions`` (B, grid * grid): the regions of the objects each question is about
    (none for a row without ``target_boxes``). With an ``augmentation`` (training only), each
    image and the rows about it are augmented first (``vqa.augmentation``), by a draw that
    depends on the epoch of :meth:`set_epoch`.

    Images are checked here, when a batch first needs them, not when the dataset is read. An
    image that is missing or does not decode raises DatasetFormatError naming its question id
    and path; with ``on_bad_image="skip"`` the batch leaves out the questions about it instead,
    each such image is logged once (per DataLoader worker), ``skipped_rows`` counts the
    questions left out in every batch so far, in whichever process, and ``bad_images`` maps
    each such image's path to its error (in this process). A batch whose questions are all
    about such images cannot be formed: that raises DatasetFormatError too.
    """

    def __init__(
        self,
        processor: HybridVQAProcessor,
        region_grid: int | None = None,
        target_grid: int | None = None,
        on_bad_image: str = "fail",
        augmentation: Augmentation | None = None,
    ) -> None:
        if on_bad_image not in BAD_IMAGE_CHOICES:
            raise ValueError(
                f"on_bad_image must be one of {BAD_IMAGE_CHOICES}, got {on_bad_image!r}"
            )
        self.processor = processor
        self.region_grid = region_grid if processor.region_attributes is not None else None
        self.target_grid = target_grid
        self.on_bad_image = on_bad_image
        self.bad_images: dict[str, str] = {}
        self.augmentation = augmentation if augmentation and augmentation.active else None
        # Shared with DataLoader worker processes, which call copies of this collator.
        self._skipped = multiprocessing.Value("q", 0)
        self._epoch = multiprocessing.Value("q", 0)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose batches come next: with the seed and image, it decides each
        augmentation draw (also in worker processes, which share the value)."""
        self._epoch.value = epoch

    @property
    def skipped_rows(self) -> int:
        """The questions left out so far for a bad image, by this collator in any worker."""
        return self._skipped.value

    def decode(self, rows: Sequence[dict]) -> tuple[list[dict], dict[str, int], list[Image.Image]]:
        """The rows whose image decodes, the slot of each distinct image, and those images."""
        slots: dict[str, int] = {}
        images: list[Image.Image] = []
        kept, skipped = [], 0
        for row in rows:
            path = row["image_path"]
            if path not in slots and path not in self.bad_images:
                try:
                    images.append(open_image(row["image"]))
                    slots[path] = len(images) - 1
                except BAD_IMAGE_ERRORS as error:
                    self.reject(row, f"{type(error).__name__}: {error}")
            if path in slots:
                kept.append(row)
            else:
                skipped += 1
        if skipped:
            with self._skipped.get_lock():
                self._skipped.value += skipped
        return kept, slots, images

    def augment(
        self, rows: Sequence[dict], slots: dict[str, int], images: Sequence[Image.Image]
    ) -> tuple[list[dict], list[Image.Image]]:
        """The rows and images after one augmentation draw per image (``self.augmentation``)."""
        rows, images = list(rows), [to_rgb(image) for image in images]
        by_slot: dict[int, list[int]] = {}
        for index, row in enumerate(rows):
            by_slot.setdefault(slots[row["image_path"]], []).append(index)
        for slot, indices in by_slot.items():
            asked = [rows[index] for index in indices]
            images[slot], moved = self.augmentation(images[slot], asked, self._epoch.value)
            for index, row in zip(indices, moved, strict=True):
                rows[index] = row
        return rows, images

    def reject(self, row: dict, error: str) -> None:
        """Fail on the bad image of ``row``, or remember it as one to skip."""
        path = row["image_path"]
        if self.on_bad_image == "fail":
            raise DatasetFormatError(
                f"question_id {row['question_id']}: image {path} does not decode ({error}); "
                "pass --on-bad-image skip to leave out the questions about such images"
            )
        logger.warning(
            "skipping the questions about image %s: it does not decode (%s)", path, error
        )
        self.bad_images[path] = error

    def __call__(self, batch: Sequence[dict]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        rows, slots, images = self.decode(batch)
        if batch and not rows:  # nothing left to train or score on: stop, saying why
            raise DatasetFormatError(
                f"every question of a batch of {len(batch)} is about an image that does not "
                f"decode ({len(self.bad_images)} such images so far, e.g. "
                f"{next(iter(self.bad_images))}): is the image directory complete?"
            )
        if self.augmentation is not None:
            rows, images = self.augment(rows, slots, images)
        inputs = dict(self.processor.questions([row["question"] for row in rows]))
        inputs["pixel_values"] = self.processor.images(images)
        inputs["image_index"] = torch.tensor([slots[row["image_path"]] for row in rows])
        inputs["labels"] = self.processor.labels([row["answers"] for row in rows])
        inputs["question_group"] = torch.tensor(
            [question_group(row["question_type"]) for row in rows]
        )
        if self.region_grid is not None:
            inputs["region_labels"] = self._region_labels(rows, slots, images)
        if self.target_grid is not None:
            inputs["target_regions"] = torch.stack(
                [
                    target_regions(
                        row["target_boxes"], images[slots[row["image_path"]]].size, self.target_grid
                    )
                    for row in rows
                ]
            )
        size = self.processor.image_size
        meta = []
        for row in rows:
            width, height = images[slots[row["image_path"]]].size
            scale = torch.tensor([size / width, size / height] * 2)
            boxes = torch.tensor(row["target_boxes"], dtype=torch.float).reshape(-1, 4) * scale
            meta.append(
                {
                    "answers": row["answers"],
                    "question_id": row["question_id"],
                    "question_type": row["question_type"],
                    "answer_type": row["answer_type"],
                    "target_boxes": boxes,
                }
            )
        return inputs, meta

    def _region_labels(
        self, rows: Sequence[dict], slots: dict[str, int], images: Sequence[Image.Image]
    ) -> torch.Tensor:
        """(U, N, A) region labels of each distinct image, from its rows' ``objects_json``."""
        objects: dict[int, list[dict]] = {}
        for row in rows:
            objects.setdefault(slots[row["image_path"]], json.loads(row["objects_json"]))
        return torch.stack(
            [
                self.processor.region_attributes.labels(
                    objects[slot], images[slot].size, self.region_grid
                )
                for slot in range(len(images))
            ]
        )
