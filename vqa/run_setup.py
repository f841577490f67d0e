"""Everything a training run needs before its first step: data, processor, model, optimizer.

:func:`setup_run` turns ``TrainingArguments`` into a :class:`RunSetup`; ``vqa.training.train``
then prepares it with Accelerate and loops. Fine-tuning choices (pretrained encoders, frozen
blocks, the encoders' learning rate) are made here, through ``vqa.finetune``, and a run that
starts from another one (``--init-from``) is adapted to its data through ``vqa.init_from``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from transformers import get_cosine_schedule_with_warmup

from vqa.arguments import LOSS_WEIGHTS, TrainingArguments, fusion_k_settings, loss_weight
from vqa.augmentation import Augmentation
from vqa.box_free import box_free_fields, box_free_training, rows_have_boxes
from vqa.cache import resolve_data_dir
from vqa.configuration import HybridVQAConfig
from vqa.data.columns import ArrowColumn, arrow_column, distinct_codes, group_rows
from vqa.data.hub import ColumnMapping
from vqa.data.regions import RegionAttributes
from vqa.data.sources import answerable_rows, dataset_splits, load_vqa_dataset
from vqa.encoders import load_text_tokenizer, pretrained_fields, pretrained_image_settings
from vqa.finetune import configure_trainable, load_pretrained_encoders, parameter_groups
from vqa.init_from import (
    adapt_region_head,
    check_init_from,
    describe_tokenizer,
    model_from_run,
    processor_from_run,
)
from vqa.loading import loader_options
from vqa.modeling import HybridVQAModel
from vqa.presets import Preset
from vqa.processing import ANSWERS_FILE, HybridVQAProcessor, VQACollator

TRAINING_SPLITS = ("train", "val")

logger = get_logger(__name__)


@dataclass
class RunSetup:
    """The parts of a run, before ``accelerator.prepare``.

    Attributes:
        train_rows: the training questions that have an answer in the vocabulary.
        val_rows: the validation split, or None when the data has none.
        coverage: the vocabulary's coverage of the training answers (``metrics.json``).
        args: the run's arguments, resolved: unset epochs, batch size and learning rate from
            the preset (its ``box_free_training`` where the data has no boxes).
    """

    processor: HybridVQAProcessor
    model: HybridVQAModel
    train_rows: Dataset
    val_rows: Dataset | None
    coverage: dict[str, float]
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    args: TrainingArguments


class ImageGroupedSampler(Sampler[int]):
    """Shuffles images, and keeps the questions about one image next to each other.

    Batches then hold several questions per image, which the model encodes once. An epoch
    visits the images in a random order (``randperm`` over the images in order of their first
    question) and each image's questions in row order. With ``group_size``, an image's
    questions are split into groups of at most that many (in row order), and the groups are
    shuffled instead: more distinct images per batch, at more image encodings per epoch
    (``group_size=1`` shuffles the questions freely).

    Args:
        image_paths: one per row; an Arrow column (``arrow_column(rows, "image_path")``) is
            grouped without a Python loop over the rows.
        seed: with the epoch, fixes each epoch's order.
        group_size: the most questions about one image in a row; None for all of them.
    """

    def __init__(
        self, image_paths: Sequence[str] | ArrowColumn, seed: int, group_size: int | None = None
    ) -> None:
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be a positive number of questions, got {group_size}")
        self.rows, offsets = group_rows(image_paths)  # (N,), (images + 1,)
        self.starts, self.sizes = offsets[:-1], np.diff(offsets)  # (G,) each image's questions
        if group_size is not None:
            self.starts, self.sizes = split_groups(self.starts, self.sizes, group_size)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        groups = torch.randperm(len(self.starts), generator=generator).numpy()  # (G,)
        sizes = self.sizes[groups]  # (G,) questions of each group, in epoch order
        # The k-th question of a group is self.rows[its start + k]; groups one after another.
        first = np.repeat(self.starts[groups], sizes)  # (N,)
        k = np.arange(len(self.rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # (N,)
        yield from self.rows[first + k].tolist()


def split_groups(
    starts: np.ndarray, sizes: np.ndarray, group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(G,) groups of consecutive rows (start, size) -> (G',) groups of at most ``group_size``:
    each group's rows in order, split after every ``group_size`` of them."""
    counts = -(-sizes // group_size)  # (G,) the pieces of each group
    group = np.repeat(np.arange(len(sizes)), counts)  # (G',)
    piece = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)  # (G',)
    offset = piece * group_size
    return starts[group] + offset, np.minimum(group_size, sizes[group] - offset)


