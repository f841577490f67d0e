"""The training loop: one readable function on Accelerate (CPU, one GPU, many GPUs).

``train(TrainingArguments(...))`` writes into the run directory:
- the best model (``config.json``, ``model.safetensors``) and its processor files,
- ``metrics.json``: per epoch the training loss, validation scores and wall time,
- ``checkpoint/`` and ``trainer_state.json``: everything ``--resume`` needs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from vqa.cache import synthetic_dataset
from vqa.configuration import HybridVQAConfig
from vqa.data.hub import ColumnMapping
from vqa.data.sources import answerable_rows, load_vqa_dataset
from vqa.encoders import load_text_tokenizer, pretrained_fields, pretrained_image_settings
from vqa.evaluation import evaluate
from vqa.files import write_json
from vqa.finetune import configure_trainable, load_pretrained_encoders, parameter_groups
from vqa.modeling import HybridVQAModel
from vqa.presets import Preset, get_preset
from vqa.processing import ANSWERS_FILE, HybridVQAProcessor, VQACollator

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"

logger = get_logger(__name__)


@dataclass
class TrainingArguments:
    """Everything ``vqa train`` accepts; ``None`` means "what the preset says".

    Attributes:
        output: the run directory.
        data: a dataset directory in the local format, or ``"synthetic"`` (embedded scenes).
        preset: named bundle of model, training and data sizes (see ``vqa.presets``).
        mode, k, estimator: the fusion (soft|hard|hybrid, regions kept, gradient estimator).
        epochs, batch_size, lr: the usual; batch size is per process.
        seed: seeds model initialisation, shuffling and sampling.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (Accelerate).
        grad_accum: batches per optimizer step.
        resume: continue the run in ``output`` from its last checkpoint, mid-epoch included.
        save_every_steps: also checkpoint every this many optimizer steps (None: at the end of
            each epoch only).
        keep_checkpoints: how many of the newest checkpoints to keep.
        max_bad_steps: stop after this many consecutive steps with a non-finite loss or
            gradient (each is skipped with a warning).
        vision_stem: override the preset's ViT stem (``patch`` has no BatchNorm).
        region_loss_weight: weight of the auxiliary loss that teaches each region the
            attributes of the object under it, on data whose ``objects`` have attributes (the
            embedded scenes); 0 turns it off (None: the preset's).
        pointing_loss_weight: weight of the loss that teaches the fusion scores to look at
            the objects each question is about, on rows with ``targets``; 0 turns it off
            (None: the preset's).
        image_column, question_column, answer_column: column names of a Hugging Face dataset
            (None: the usual names, see ``vqa.data.hub``).
        on_bad_image: ``fail`` on an image that does not decode, or ``skip`` its rows.
        max_answers: size of the answer vocabulary (the most frequent training answers).
        image_size: model input size (None: the pretrained vision encoder's, else the preset's).
        vision_pretrained: a pretrained vision encoder: a timm ``.safetensors`` / ``.npz`` file
            (``vision_model`` names its timm architecture) or directory, or a transformers
            directory (ViT, CLIP, DINOv2, SigLIP); see ``vqa.encoders``.
        text_pretrained: a transformers text model directory with its tokenizer, or ``minilm``.
        freeze_vision, freeze_text: keep that encoder's weights fixed.
        train_last_blocks: train only the last N blocks (and final norm) of each encoder.
        encoder_lr: learning rate of the encoders (None: ``lr``).
        warmup_ratio, weight_decay, max_grad_norm: optimizer details.
        log_with: an Accelerate tracker (e.g. ``tensorboard``), or None.
        progress: show progress bars.
    """

    output: str
    data: str = "synthetic"
    preset: str = "default"
    mode: str | None = None
    k: int | None = None
    estimator: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    mixed_precision: str = "no"
    grad_accum: int = 1
    resume: bool = False
    save_every_steps: int | None = None
    keep_checkpoints: int = 2
    max_bad_steps: int = 5
    vision_stem: str | None = None
    region_loss_weight: float | None = None
    pointing_loss_weight: float | None = None
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str | None = None
    on_bad_image: str = "fail"
    max_answers: int = 3129
    image_size: int | None = None
    vision_pretrained: str | None = None
    vision_model: str | None = None
    text_pretrained: str | None = None
    freeze_vision: bool = False
    freeze_text: bool = False
    train_last_blocks: int | None = None
    encoder_lr: float | None = None
    warmup_ratio: float = 0.05
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    eval_batch_size: int = 128
    log_with: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("keep_checkpoints", "max_bad_steps", "save_every_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("region_loss_weight", "pointing_loss_weight"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")

    def resolved(self, preset: Preset) -> TrainingArguments:
        """A copy whose unset epochs / batch size / lr come from ``preset``."""
        values = asdict(self)
        for name in ("epochs", "batch_size", "lr"):
            if values[name] is None:
                values[name] = preset.training[name]
        return TrainingArguments(**values)


class ImageGroupedSampler(Sampler[int]):
    """Shuffles images, and keeps the questions about one image next to each other.

    Batches then hold several questions per image, which the model encodes once.
    """

    def __init__(self, image_paths: list[str], seed: int) -> None:
        groups: dict[str, list[int]] = {}
        for row, path in enumerate(image_paths):
            groups.setdefault(path, []).append(row)
        self.groups = list(groups.values())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            yield from self.groups[group]


def resolve_data_dir(data: str, preset: Preset, progress: bool) -> Path:
    """A dataset directory: ``data`` itself, or the cached embedded dataset for ``synthetic``."""
    if data == "synthetic":
        return synthetic_dataset(**preset.synthetic, progress=progress)
    return Path(data)


def build_model(
    processor: HybridVQAProcessor, preset: Preset, args: TrainingArguments
) -> HybridVQAModel:
    """A fresh model sized by the preset, the processor and the fusion overrides."""
    fields = dict(preset.model)
    fields.update(
        {
            f"fusion_{name}": value
            for name, value in (("mode", args.mode), ("k", args.k), ("estimator", args.estimator))
            if value is not None
        }
    )
    if args.vision_stem is not None:
        fields["vision_stem"] = args.vision_stem
    for name in ("region_loss_weight", "pointing_loss_weight"):
        fields[name] = loss_weight(name, preset, args)
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
    configure_trainable(
        model,
        freeze_vision=args.freeze_vision,
        freeze_text=args.freeze_text,
        train_last_blocks=args.train_last_blocks,
    )
    return model


def loss_weight(name: str, preset: Preset, args: object) -> float:
    """An auxiliary loss weight (``region_loss_weight`` or ``pointing_loss_weight``): that field
    of ``args`` (``TrainingArguments``, ``AblationArguments``) where set, else the preset's
    (default 0)."""
    value = getattr(args, name)
    return float(preset.model.get(name, 0.0) if value is None else value)


def region_objects(rows: Dataset, weight: float) -> list[list[dict]]:
    """The training rows' objects, once per image, when the region loss is on (weight > 0)."""
    if weight <= 0:
        return []
    per_image: dict[str, str] = {}
    for path, objects in zip(rows["image_path"], rows["objects_json"], strict=True):
        per_image.setdefault(path, objects)
    return [json.loads(objects) for objects in per_image.values()]


def region_grid(model: HybridVQAModel) -> int | None:
    """Regions per side of the patch grid when the model learns region attributes, else None."""
    return math.isqrt(model.config.num_regions) if model.region_head is not None else None


def target_grid(model: HybridVQAModel) -> int | None:
    """Regions per side of the patch grid when the model learns to point, else None."""
    return math.isqrt(model.config.num_regions) if model.config.pointing_loss_weight else None


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


def checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of ``run`` (``checkpoint/step-N``), oldest first.

    A checkpoint is complete once renamed from its ``.tmp`` name, which happens after all of
    its files, ``trainer_state.json`` last, are written.
    """
    complete = [
        path
        for path in (run / CHECKPOINT_DIR).glob("step-*")
        if path.suffix != ".tmp" and (path / STATE_FILE).is_file()
    ]
    return sorted(complete, key=lambda path: int(path.name.removeprefix("step-")))


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of ``run``, or None."""
    return next(reversed(checkpoints(run)), None)


def save_checkpoint(accelerator: Accelerator, run: Path, state: dict, keep: int) -> None:
    """Accelerate state + trainer state as ``checkpoint/step-N``; keep the newest ``keep``.

    Written beside as ``step-N.tmp`` and renamed once complete, so a kill at any moment
    leaves the previous checkpoints intact.
    """
    directory = run / CHECKPOINT_DIR
    final = directory / f"step-{state['global_step']:08d}"
    staging = directory / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        write_json(staging / STATE_FILE, state)
        os.replace(staging, final)
        for path in [*directory.glob("step-*.tmp"), *checkpoints(run)[:-keep]]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


def epoch_progress() -> dict:
    """What the current epoch has done so far; checkpoints save it for a mid-epoch resume."""
    return {
        "batches": 0,
        "losses": [],
        "answer_losses": [],
        "region_losses": [],
        "pointing_losses": [],
        "seconds": 0.0,
        "skipped_steps": 0,
    }


def buffer_copies(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the buffers that forward passes update (BatchNorm, REINFORCE baseline)."""
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def apply_update(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    finite_loss: bool,
) -> bool:
    """Clip and apply the accumulated gradients unless the loss or their norm is not finite.

    Under fp16 the gradient scaler skips overflowing steps itself, so there only the loss
    counts. Returns whether the update was applied; the gradients are cleared either way.
    """
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    finite_norm = norm is None or accelerator.scaler is not None or bool(torch.isfinite(norm))
    applied = finite_loss and finite_norm
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad()
    return applied


def skip_bad_step(state: dict, max_bad_steps: int, run: Path) -> None:
    """Count a step whose update was skipped; raise after ``max_bad_steps`` in a row."""
    state["bad_steps"] += 1
    state["progress"]["skipped_steps"] += 1
    step, in_a_row = state["global_step"], state["bad_steps"]
    logger.warning(
        f"step {step}: non-finite loss or gradient, update skipped ({in_a_row} in a row)"
    )
    if in_a_row >= max_bad_steps:
        raise FloatingPointError(
            f"stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or "
            f"gradient; last good checkpoint: {latest_checkpoint(run) or 'none saved yet'}"
        )


def train(args: TrainingArguments) -> dict:
    """Train a model as ``args`` says; return the run summary also written to metrics.json."""
    preset = get_preset(args.preset)
    args = args.resolved(preset)
    # Accelerate keeps its settings in a process-wide singleton; let each call of `train` in
    # one process (tests, ablations) choose its own mixed precision. The distributed state
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.grad_accum,
        log_with=args.log_with,
        project_dir=args.output,
        cpu=not torch.cuda.is_available(),
    )
    set_seed(args.seed)
    run = Path(args.output)
    checkpoint = latest_checkpoint(run) if args.resume else None
    if args.resume and checkpoint is None:
        accelerator.print(f"No checkpoint in {run}: starting a new run.")
    with accelerator.main_process_first():
        data_dir = resolve_data_dir(args.data, preset, args.progress)
        columns = ColumnMapping(args.image_column, args.question_column, args.answer_column)
        splits = load_vqa_dataset(data_dir, columns=columns, on_bad_image=args.on_bad_image)
    if "train" not in splits:
        raise ValueError(f"{data_dir} has no train split; it has {sorted(splits)}")
    train_rows: Dataset = splits["train"]

    # The main process builds and saves the processor and every process loads that copy. A
    # resumed run keeps its own, even when it was killed before its first checkpoint.
    with accelerator.main_process_first():
        keep = args.resume and (run / ANSWERS_FILE).is_file()
        if accelerator.is_main_process and not keep:
            HybridVQAProcessor.train(
                train_rows["question"],
                train_rows["answers"],
                max_answers=args.max_answers,
                object_lists=region_objects(
                    train_rows, loss_weight("region_loss_weight", preset, args)
                ),
                **processor_settings(preset, args),
            ).save_pretrained(run)
        processor = HybridVQAProcessor.from_pretrained(run)
    train_rows, coverage = answerable_rows(train_rows, processor.answers)
    accelerator.print(processor.answers.describe_coverage(coverage) + ", left out of training")
    model = build_model(processor, preset, args)

    sampler = ImageGroupedSampler(train_rows["image_path"], args.seed)
    # Starting an epoch draws a seed from the loader's generator: give it its own, so a resumed
    # epoch does not shift the global RNG stream that dropout and Gumbel noise use.
    loader = DataLoader(
        train_rows,
        batch_size=args.batch_size,
        sampler=sampler,
        collate_fn=VQACollator(
            processor, region_grid=region_grid(model), target_grid=target_grid(model)
        ),
        generator=torch.Generator().manual_seed(args.seed),
    )
    groups = parameter_groups(
        model, lr=args.lr, encoder_lr=args.encoder_lr, weight_decay=args.weight_decay
    )
    optimizer = torch.optim.AdamW(groups)
    total_steps = math.ceil(len(loader) / args.grad_accum) * args.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(args.warmup_ratio * total_steps), total_steps
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.init_trackers("hybrid-vqa", config={k: str(v) for k, v in asdict(args).items()})

    state = {
        "epoch": 0,
        "global_step": 0,
        "bad_steps": 0,
        "best_accuracy": None,
        "history": [],
        "progress": epoch_progress(),
    }
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        accelerator.print(f"Resuming from {checkpoint}.")

    accelerator.print(f"Training in {accelerator.num_processes} process(es).")
    summary = {
        "arguments": asdict(args),
        "processes": accelerator.num_processes,
        "answer_coverage": coverage,
        "config": accelerator.unwrap_model(model).config.to_dict(),
    }
    for epoch in range(state["epoch"], args.epochs):
        progress = state["progress"]
        # Sets the sampler's epoch too; Accelerate would set it from its own count otherwise.
        loader.set_epoch(epoch)
        model.train()
        start = time.perf_counter()
        seen = progress["batches"]  # > 0 when resuming mid-epoch
        bar = tqdm(
            accelerator.skip_first_batches(loader, seen) if seen else loader,
            desc=f"Epoch {epoch + 1}/{args.epochs}",
            initial=seen,
            total=len(loader),
            disable=not (args.progress and accelerator.is_local_main_process),
        )
        for inputs, _ in bar:
            if accelerator.sync_gradients:  # an optimizer step begins
                buffers, finite_loss = buffer_copies(model), True
            with accelerator.accumulate(model):
                output = model(**inputs)
                accelerator.backward(output.loss)
                # mean over processes: each process sees the same values, NaN from any of them
                losses = torch.stack(
                    [output.loss, output.answer_loss.mean()]
                    + [
                        output.loss * 0 if part is None else part
                        for part in (output.region_loss, output.pointing_loss)
                    ]
                )
                loss, answer_loss, region_loss, pointing_loss = accelerator.reduce(
                    losses.detach().float(), "mean"
                ).tolist()
                finite_loss = finite_loss and math.isfinite(loss)
                if accelerator.sync_gradients:
                    applied = apply_update(
                        accelerator, model, optimizer, scheduler, args.max_grad_norm, finite_loss
                    )
            progress["batches"] += 1
            progress["losses"].append(loss)
            progress["answer_losses"].append(answer_loss)  # without REINFORCE's term
            # unweighted; a checkpoint from before this series starts it mid-epoch
            progress.setdefault("region_losses", []).append(region_loss)
            progress.setdefault("pointing_losses", []).append(pointing_loss)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss:.3f}")
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            if applied:
                state["bad_steps"] = 0
            else:
                model.load_state_dict(buffers, strict=False)  # undo the bad forward's statistics
                skip_bad_step(state, args.max_bad_steps, run)
            every = args.save_every_steps
            if every and state["global_step"] % every == 0 and progress["batches"] < len(loader):
                progress["seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                save_checkpoint(accelerator, run, state, args.keep_checkpoints)
        train_seconds = progress["seconds"] + time.perf_counter() - start
        finite_losses = [value for value in progress["losses"] if math.isfinite(value)]
        train_loss = sum(finite_losses) / len(finite_losses) if finite_losses else math.nan

        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "step_losses": progress["losses"],
            "step_answer_losses": progress["answer_losses"],
            "step_region_losses": progress["region_losses"],
            "step_pointing_losses": progress["pointing_losses"],
            "skipped_steps": progress["skipped_steps"],
            "train_seconds": train_seconds,
            "train_questions": len(train_rows),
            "lr": scheduler.get_last_lr()[0],
        }
        if "val" in splits:
            scores = evaluate(
                accelerator.unwrap_model(model),
                processor,
                splits["val"],
                accelerator=accelerator,
                batch_size=args.eval_batch_size,
                progress=args.progress,
            )
            record.update({f"val_{name}": value for name, value in scores.items()})
        accuracy = record.get("val_accuracy", -train_loss)
        accelerator.log(record, step=epoch + 1)
        accelerator.print(
            f"epoch {epoch + 1}: loss {train_loss:.4f}"
            + (f", val accuracy {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
            + f" ({train_seconds:.0f} s)"
        )
        state["history"].append(record)
        state["epoch"], state["progress"] = epoch + 1, epoch_progress()
        if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
            state["best_accuracy"] = accuracy
            state["best_epoch"] = epoch + 1
            accelerator.unwrap_model(model).save_pretrained(
                run, is_main_process=accelerator.is_main_process, save_function=accelerator.save
            )
        save_checkpoint(accelerator, run, state, args.keep_checkpoints)
        if accelerator.is_main_process:
            write_json(run / METRICS_FILE, {**summary, **state})
    accelerator.end_training()
    return {**summary, **state}
