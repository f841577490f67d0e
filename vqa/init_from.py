"""Fine-tuning a trained run on new data: ``vqa train --init-from RUN``.

RUN is a run or model directory written by ``vqa train``. The new run starts from its
architecture (``config.json``) and weights (``model.safetensors``, never a pickle), adapted to the
new data:

- Answers: the new data's vocabulary is built as for any run. When it equals RUN's, the answer
  head is kept as it is; otherwise its rows for the answers RUN knew are copied and the others
  start as a fresh model's do, so what RUN learnt about "yes" or "red" survives.
- Tokenizer: RUN's, unchanged. The built-in WordPiece holds every ASCII letter, digit and
  punctuation mark and every character of RUN's questions, each as a word start and as a "##"
  continuation, so a word it lacks as a whole is split into pieces, not lost; new whole-word
  tokens would start untrained, for exactly the rare words. A pretrained tokenizer
  (``--text-pretrained``) stays as its encoder learnt it. The log says how many of the new
  questions' words are split.
- Image transform: RUN's (size and normalisation belong to the vision encoder).
- Region attributes: RUN's head, where it has one, keeps learning when the new objects carry
  attributes it knows (labelled with RUN's values; a value it does not know is ignored). Otherwise
  it is frozen and gets no labels: kept for ``vqa predict``'s "sees", and without parameters that
  take part in no loss, which DDP would stop on.

Fusion mode, k, estimator and the loss weights may still be set (unset weights are RUN's); options
that would change the architecture are refused. ``--resume`` of a run with a checkpoint loads the
checkpoint's weights over these, so there RUN only gives the architecture.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from vqa.arguments import TrainingArguments, fusion_k_settings
from vqa.data.answers import AnswerLists, AnswerVocab
from vqa.data.regions import RegionAttributes
from vqa.modeling import HybridVQAModel
from vqa.processing import ANSWERS_FILE, HybridVQAProcessor

# TrainingArguments fields that would build another architecture than RUN's config.json.
ARCHITECTURE_OPTIONS = (
    "vision_stem",
    "vision_conditioning",
    "vision_class_token",
    "attention_sink",
    "select_after",
    "encoder_fold",
    "image_size",
    "vision_pretrained",
    "vision_model",
    "text_pretrained",
)
RUN_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    ANSWERS_FILE,
)


def check_init_from(args: TrainingArguments) -> None:
    """Raise a one-line ValueError when ``args.init_from`` is not a model directory written by
    ``vqa train``, or when other options of ``args`` would change its architecture."""
    run = Path(args.init_from)
    conflicts = [
        "--" + name.replace("_", "-")
        for name in ARCHITECTURE_OPTIONS
        if getattr(args, name) not in (None, False)
    ]
    if conflicts:
        raise ValueError(
            f"--init-from {run} keeps that model's architecture (its config.json), which "
            f"{', '.join(conflicts)} would change: drop {'it' if len(conflicts) == 1 else 'them'}"
        )
    if not run.is_dir():
        raise ValueError(f"--init-from {run}: no such directory")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ValueError(
            f"--init-from {run} is not a model directory written by vqa train: "
            f"it has no {', '.join(missing)}"
        )


def processor_from_run(
    run: Path, answer_lists: AnswerLists, max_answers: int
) -> HybridVQAProcessor:
    """RUN's tokenizer, image transform and region attributes, with the answer vocabulary
    built from ``answer_lists`` (the new training rows' answers) as for any run."""
    base = HybridVQAProcessor.from_pretrained(run)
    answers = AnswerVocab.build(answer_lists, max_size=max_answers)
    return HybridVQAProcessor(
        base.image_processor,
        base.tokenizer,
        answers,
        base.max_question_length,
        base.region_attributes,
    )


def describe_tokenizer(tokenizer: PreTrainedTokenizerBase, questions: Iterable[str]) -> str:
    """One log line: how many distinct words of ``questions`` ``tokenizer`` splits into pieces
    (and how many it cannot encode at all), words as its own normaliser and pre-tokeniser see
    them."""
    backend = tokenizer.backend_tokenizer
    words: set[str] = set()
    for question in set(questions):
        text = backend.normalizer.normalize_str(question) if backend.normalizer else question
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else []
        words.update(word for word, _ in pieces or [(text, None)])
    tokens = [backend.model.tokenize(word) for word in words]
    split = sum(len(pieces) > 1 for pieces in tokens)
    unknown = sum(any(piece.value == tokenizer.unk_token for piece in pieces) for pieces in tokens)
    return (
        f"tokenizer: RUN's, unchanged; {split} of {len(words)} distinct question words are not "
        "in its vocabulary whole and are split into pieces"
        + (f", {unknown} cannot be encoded ({tokenizer.unk_token})" if unknown else "")
    )


def answer_rows(
    model: HybridVQAModel, final: nn.Linear, old: list[str], new: list[str]
) -> tuple[nn.Linear, int]:
    """A copy of the output layer ``final`` (one row per answer of ``old``) with one row per
    answer of ``new``: a known answer keeps its row (weights and bias), a new one starts as in a
    fresh model. Returns the layer and how many answers kept their rows."""
    layer = nn.Linear(final.in_features, len(new)).to(final.weight.device, final.weight.dtype)
    model._init_weights(layer)
    old_ids = {answer: index for index, answer in enumerate(old)}
    shared = [(index, old_ids[answer]) for index, answer in enumerate(new) if answer in old_ids]
    if shared:
        rows, old_rows = (torch.tensor(ids) for ids in zip(*shared, strict=True))
        with torch.no_grad():
            layer.weight[rows] = final.weight[old_rows]
            layer.bias[rows] = final.bias[old_rows]
    return layer, len(shared)


def adapt_answer_head(model: HybridVQAModel, answers: AnswerVocab) -> str:
    """Give ``model``'s answer head one output per answer of ``answers``, in place (and the
    glimpse readout's, which answers too, where the model has one).

    An answer the model knew keeps its row (weights and bias); a new one starts as in a fresh
    model. ``config.id2label`` / ``label2id`` follow. Returns one log line.
    """
    config = model.config
    old = [config.id2label[index] for index in range(config.num_labels)]
    new = answers.answers
    if old == new:
        return f"answer head: RUN's {len(new)} answers, kept as it is"
    model.head[-1], shared = answer_rows(model, model.head[-1], old, new)
    if model.glimpse is not None:
        model.glimpse.mlp[-1], _ = answer_rows(model, model.glimpse.mlp[-1], old, new)
    config.id2label = dict(enumerate(new))
    config.label2id = {answer: index for index, answer in enumerate(new)}
    return f"answer head: {len(new)} answers, {shared} kept from RUN, {len(new) - shared} new"


def model_from_run(
    args: TrainingArguments, answers: AnswerVocab
) -> tuple[HybridVQAModel, list[str]]:
    """The model of ``args.init_from`` (safetensors only) with ``args``' fusion settings and
    loss weights where set, and its answer head adapted to ``answers``; in training mode.

    Returns the model and one log line per adaptation. The region head is left to
    :func:`adapt_region_head`, which needs the new data's objects.
    """
    run = Path(args.init_from)
    model = HybridVQAModel.from_pretrained(
        run, use_safetensors=True, local_files_only=True, dtype=torch.float32
    )  # trains in float32 whatever the file stores (the shipped default model stores float16)
    model.set_fusion(mode=args.mode, estimator=args.estimator, **fusion_k_settings(args))
    if args.k_penalty is not None:
        model.config.fusion_k_penalty = float(args.k_penalty)
    if args.encoder_k is not None or args.encoder_rule is not None:
        model.set_encoder_selection(encoder_k=args.encoder_k, rule=args.encoder_rule)
    for name in ("region_loss_weight", "pointing_loss_weight"):
        if getattr(args, name) is not None:
            setattr(model.config, name, float(getattr(args, name)))
    if args.reconstruction_loss_weight is not None:
        model.set_reconstruction_loss_weight(args.reconstruction_loss_weight)
    if args.contrast_loss_weight is not None:
        model.set_contrast_loss_weight(args.contrast_loss_weight)
    if args.glimpse_loss_weight is not None:
        model.set_glimpse_loss_weight(args.glimpse_loss_weight)
    if args.reconstruction_mask_ratio is not None:
        model.config.reconstruction_mask_ratio = float(args.reconstruction_mask_ratio)
    if args.reinforce_baseline is not None:
        model.config.reinforce_baseline = args.reinforce_baseline
    if args.label_smoothing is not None:
        model.config.label_smoothing = float(args.label_smoothing)
    notes = [
        f"model: {run}'s architecture and weights (the preset's model sizes are not used)",
        adapt_answer_head(model, answers),
    ]
    return model.train(), notes


def adapt_region_head(
    model: HybridVQAModel, known: RegionAttributes | None, found: RegionAttributes | None
) -> str:
    """Keep ``model``'s region head learning, or freeze it and turn its loss off; in place.

    It learns when its loss weight is above 0 and the new objects' attributes (``found``) share
    a name with those the processor labels regions with (``known``, RUN's). Returns one log line.
    """
    shared = sorted(set(known.names if known else ()) & set(found.names if found else ()))
    if shared and model.config.region_loss_weight > 0:
        return f"region head: RUN's, trained on the new objects' {', '.join(shared)}"
    model.region_head.requires_grad_(False)
    names = ", ".join(model.config.region_attributes)
    reason = (
        "the region loss weight is 0"
        if model.config.region_loss_weight <= 0
        else f"the new objects have none of its attributes ({names})"
    )
    model.config.region_loss_weight = 0.0
    return f"region head: RUN's, kept but frozen: {reason}"
