"""The training loop: one readable function on Accelerate (CPU, one GPU, many GPUs).

``train(TrainingArguments(...))`` builds the run (``vqa.run_setup``), prepares it with
Accelerate, loops over the epochs, evaluates after each and saves. It writes into the run
directory:
- the best model (``config.json``, ``model.safetensors``; with ``--ema-decay`` the moving
  average of the weights, ``vqa.weight_average``) and its processor files,
- ``metrics.json``: per epoch the training loss, validation scores and wall time,
- ``README.md`` (the model card, ``vqa.model_card``) and ``curves.png`` (``vqa.curves``),
- ``checkpoint/``: everything ``--resume`` needs (``vqa.checkpoints``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from timm.utils.model_ema import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqa.arguments import TrainingArguments
from vqa.checkpoints import STATE_FILE, clear_checkpoints, latest_checkpoint, save_checkpoint
from vqa.configuration import HybridVQAConfig
from vqa.curves import CURVES_FILE, plot_training_curves
from vqa.estimators import (
    annealed_k,
    annealed_tau,
    check_k_schedule,
    scheduled_entropy_weight,
)
from vqa.evaluation import evaluate
from vqa.files import write_json
from vqa.finetune import freeze_batchnorm_statistics
from vqa.model_card import write_model_card
from vqa.presets import get_preset
from vqa.run_setup import RunSetup, setup_run
from vqa.weight_average import load_weight_average, make_weight_average

METRICS_FILE = "metrics.json"
# With --ema-decay the val_* scores are the weight average's, these the trained weights'.
RAW_SCORES = ("val_raw_accuracy", "val_raw_accuracy_by_type", "val_raw_pointing_accuracy")
# Config fields that change what the weights mean without changing their shapes (and hops, whose
# weights a resumed model without them would not load): --resume checks them.
RESUME_CHECKED = ("fusion_heads", "fusion_hops", "vision_heads", "text_heads")

logger = get_logger(__name__)


def epoch_progress() -> dict:
    """What the current epoch has done so far; checkpoints save it for a mid-epoch resume."""
    return {
        "batches": 0,
        "losses": [],
        "answer_losses": [],
        "region_losses": [],
        "pointing_losses": [],
        "reconstruction_losses": [],
        "contrast_losses": [],
        "glimpse_losses": [],
        "seconds": 0.0,
        "skipped_steps": 0,
        "skipped_bad_image_questions": 0,
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

    Under fp16 the gradient scaler decides instead: its ``step`` skips an update whose
    gradients overflowed and lowers the loss scale, so the optimizer step is always called
    there. Skipping it would also skip ``scaler.update()``, and the next clipping would then
    unscale gradients that the scaler believes are unscaled already (a RuntimeError).
    Returns whether the weights changed; the gradients are cleared either way.
    """
    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    if accelerator.scaler is not None:
        optimizer.step()
        applied = not optimizer.step_was_skipped
    else:
        applied = finite_loss and (norm is None or bool(torch.isfinite(norm)))
        if applied:
            optimizer.step()
    if applied:
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