def load_splits(
    args: TrainingArguments, preset: Preset, accelerator: Accelerator
) -> tuple[Path, dict[str, Dataset]]:
    """The dataset's location, and its train split (required) and val split (where there is
    one) of ``args.data``; no other split is read.

    The main process prepares the data first (generating the embedded scenes or converting
    files on first use); the other processes then read what it wrote. Images are decoded
    later, batch by batch (``VQACollator``, which fails on or skips a bad one).
    """
    with accelerator.main_process_first():
        data_dir = resolve_data_dir(args.data, preset, args.progress)
        present = dataset_splits(data_dir)
        wanted = [name for name in TRAINING_SPLITS if name in present]
        columns = ColumnMapping(args.image_column, args.question_column, args.answer_column)
        splits = load_vqa_dataset(data_dir, wanted, columns=columns) if "train" in present else {}
    if "train" not in present:  # raised outside main_process_first, where no process waits
        raise ValueError(f"{data_dir} has no train split; it has {present}")
    return data_dir, dict(splits)


def region_objects(rows: Dataset, weight: float) -> list[list[dict]]:
    """The distinct object lists of the training images (those of each image's first row), in
    order of first occurrence, when the region loss is on (weight > 0); else none.

    ``RegionAttributes.build`` only collects attribute values, so each distinct list is
    decoded once: VQAv2's 82,783 images all have ``[]``.
    """
    if weight <= 0:
        return []
    order, offsets = group_rows(arrow_column(rows, "image_path"))
    first_rows = pa.array(order[offsets[:-1]])
    texts = arrow_column(rows, "objects_json").take(first_rows)
    return [json.loads(text) for text in distinct_codes(texts)[0]]


def processor_settings(preset: Preset, args: TrainingArguments) -> dict:
    """Image size, normalisation and tokenizer of a new processor.

    The pretrained encoders' where ``args`` names them; the image size is ``args.image_size``,
    else the pretrained vision encoder's, else the preset's.
    """
    settings = {"image_size": preset.model.get("image_size", HybridVQAConfig.image_size)}
    if args.vision_pretrained:
        settings.update(pretrained_image_settings(args.vision_pretrained, args.vision_model))
    if args.image_size:
        settings["image_size"] = args.image_size
    if args.text_pretrained:
        settings["tokenizer"] = load_text_tokenizer(args.text_pretrained)
    return settings


def new_processor(
    args: TrainingArguments, preset: Preset, train_rows: Dataset, report: Callable[[str], None]
) -> HybridVQAProcessor:
    """A processor built from ``train_rows``; with ``args.init_from``, that run's processor
    with ``train_rows``' answer vocabulary, and a line to ``report`` on its tokenizer."""
    answers, questions = arrow_column(train_rows, "answers"), arrow_column(train_rows, "question")
    if args.init_from:
        processor = processor_from_run(Path(args.init_from), answers, args.max_answers)
        report(describe_tokenizer(processor.tokenizer, questions.unique().to_pylist()))
        return processor
    return HybridVQAProcessor.train(
        questions,
        answers,
        max_answers=args.max_answers,
        object_lists=region_objects(train_rows, loss_weight("region_loss_weight", preset, args)),
        **processor_settings(preset, args),
    )


def build_processor(
    args: TrainingArguments, preset: Preset, train_rows: Dataset, accelerator: Accelerator
) -> HybridVQAProcessor:
    """The run's tokenizer, image transform and answer vocabulary, saved in the run directory.

    The main process builds and saves it and every process loads that copy, so all of them
    use the same token ids. A resumed run keeps its own, even when it was killed before its
    first checkpoint.
    """
    run = Path(args.output)
    with accelerator.main_process_first():
        keep = args.resume and (run / ANSWERS_FILE).is_file()
        if accelerator.is_main_process and not keep:
            new_processor(args, preset, train_rows, accelerator.print).save_pretrained(run)
        return HybridVQAProcessor.from_pretrained(run)


