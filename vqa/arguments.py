"""``TrainingArguments``: what ``vqa train`` accepts, defined once for Python and the command line.

Each field carries its command-line help in its metadata, and :func:`add_arguments` builds the
``--flag`` of every field from it (``mode`` -> ``--mode``, ``batch_size`` -> ``--batch-size``,
``progress: bool = True`` -> ``--no-progress``). :func:`from_namespace` maps the parsed flags back
to the dataclass. So a new option is one new field here, and nothing else.

This module imports no torch, so that ``vqa --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from hybrid_attention import ESTIMATORS, MODES
from vqa.class_attention import ENCODER_RULES
from vqa.conditioning import CONDITIONINGS
from vqa.estimators import ENTROPY_SCHEDULES, REINFORCE_BASELINES
from vqa.presets import Preset

DATA_HELP = (
    "'synthetic' (the embedded scenes), a local-format directory, the official VQA files "
    "(a directory or a JSON spec), a save_to_disk or parquet directory, or a hub id"
)
DATASET_FIELDS = ("image_column", "question_column", "answer_column", "on_bad_image")
K_WORDS = {"auto": "top_p", "budget": "budget"}  # --k word -> HybridVQAConfig.fusion_k_rule
K_HELP = (
    "regions kept in hard and hybrid modes: a number, 'auto' (per question, the fewest whose "
    "attention mass reaches --top-p) or 'budget' (per question, a learned k, penalised by "
    "--k-penalty); adaptive k stays in --k-min..--k-max"
)
ADAPTIVE_K_FIELDS = ("k_min", "k_max", "top_p")


def count_or_ratio(text: str) -> int | float:
    """``"16"`` -> 16, ``"0.25"`` -> 0.25 (argparse type of a number of tokens to keep)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count (16) or a ratio in (0, 1] (0.25), got {text!r}"
        ) from None


def k_or_rule(text: str) -> int | str:
    """``"8"`` -> 8; ``"auto"`` and ``"budget"`` stay words (argparse type of ``--k``)."""
    if text in K_WORDS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of regions (8), 'auto' (top-p) or 'budget', got {text!r}"
        ) from None


def fusion_k_settings(args: object) -> dict:
    """``HybridVQAModel.set_fusion``'s ``k``, ``k_rule``, ``k_min``, ``k_max`` and ``top_p`` from
    the ``--k``, ``--k-min``, ``--k-max`` and ``--top-p`` of ``args`` (None where not given)."""
    k = args.k
    return {
        "k": k if isinstance(k, int) else None,
        "k_rule": K_WORDS.get(k) if isinstance(k, str) else None,
        **{name: getattr(args, name) for name in ADAPTIVE_K_FIELDS},
    }