def resolve_precision(requested: str) -> str:
    """The mixed precision a run uses: ``requested``, unless it is ``auto``.

    ``auto`` takes the launcher's choice (``accelerate launch --mixed_precision``, which sets
    ``ACCELERATE_MIXED_PRECISION``) where there is one, else bf16 on a GPU that supports it
    (Ampere and newer) and fp32 (``no``) elsewhere: fp16 needs loss scaling and CPUs gain
    nothing from bf16 autocast.
    """
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return os.environ["ACCELERATE_MIXED_PRECISION"]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """An Accelerator with the run's precision (``args.mixed_precision`` resolved), gradient
    accumulation and tracker. On a GPU, fp32 matrix multiplies may use TF32 tensor cores."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Accelerate keeps its settings in a process-wide singleton; let each call of `train` in
    # one process (tests, ablations) choose its own mixed precision. The distributed state
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision=resolve_precision(args.mixed_precision),
        # batches in pinned memory go to the GPU while it works on the previous one
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        gradient_accumulation_steps=args.grad_accum,
        log_with=args.log_with,
        project_dir=args.output,
        cpu=not torch.cuda.is_available(),
    )


def initial_state() -> dict:
    """The trainer state of a new run; checkpoints save it and ``--resume`` loads it."""
    return {
        "epoch": 0,
        "global_step": 0,
        "bad_steps": 0,
        "best_accuracy": None,
        "history": [],
        "progress": epoch_progress(),
    }


def scheduled_values(
    args: TrainingArguments, config: HybridVQAConfig, step: int, total_steps: int
) -> dict[str, float | int | None]:
    """The relaxed selection's ``tau``, REINFORCE's ``entropy_weight`` and the fusion's ``k``
    (None under an adaptive k rule) at the 0-based optimizer ``step`` of ``total_steps``
    (``vqa.estimators``): functions of the step alone, so a resumed run continues them
    exactly. Keywords of ``HybridVQAModel.set_schedule``."""
    fixed = config.fusion_k_rule == "fixed"
    return {
        "k": annealed_k(args.k_start, config.fusion_k, args.k_anneal, step, total_steps)
        if fixed
        else None,
        "tau": annealed_tau(config.fusion_tau, args.tau_final, step, total_steps),
        "entropy_weight": scheduled_entropy_weight(
            args.entropy_schedule, config.reinforce_entropy_weight, step, total_steps
        ),
    }


def batch_losses(output: object) -> torch.Tensor:
    """(7,) total, answer, region, pointing, reconstruction, contrast and glimpse loss of a
    batch on this process, detached.

    The answer loss is without REINFORCE's term; a loss the model does not have is 0.
    """
    parts = [output.loss, output.answer_loss.mean()] + [
        output.loss * 0 if part is None else part
        for part in (
            output.region_loss,
            output.pointing_loss,
            output.reconstruction_loss,
            output.contrast_loss,
            output.glimpse_loss,
        )
    ]
    return torch.stack(parts).detach().float()


def record_losses(accelerator: Accelerator, pending: list[torch.Tensor], progress: dict) -> None:
    """Average the ``pending`` batch losses over the processes into ``progress``; clear them.

    Called every ``log_every_steps`` optimizer steps and before a checkpoint or the end of an
    epoch, at the same points in every process: one collective for many batches, and no wait
    for the device after every batch.
    """
    if not pending:
        return
    values = accelerator.reduce(torch.stack(pending), "mean").tolist()
    pending.clear()
    for (
        loss,
        answer_loss,
        region_loss,
        pointing_loss,
        reconstruction_loss,
        contrast,
        glimpse,
    ) in values:
        progress["losses"].append(loss)
        progress["answer_losses"].append(answer_loss)
        progress["region_losses"].append(region_loss)
        progress["pointing_losses"].append(pointing_loss)
        progress["reconstruction_losses"].append(reconstruction_loss)
        progress["contrast_losses"].append(contrast)
        progress["glimpse_losses"].append(glimpse)


def train_epoch(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict,
    args: TrainingArguments,
    total_steps: int,
    average: ModelEmaV3 | None = None,
) -> float:
    """Train the epoch ``state["epoch"]`` (its rest, when resuming mid-epoch) of a run of
    ``total_steps`` optimizer steps.

    Updates ``state`` (steps, bad steps, the epoch's progress) and the moving ``average`` of
    the weights after each applied step, and checkpoints every ``args.save_every_steps``. The
    first ``args.soft_warmup`` of the steps run the fusion in soft mode; each step sets the
    scheduled tau, entropy weight and k (:func:`scheduled_values`).
    The model's own mode, tau, weight and k are back when the epoch ends. Returns the epoch's
    training seconds.
    """
    run, epoch, progress = Path(args.output), state["epoch"], state["progress"]
    unwrapped = accelerator.unwrap_model(model)
    fusion, config = unwrapped.fusion, unwrapped.config
    mode, soft_steps = config.fusion_mode, round(args.soft_warmup * total_steps)
    loader.set_epoch(epoch)  # sets the sampler's epoch too, rather than Accelerate's own count
    loader.collate_fn.set_epoch(epoch)  # the augmentation's draws follow the epoch
    model.train()
    freeze_batchnorm_statistics(model)  # a frozen stem keeps its statistics too
    start = time.perf_counter()
    seen = progress["batches"]  # > 0 when resuming mid-epoch
    bar = tqdm(
        accelerator.skip_first_batches(loader, seen) if seen else loader,
        desc=f"Epoch {epoch + 1}/{args.epochs}",
        initial=seen,
        total=len(loader),
        disable=not (args.progress and accelerator.is_local_main_process),
    )
    pending: list[torch.Tensor] = []
    collator, skipped_before = loader.collate_fn, loader.collate_fn.skipped_rows
    for inputs, _ in bar:
        if accelerator.sync_gradients:  # an optimizer step begins
            fusion.mode = "soft" if state["global_step"] < soft_steps else mode
            unwrapped.set_schedule(
                **scheduled_values(args, config, state["global_step"], total_steps)
            )
            buffers = buffer_copies(model)
            non_finite = torch.zeros((), device=accelerator.device)
        with accelerator.accumulate(model):
            output = model(**inputs)
            accelerator.backward(output.loss)
            pending.append(batch_losses(output))
            non_finite += (~torch.isfinite(pending[-1][0])).float()
            if accelerator.sync_gradients:
                # a NaN loss in any process makes the step bad in every process
                finite_loss = accelerator.reduce(non_finite, "sum").item() == 0
                applied = apply_update(
                    accelerator, model, optimizer, scheduler, args.max_grad_norm, finite_loss
                )
        progress["batches"] += 1
        if not accelerator.sync_gradients:
            continue
        state["global_step"] += 1
        if applied and average is not None:
            average.update(unwrapped, step=state["global_step"])
        if applied or (accelerator.scaler is not None and finite_loss):
            state["bad_steps"] = 0  # an fp16 overflow that the scaler skipped is routine
        else:
            model.load_state_dict(buffers, strict=False)  # undo the bad forward's statistics
            skip_bad_step(state, args.max_bad_steps, run)
        if state["global_step"] % args.log_every_steps == 0:
            record_losses(accelerator, pending, progress)
            if not bar.disable:
                bar.set_postfix(loss=f"{progress['losses'][-1]:.3f}")
        every = args.save_every_steps
        if every and state["global_step"] % every == 0 and progress["batches"] < len(loader):
            record_losses(accelerator, pending, progress)
            progress["seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            save_checkpoint(accelerator, run, state, args.keep_checkpoints, average)
    fusion.mode = mode
    unwrapped.set_schedule(
        tau=config.fusion_tau, entropy_weight=config.reinforce_entropy_weight, k=None
    )
    record_losses(accelerator, pending, progress)
    skipped = torch.tensor(collator.skipped_rows - skipped_before, device=accelerator.device)
    progress["skipped_bad_image_questions"] += int(accelerator.reduce(skipped, "sum"))
    return progress["seconds"] + time.perf_counter() - start


def epoch_record(state: dict, seconds: float, questions: int, lr: float) -> dict:
    """What ``metrics.json`` keeps of the epoch that ``state["progress"]`` holds."""
    progress = state["progress"]
    finite_losses = [value for value in progress["losses"] if math.isfinite(value)]
    return {
        "epoch": state["epoch"] + 1,
        "train_loss": sum(finite_losses) / len(finite_losses) if finite_losses else math.nan,
        "step_losses": progress["losses"],
        "step_answer_losses": progress["answer_losses"],
        "step_region_losses": progress["region_losses"],
        "step_pointing_losses": progress["pointing_losses"],
        "step_reconstruction_losses": progress["reconstruction_losses"],
        "step_contrast_losses": progress["contrast_losses"],
        "step_glimpse_losses": progress["glimpse_losses"],
        "skipped_steps": progress["skipped_steps"],
        "skipped_bad_image_questions": progress["skipped_bad_image_questions"],
        "train_seconds": seconds,
        "train_questions": questions,
        "lr": lr,
    }


def learning_curve(history: list[dict]) -> list[dict]:
    """Validation scores after each epoch of ``history`` (``metrics.json``), against the
    training questions seen and the training seconds spent so far: sample efficiency and
    speed side by side."""
    curve, questions, seconds = [], 0, 0.0
    for record in history:
        questions += record["train_questions"]
        seconds += record["train_seconds"]
        curve.append(
            {
                "epoch": record["epoch"],
                "questions": questions,
                "train_seconds": round(seconds, 1),
                "val_accuracy": record.get("val_accuracy"),
                "val_accuracy_by_type": record.get("val_accuracy_by_type"),
                "val_pointing_accuracy": record.get("val_pointing_accuracy"),
                **{
                    name: record[name]
                    for name in RAW_SCORES
                    if name in record  # with --ema-decay: the trained weights' own scores
                },
            }
        )
    return curve


def save_epoch(
    accelerator: Accelerator,
    model: torch.nn.Module,
    record: dict,
    state: dict,
    args: TrainingArguments,
    average: ModelEmaV3 | None = None,
) -> None:
    """Close the epoch in ``state``, save the model if it is the best so far, and checkpoint.

    The best model has the highest validation accuracy, or the lowest training loss when the
    data has no validation split. With a moving ``average`` of the weights, that is what is
    saved (and what the validation accuracy scored).
    """
    accuracy = record.get("val_accuracy", -record["train_loss"])
    state["history"].append(record)
    state["epoch"], state["progress"] = record["epoch"], epoch_progress()
    if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
        state["best_accuracy"], state["best_epoch"] = accuracy, record["epoch"]
        # the whole weights, gathered from every process under FSDP and DeepSpeed ZeRO-3
        state_dict = (
            accelerator.get_state_dict(model) if average is None else average.module.state_dict()
        )
        accelerator.unwrap_model(model).save_pretrained(
            args.output,
            is_main_process=accelerator.is_main_process,
            save_function=accelerator.save,
            state_dict=state_dict,
        )
    save_checkpoint(accelerator, Path(args.output), state, args.keep_checkpoints, average)


def validate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    average: ModelEmaV3 | None,
    setup: RunSetup,
    args: TrainingArguments,
) -> dict:
    """The validation scores of an epoch as ``val_*`` fields (none without a validation split).

    With a moving ``average`` of the weights, ``val_*`` scores the average (the model that is
    saved) and ``RAW_SCORES`` the trained weights.
    """
    if setup.val_rows is None:
        return {}

    def scores(scored: torch.nn.Module, prefix: str) -> dict:
        found = evaluate(
            scored,  # as prepared: under FSDP only the wrapper holds whole weights
            setup.processor,
            setup.val_rows,
            accelerator=accelerator,
            batch_size=args.eval_batch_size,
            num_workers=args.num_workers,
            on_bad_image=args.on_bad_image,
            progress=args.progress,
        )
        return {f"{prefix}{name}": value for name, value in found.items()}

    if average is None:
        return scores(model, "val_")
    raw = scores(model, "val_raw_")
    # scoring draws from the RNG (the loader's seed): the trained weights follow the same
    # steps as in a run without an average
    with torch.random.fork_rng(devices=[]):
        averaged = scores(average.module, "val_")
    return {**averaged, **{name: raw[name] for name in RAW_SCORES}}


def check_weight_average(checkpoint: Path, saved: dict, ema_decay: float | None) -> None:
    """Raise a ValueError if ``--ema-decay`` differs from the checkpoint's run (checkpoints
    from before it was recorded had none)."""
    if saved.get("ema_decay") != ema_decay:
        was, now = saved.get("ema_decay"), ema_decay
        raise ValueError(
            f"{checkpoint} was trained with "
            + ("no weight average" if was is None else f"--ema-decay {was}")
            + ", but this command has "
            + ("no --ema-decay" if now is None else f"--ema-decay {now}")
            + ": resume with the flags the run started with"
        )


def architecture(config: HybridVQAConfig) -> dict:
    """The config fields that checkpoints record for ``--resume`` to check
    (``RESUME_CHECKED``): head and hop counts change what the weights mean, not their shapes."""
    return {name: getattr(config, name) for name in RESUME_CHECKED}


def check_architecture(checkpoint: Path, saved: dict, config: HybridVQAConfig) -> None:
    """Raise a ValueError if the model this command built differs from the checkpoint's in a
    field of ``RESUME_CHECKED`` (checkpoints from before they were recorded are not checked)."""
    for name, value in saved.get("architecture", {}).items():
        if getattr(config, name) != value:
            raise ValueError(
                f"{checkpoint} was trained with {name} = {value}, but this command builds "
                f"{getattr(config, name)}: resume with the model flags the run started with "
                "(--heads, --hops, --preset)"
            )


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> None:
    """``accelerator.load_state``, with a ValueError that says what to do when the model this
    command built is not the one the checkpoint holds (a model flag of the run left out or
    changed, e.g. ``--hops``)."""
    try:
        accelerator.load_state(str(checkpoint))
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        raise ValueError(
            f"{checkpoint} holds another model than this command builds: resume with the "
            "model flags the run started with (metrics.json's 'arguments' lists them once an "
            f"epoch has ended). {error}"
        ) from error


def train(args: TrainingArguments) -> dict:
    """Train a model as ``args`` says; return the run summary also written to metrics.json."""
    preset = get_preset(args.preset)
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    run = Path(args.output)
    checkpoint = latest_checkpoint(run) if args.resume else None
    if args.resume and checkpoint is None:
        accelerator.print(f"No checkpoint in {run}: starting a new run.")
    if not args.resume and (found := clear_checkpoints(accelerator, run)):
        accelerator.print(
            f"A new run in {run}: removed the {found} checkpoint(s) of the run trained there "
            "before (--resume continues a run instead)."
        )

    setup = setup_run(args, preset, accelerator)
    args = setup.args  # epochs, batch size and learning rate resolved
    model, optimizer, loader, scheduler = accelerator.prepare(
        setup.model, setup.optimizer, setup.loader, setup.scheduler
    )
    accelerator.init_trackers("hybrid-vqa", config={k: str(v) for k, v in asdict(args).items()})
    config = accelerator.unwrap_model(model).config
    regions = accelerator.unwrap_model(model).fusion_tokens()  # fewer after encoder selection
    check_k_schedule(
        args.k_start, config.fusion_k, config.fusion_mode, config.fusion_k_rule, regions
    )
    average = make_weight_average(accelerator, model, args.ema_decay)
    state = {**initial_state(), "architecture": architecture(config), "ema_decay": args.ema_decay}
    if checkpoint is not None:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        check_architecture(checkpoint, saved, config)
        check_weight_average(checkpoint, saved, args.ema_decay)
        load_checkpoint(accelerator, checkpoint)
        load_weight_average(average, checkpoint)
        state = {**saved, "architecture": architecture(config), "ema_decay": args.ema_decay}
        # a checkpoint from before a loss series was recorded starts that series mid-epoch
        state["progress"] = {**epoch_progress(), **state["progress"]}
        accelerator.print(f"Resuming from {checkpoint}.")
    precision = {
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "tf32": accelerator.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
    }
    accelerator.print(
        f"Training in {accelerator.num_processes} process(es) on {precision['device']}, "
        f"mixed precision {precision['mixed_precision']}"
        + (", TF32 matmuls" if precision["tf32"] else "")
        + "."
    )
    summary = {
        "arguments": asdict(args),
        "processes": accelerator.num_processes,
        **precision,
        "answer_coverage": setup.coverage,
        "config": accelerator.unwrap_model(model).config.to_dict(),
    }

    total_steps = math.ceil(len(loader) / args.grad_accum) * args.epochs
    while state["epoch"] < args.epochs:
        seconds = train_epoch(
            accelerator, model, loader, optimizer, scheduler, state, args, total_steps, average
        )
        record = epoch_record(state, seconds, len(setup.train_rows), scheduler.get_last_lr()[0])
        # the schedules' values at the epoch's last step
        record.update(scheduled_values(args, config, state["global_step"] - 1, total_steps))
        record.update(validate(accelerator, model, average, setup, args))
        accelerator.log(record, step=record["epoch"])
        accelerator.print(
            f"epoch {record['epoch']}: loss {record['train_loss']:.4f}"
            + (f", val accuracy {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
            + (
                f" (weight average; trained weights {record['val_raw_accuracy']:.4f})"
                if "val_raw_accuracy" in record
                else ""
            )
            + f" ({seconds:.0f} s)"
            + (
                f"; {record['skipped_bad_image_questions']} questions about images that do not "
                "decode left out"
                if record["skipped_bad_image_questions"]
                else ""
            )
        )
        save_epoch(accelerator, model, record, state, args, average)
        if accelerator.is_main_process:
            write_json(run / METRICS_FILE, {**summary, **state})
            plot_training_curves({**summary, **state}, run / CURVES_FILE)
            write_model_card(run)
    accelerator.end_training()
    return {**summary, **state}