def fresh_model(
    processor: HybridVQAProcessor,
    preset: Preset,
    args: TrainingArguments,
    box_free: dict | None = None,
) -> HybridVQAModel:
    """A new model sized by the preset, the processor and the fusion overrides, with the
    pretrained encoders' weights where ``args`` names them, and the ``box_free`` config fields
    (``vqa.box_free.box_free_fields``) where the data has no boxes."""
    fields = dict(preset.model)
    fusion = {
        "mode": args.mode,
        "estimator": args.estimator,
        "k_penalty": args.k_penalty,
        "heads": args.heads,
        "hops": args.hops,
    }
    fusion.update(fusion_k_settings(args))
    fields.update({f"fusion_{name}": value for name, value in fusion.items() if value is not None})
    for name in (
        "vision_stem",
        "vision_conditioning",
        "encoder_k",
        "reinforce_baseline",
        "label_smoothing",
    ):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.select_after is not None:
        fields["encoder_select_after"] = args.select_after
    if args.encoder_rule is not None:
        fields["encoder_rule"] = args.encoder_rule
    for name in ("encoder_fold", "vision_class_token"):
        if getattr(args, name):
            fields[name] = True
    if args.attention_sink:
        fields["fusion_sink"] = True
    for name in LOSS_WEIGHTS:
        fields[name] = loss_weight(name, preset, args)
    if args.reconstruction_mask_ratio is not None:
        fields["reconstruction_mask_ratio"] = args.reconstruction_mask_ratio
    fields.update(box_free or {})
    # The processor has region attributes when the run started with the loss on; a resumed
    # run keeps the head it was saved with, even with the weight set to 0 now.
    if processor.region_attributes is not None:
        fields["region_attributes"] = processor.region_attributes.num_classes
    fields.update(
        image_size=processor.image_size,
        text_vocab_size=len(processor.tokenizer),
        max_question_length=processor.max_question_length,
        pad_token_id=processor.tokenizer.pad_token_id,
        id2label=dict(enumerate(processor.answers.answers)),
    )
    fields.update(
        pretrained_fields(
            vision=args.vision_pretrained, vision_model=args.vision_model, text=args.text_pretrained
        )
    )
    model = HybridVQAModel(HybridVQAConfig(**fields))
    load_pretrained_encoders(model)
    return model


def model_of_run(
    processor: HybridVQAProcessor,
    args: TrainingArguments,
    train_rows: Dataset | None,
    report: Callable[[str], None],
) -> HybridVQAModel:
    """The model of ``args.init_from`` adapted to ``processor``'s answers and ``args``; its
    region head learns only where ``train_rows``' objects have its attributes (none: frozen).
    Each adaptation is a line to ``report``."""
    model, notes = model_from_run(args, processor.answers)
    if model.region_head is not None:
        weight = model.config.region_loss_weight
        objects = region_objects(train_rows, weight) if train_rows is not None else []
        found = RegionAttributes.build(objects)
        notes.append(adapt_region_head(model, processor.region_attributes, found))
    for note in notes:
        report(note)
    return model


def build_model(
    processor: HybridVQAProcessor,
    preset: Preset,
    args: TrainingArguments,
    train_rows: Dataset | None = None,
    report: Callable[[str], None] = print,
    has_boxes: bool | None = None,
) -> HybridVQAModel:
    """The run's model, with the encoders frozen as ``args`` says.

    A fresh one (:func:`fresh_model`; with the preset's box-free recipe where ``train_rows``
    have no boxes, or with ``args.answers_only``), or with ``args.init_from`` that run's,
    adapted to the processor and to ``train_rows`` (:func:`model_of_run`; the preset's model
    sizes are not used). ``has_boxes`` says whether ``train_rows`` have boxes where the caller
    knows (None: read them); without ``train_rows`` the data is taken to have boxes.
    """
    if has_boxes is None:
        has_boxes = train_rows is None or rows_have_boxes(train_rows)
    box_free, note = box_free_fields(preset, args, has_boxes)
    if note:
        report(note)
    if args.init_from:
        model = model_of_run(processor, args, train_rows, report)
    else:
        model = fresh_model(processor, preset, args, box_free)
    config = model.config
    if config.fusion_mode != "soft" and config.fusion_k >= config.num_regions:
        logger.warning(
            f"k = {config.fusion_k} keeps all {config.num_regions} regions: {config.fusion_mode} "
            "attention then selects nothing (choose a smaller --k or a larger --image-size)"
        )
    configure_trainable(
        model,
        freeze_vision=args.freeze_vision,
        freeze_text=args.freeze_text,
        train_last_blocks=args.train_last_blocks,
    )
    return model