def option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A dataclass field with a default and the ``argparse`` options of its flag.

    ``argparse_options`` go to ``add_argument`` as they are (``choices``, ``metavar``, ...),
    except ``group``: the title of the help section the flag is listed in.
    """
    return field(default=default, metadata={"help": help, **argparse_options})


# The auxiliary loss weights of HybridVQAConfig that are flags too.
LOSS_WEIGHTS = (
    "region_loss_weight",
    "pointing_loss_weight",
    "reconstruction_loss_weight",
    "contrast_loss_weight",
    "glimpse_loss_weight",
)


@dataclass
class TrainingArguments:
    """Everything ``vqa train`` accepts; ``None`` means "what the preset says".

    The help text of each field (its ``metadata``) is the documentation; ``vqa train --help``
    prints it.
    """

    output: str = field(metadata={"help": "run directory", "required": True})
    data: str = option("synthetic", DATA_HELP)
    image_column: str = option("image", "Hugging Face datasets only", group="dataset columns")
    question_column: str = option("question", "Hugging Face datasets only", group="dataset columns")
    answer_column: str | None = option(
        None,
        "Hugging Face datasets only (default: answers, answer or multiple_choice_answer)",
        group="dataset columns",
    )
    on_bad_image: str = option(
        "fail",
        "an image that does not decode stops the command, or its rows are skipped",
        choices=("fail", "skip"),
    )
    max_answers: int = option(3129, "answer vocabulary size (the most frequent training answers)")
    preset: str = option("default", "bundle of model, training and data sizes (vqa.presets)")
    mode: str | None = option(None, "fusion mode (default: the preset's)", choices=MODES)
    k: int | str | None = option(None, K_HELP, type=k_or_rule)
    k_min: int | None = option(
        None, "fewest regions an adaptive k keeps (default 1)", group="adaptive k"
    )
    k_max: int | None = option(
        None, "most regions an adaptive k keeps (default 16)", group="adaptive k"
    )
    top_p: float | None = option(
        None,
        "attention mass that --k auto keeps, in (0, 1] (default 0.9)",
        metavar="P",
        group="adaptive k",
    )
    k_penalty: float | None = option(
        None,
        "--k budget's compute penalty: LAMBDA times the expected k is added to the loss "
        "(default 0)",
        metavar="LAMBDA",
        group="adaptive k",
    )
    estimator: str | None = option(None, "gradient estimator of the selection", choices=ESTIMATORS)
    heads: int | None = option(
        None,
        "fusion heads: each selects its own k regions and the reasoner reads every head's "
        "(default: the preset's, 1)",
    )
    hops: int | None = option(
        None,
        "fusion hops: each later hop queries with another part of the question and selects "
        "its own k regions, MAC-style (default: the preset's; the default preset's: 2, or 1 "
        "without boxes)",
    )
    attention_sink: bool = option(
        False,
        "a learned sink logit per fusion head joins the softmax over the regions (hybrid: over "
        "the selected k), so that weight can go to no region rather than to a background one",
    )
    epochs: int | None = option(
        None,
        "training epochs (default: the preset's; the default preset's: 5, or 10 without boxes)",
    )
    batch_size: int | None = option(None, "questions per batch, per process")
    lr: float | None = option(None, "learning rate of the new layers (default: the preset's)")
    seed: int = option(0, "seeds initialisation, shuffling and sampling")
    mixed_precision: str = option(
        "auto",
        "auto: the launcher's --mixed_precision if given, else bf16 on a GPU that supports it "
        "and no (fp32) otherwise",
        choices=("auto", "no", "bf16", "fp16"),
    )
    grad_accum: int = option(1, "batches per optimizer step")
    resume: bool = option(False, "continue the run in --output from its last checkpoint")
    save_every_steps: int | None = option(
        None, "also checkpoint every N optimizer steps", metavar="N"
    )
    keep_checkpoints: int = option(2, "newest checkpoints kept")
    log_every_steps: int = option(
        10, "average the losses over the processes and record them every N steps", metavar="N"
    )
    max_bad_steps: int = option(
        5, "stop after N steps in a row with a non-finite loss or gradient", metavar="N"
    )
    vision_stem: str | None = option(
        None, "override the preset's ViT stem ('patch' has no BatchNorm)", choices=("patch", "conv")
    )
    vision_conditioning: str | None = option(
        None,
        "'film': the question scales and shifts the ViT's channels before each block "
        "(blocks run per question; default: the preset's)",
        choices=CONDITIONINGS,
    )
    vision_class_token: bool = option(
        False, "give the built-in ViT a CLS token (--encoder-rule cls needs one)"
    )
    select_after: int | None = option(
        None,
        "ViT blocks that run on every patch token before the question keeps the top "
        "--encoder-k for the remaining blocks (hard and hybrid modes; default: no selection "
        "in the encoder)",
        metavar="BLOCKS",
        group="selection in the vision encoder",
    )
    encoder_k: int | float | None = option(
        None,
        "patch tokens the encoder keeps: a count, or a ratio in (0, 1] (default 0.5)",
        type=count_or_ratio,
        group="selection in the vision encoder",
    )
    encoder_fold: bool = option(
        False,
        "fold the dropped tokens into one extra token, weighted by their scores (EViT)",
        group="selection in the vision encoder",
    )
    encoder_rule: str | None = option(
        None,
        "what ranks the patch tokens: the question (default) or, question-agnostic, the "
        "attention of the ViT's CLS token (EViT's rule; needs a CLS token)",
        choices=ENCODER_RULES,
        group="selection in the vision encoder",
    )
    region_loss_weight: float | None = option(
        None,
        "weight of the auxiliary loss that teaches each region the attributes of the object "
        "under it, where the data's objects have attributes (0: off; default: the preset's)",
    )
    pointing_loss_weight: float | None = option(
        None,
        "weight of the auxiliary loss that teaches the fusion to look at the objects a "
        "question is about, where rows have targets (0: off; default: the preset's)",
    )
    reconstruction_loss_weight: float | None = option(
        None,
        "weight of the box-free auxiliary loss in which each region's vision token redraws "
        "the pixels around it (any data; 0: off; default: the preset's)",
    )
    reconstruction_mask_ratio: float | None = option(
        None,
        "with --reconstruction-loss-weight: share of the regions hidden in a second pass of "
        "each image, which then redraws only the hidden ones (masked image modelling; 0: no "
        "second pass; default: the preset's)",
    )
    answers_only: bool = option(
        False,
        "train as on data without boxes even where the rows have them: the region attribute "
        "and pointing losses off, and the preset's box-free recipe on (what vqa train does "
        "by itself on data without boxes)",
    )
    contrast_loss_weight: float | None = option(
        None,
        "weight of the box-free auxiliary loss in which each region's vision token must find "
        "itself in a shifted view of its image with the colour channels permuted (any data; "
        "0: off; default: the preset's)",
    )
    glimpse_loss_weight: float | None = option(
        None,
        "weight of the box-free auxiliary answer loss of a head that answers from the "
        "question and a softmax of the fusion scores over every region: it teaches the scores "
        "that choose hybrid's top k where to look (any data; 0: off; default: the preset's)",
    )
    init_from: str | None = option(
        None,
        "fine-tune the model of a run or model directory written by vqa train (its "
        "architecture, weights, tokenizer and image transform; the answer head is adapted to "
        "--data's answers). --resume of a run that has a checkpoint loads that instead",
        metavar="RUN",
        group="pretrained encoders",
    )
    vision_pretrained: str | None = option(
        None,
        "timm .safetensors/.npz file (with --vision-model) or directory, or a transformers "
        "ViT/CLIP/DINOv2/SigLIP directory",
        metavar="PATH",
        group="pretrained encoders",
    )
    vision_model: str | None = option(
        None,
        "timm architecture of a weights file, e.g. vit_small_patch16_224",
        group="pretrained encoders",
    )
    text_pretrained: str | None = option(
        None,
        "transformers text model directory with its tokenizer, or 'minilm' (extra [minilm])",
        metavar="DIR",
        group="pretrained encoders",
    )
    image_size: int | None = option(
        None,
        "input size (default: the pretrained one, else the preset's)",
        group="pretrained encoders",
    )
    freeze_vision: bool = option(
        False, "keep the vision encoder fixed", group="pretrained encoders"
    )
    freeze_text: bool = option(False, "keep the text encoder fixed", group="pretrained encoders")
    train_last_blocks: int | None = option(
        None,
        "train only each encoder's last N blocks and final norm",
        metavar="N",
        group="pretrained encoders",
    )
    encoder_lr: float | None = option(
        None,
        "the encoders' learning rate (default: --lr)",
        metavar="LR",
        group="pretrained encoders",
    )
    warmup_ratio: float = option(0.05, "share of the steps with a linear learning-rate warmup")
    soft_warmup: float = option(
        0.0,
        "share of the training steps that hard and hybrid runs train in soft mode first (the "
        "same weights), before their own mode takes over",
    )
    tau_final: float | None = option(
        None,
        "anneal the temperature of the relaxed selection (ste, gumbel; in the fusion and the "
        "encoder) exponentially from the model's fusion_tau to TAU over the training steps "
        "(default: no annealing)",
        metavar="TAU",
        group="estimator training",
    )
    k_start: int | None = option(
        None,
        "hard and hybrid runs start with the fusion keeping K regions (up to all of them, "
        "where hybrid is soft) and shrink it geometrically to the model's fusion_k over the "
        "first --k-anneal of the steps (default: the model's k throughout)",
        metavar="K",
        group="estimator training",
    )
    k_anneal: float = option(
        0.5,
        "share of the training steps over which --k-start shrinks to the model's fusion_k",
        group="estimator training",
    )
    entropy_schedule: str = option(
        "linear",
        "REINFORCE's entropy bonus: the model's reinforce_entropy_weight throughout, or "
        "decayed from it to 0 over the training steps (default: linear)",
        choices=ENTROPY_SCHEDULES,
        group="estimator training",
    )
    reinforce_baseline: str | None = option(
        None,
        "REINFORCE's reward baseline: a moving average per question type, or one for every "
        "question (default: the model's; type for a new model)",
        choices=REINFORCE_BASELINES,
        group="estimator training",
    )
    weight_decay: float = option(0.05, "AdamW weight decay (none on biases and norms)")
    label_smoothing: float | None = option(
        None,
        "share of each answer target spread evenly over all the answers, in [0, 1), in the "
        "trained loss (default: the model's; 0 for a new one)",
        metavar="SHARE",
    )
    ema_decay: float | None = option(
        None,
        "keep an exponential moving average of the weights with this decay (warmed up from 0, "
        "e.g. 0.999); validation scores it and the trained weights, and the saved model is the "
        "average (default: none)",
        metavar="DECAY",
    )
    image_group_size: int | None = option(
        None,
        "at most N questions about one image next to each other in the training order (default: "
        "all of them, each image encoded once per epoch; 1 shuffles the questions freely)",
        metavar="N",
    )
    augment_mirror: bool = option(
        False,
        "flip half of the training images left to right, with left and right swapped in their "
        "questions and answers (not for images whose text is asked about)",
        group="augmentation that keeps every answer true",
    )
    augment_shift: float = option(
        0.0,
        "move each training image's content by up to SHARE of the image side, within its empty "
        "margin, so that nothing leaves the frame (default 0: off)",
        metavar="SHARE",
        group="augmentation that keeps every answer true",
    )
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    eval_batch_size: int = option(128, "questions per validation batch")
    num_workers: int | None = option(
        None,
        "data loading processes (default: half the cores, at most 8; none on 2 cores)",
        metavar="N",
    )
    log_with: str | None = option(None, "an Accelerate tracker, e.g. tensorboard")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        for name in (
            "keep_checkpoints",
            "max_bad_steps",
            "save_every_steps",
            "log_every_steps",
            "image_group_size",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in LOSS_WEIGHTS:
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.answers_only:
            turn_off_box_losses(self)
        ratio = self.reconstruction_mask_ratio
        if ratio is not None and not 0 <= ratio < 1:
            raise ValueError(f"reconstruction_mask_ratio must be in [0, 1), got {ratio!r}")
        shaped = self.encoder_k is not None or self.encoder_fold or self.encoder_rule is not None
        if shaped and not (self.select_after is not None or self.init_from):
            raise ValueError(
                "--encoder-k, --encoder-fold and --encoder-rule shape a selection inside the "
                "vision encoder: give --select-after too"
            )
        shaping = [name for name in (*ADAPTIVE_K_FIELDS, "k_penalty") if getattr(self, name)]
        adaptive = isinstance(self.k, str) or (self.k is None and self.init_from)
        if shaping and not adaptive:
            raise ValueError(
                f"--{shaping[0].replace('_', '-')} shapes an adaptive k: give --k auto or "
                "--k budget too"
            )
        for name in ("heads", "hops"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
            if value is not None and self.init_from:
                raise ValueError(
                    f"--{name} shapes a new model's fusion; --init-from keeps RUN's (its "
                    f"config's fusion_{name})"
                )
        if not 0.0 <= self.augment_shift < 0.5:
            raise ValueError(f"augment_shift must be in [0, 0.5), got {self.augment_shift!r}")
        if not 0.0 <= self.soft_warmup <= 1.0:
            raise ValueError(f"soft_warmup must be in [0, 1], got {self.soft_warmup!r}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}")
        if self.tau_final is not None and not self.tau_final > 0:
            raise ValueError(f"tau_final must be > 0, got {self.tau_final!r}")
        if self.k_start is not None and self.k_start < 1:
            raise ValueError(f"k_start must be >= 1, got {self.k_start!r}")
        if not 0.0 <= self.k_anneal <= 1.0:
            raise ValueError(f"k_anneal must be in [0, 1], got {self.k_anneal!r}")
        if self.entropy_schedule not in ENTROPY_SCHEDULES:
            raise ValueError(
                f"entropy_schedule must be one of {ENTROPY_SCHEDULES}, got "
                f"{self.entropy_schedule!r}"
            )
        if self.reinforce_baseline not in (None, *REINFORCE_BASELINES):
            raise ValueError(
                f"reinforce_baseline must be one of {REINFORCE_BASELINES}, got "
                f"{self.reinforce_baseline!r}"
            )

    def resolved(self, preset: Preset, overrides: dict | None = None) -> TrainingArguments:
        """A copy whose unset epochs / batch size / lr come from ``overrides`` (for example
        ``Preset.box_free_training``) or else from ``preset``."""
        values, overrides = asdict(self), overrides or {}
        for name in ("epochs", "batch_size", "lr"):
            if values[name] is None:
                values[name] = overrides.get(name, preset.training[name])
        return TrainingArguments(**values)


def loss_weight(name: str, preset: Preset, args: object) -> float:
    """An auxiliary loss weight (``region_loss_weight`` or ``pointing_loss_weight``): that field
    of ``args`` (``TrainingArguments``, ``AblationArguments``) where set, else the preset's
    (default 0)."""
    value = getattr(args, name)
    return float(preset.model.get(name, 0.0) if value is None else value)


def flag_type(annotation: Any) -> Any:
    """The value type of a field annotation: ``int | None`` -> ``int``; a union of several
    types stays a union (its field names a ``type`` in its metadata)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return kinds[0] if len(kinds) == 1 else annotation
    return annotation


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, names: Sequence[str] | None = None
) -> None:
    """Add a ``--flag`` to ``parser`` for each field of the dataclass ``cls`` (or ``names``).

    The flag's help, choices and other options come from the field's metadata; its default is
    the field's, so a parsed namespace holds exactly what the dataclass would get.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in dataclasses.fields(cls):
        if names is not None and item.name not in names:
            continue
        options = dict(item.metadata)
        title = options.pop("group", None)
        target = (
            parser if title is None else groups.setdefault(title, parser.add_argument_group(title))
        )
        flag = "--" + item.name.replace("_", "-")
        value_type = flag_type(hints[item.name])
        if value_type is bool and item.default:
            target.add_argument(
                "--no-" + item.name.replace("_", "-"),
                dest=item.name,
                action="store_false",
                help=f"do not {options['help']}",
            )
        elif value_type is bool:
            target.add_argument(flag, action="store_true", **options)
        else:
            if item.default is not dataclasses.MISSING:
                options["default"] = item.default
            options.setdefault("type", value_type)
            target.add_argument(flag, **options)


DataclassT = TypeVar("DataclassT")


def from_namespace(cls: type[DataclassT], args: argparse.Namespace, **overrides: Any) -> DataclassT:
    """The dataclass ``cls`` built from the flags that :func:`add_arguments` added."""
    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(cls)}
    return cls(**{**values, **overrides})


def turn_off_box_losses(args: object) -> None:
    """Set ``args``' region attribute and pointing loss weights to 0, as ``--answers-only``
    does (``TrainingArguments``, ``vqa.ablation.AblationArguments``); a positive one
    contradicts it: a ValueError that names its flag."""
    for name in ("region_loss_weight", "pointing_loss_weight"):
        value = getattr(args, name)
        if value:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"--answers-only turns every box-reading loss off, but {flag} {value:g}"
            )
        setattr(args, name, 0.0)