def region_grid(model: HybridVQAModel) -> int | None:
    """Regions per side of the patch grid when the model learns region attributes, else None.

    A frozen region head (``--init-from`` on data without its attributes) learns nothing.
    """
    head = model.region_head
    learns = head is not None and head.weight.requires_grad
    return math.isqrt(model.config.num_regions) if learns else None


def target_grid(model: HybridVQAModel) -> int | None:
    """Regions per side of the patch grid when the model learns to point, else None."""
    return math.isqrt(model.config.num_regions) if model.config.pointing_loss_weight else None


def build_loader(
    rows: Dataset,
    processor: HybridVQAProcessor,
    model: HybridVQAModel,
    args: TrainingArguments,
    device: torch.device,
    data_root: Path | None = None,
) -> DataLoader:
    """Training batches of ``args.batch_size`` questions, grouped by image, shuffled per epoch,
    loaded by worker processes into memory pinned for ``device`` where that helps, augmented
    as ``args`` says (each draw keyed by an image's path inside ``data_root``)."""
    # Starting an epoch draws a seed from the loader's generator: give it its own, so a resumed
    # epoch does not shift the global RNG stream that dropout and Gumbel noise use.
    return DataLoader(
        rows,
        batch_size=args.batch_size,
        sampler=ImageGroupedSampler(
            arrow_column(rows, "image_path"), args.seed, args.image_group_size
        ),
        collate_fn=VQACollator(
            processor,
            region_grid=region_grid(model),
            target_grid=target_grid(model),
            on_bad_image=args.on_bad_image,
            augmentation=Augmentation(
                args.augment_mirror,
                args.augment_shift,
                args.seed,
                root=None if data_root is None else str(data_root),
            ),
        ),
        generator=torch.Generator().manual_seed(args.seed),
        **loader_options(args.num_workers, device),
    )


def build_optimizer(
    model: HybridVQAModel, steps: int, args: TrainingArguments
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the model's parameter groups and a cosine schedule with warmup over ``steps``."""
    groups = parameter_groups(
        model, lr=args.lr, encoder_lr=args.encoder_lr, weight_decay=args.weight_decay
    )
    optimizer = torch.optim.AdamW(groups)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_ratio * steps), steps)
    return optimizer, scheduler


def setup_run(args: TrainingArguments, preset: Preset, accelerator: Accelerator) -> RunSetup:
    """Data, processor, model, loader, optimizer and schedule of a run, and its arguments
    resolved once the data says whether it has boxes (``RunSetup.args``)."""
    if args.init_from:  # before the data is read
        check_init_from(args)
    data_dir, splits = load_splits(args, preset, accelerator)
    processor = build_processor(args, preset, splits["train"], accelerator)
    train_rows, coverage = answerable_rows(splits["train"], processor.answers)
    accelerator.print(processor.answers.describe_coverage(coverage) + ", left out of training")
    has_boxes = rows_have_boxes(train_rows)
    training, note = box_free_training(preset, args, has_boxes)
    if note:
        accelerator.print(note)
    args = args.resolved(preset, training)
    model = build_model(processor, preset, args, train_rows, accelerator.print, has_boxes)
    loader = build_loader(train_rows, processor, model, args, accelerator.device, data_dir)
    steps = math.ceil(len(loader) / args.grad_accum) * args.epochs
    optimizer, scheduler = build_optimizer(model, steps, args)
    return RunSetup(
        processor=processor,
        model=model,
        train_rows=train_rows,
        val_rows=splits.get("val"),
        coverage=coverage,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        args=args,
    )
