"""The training recipe for data without boxes, and how a run knows its data has none.

Most real VQA datasets give an image, a question and answers: no ``objects`` for the region
attribute loss, no ``target_boxes`` for the pointing loss. A preset's ``box_free`` fields
(``vqa.presets``) are what it trains with on such data. The default preset's are the window
reconstruction loss (``vqa.reconstruction``) and the recoloured-view contrast loss
(``vqa.contrast``), which need only pixels and were measured to help it learn from answers
alone, one fusion hop instead of two, since a second did not help there, and k = 32 regions
kept instead of 16, which helped (docs/results/experiments/box-free). ``vqa train`` applies
them to a new model with the built-in vision encoder when no training row has a box, or with
``--answers-only``. A flag that sets one of those fields wins over the recipe. The preset's
``box_free_training`` (the default preset's: 10 epochs instead of 5) applies to such a run too,
where no flag sets it.
"""

from __future__ import annotations

import pyarrow.compute as pc
from datasets import Dataset

from vqa.data.columns import arrow_column
from vqa.presets import Preset

# What the recipe applies to: a model trained from scratch, with the built-in vision encoder.
# A pretrained ViT was not measured with these losses (pixel reconstruction may pull it off
# its features), and a model from --init-from keeps its own loss weights.
NOT_APPLIED = {
    "init_from": "--init-from keeps RUN's loss weights",
    "vision_pretrained": "it was measured with the built-in vision encoder only",
}

# Recipe fields whose flag has another name than the config field.
FLAG_NAMES = {"fusion_heads": "heads", "fusion_hops": "hops", "fusion_k": "k"}


def flag_name(field: str) -> str:
    """The ``TrainingArguments`` field (and, with dashes, the flag) that sets config ``field``."""
    return FLAG_NAMES.get(field, field)


def describe_settings(fields: dict) -> str:
    """``fields`` as the flags that would set them, e.g. ``--hops 1, --epochs 10``."""
    return ", ".join(
        f"--{flag_name(name).replace('_', '-')} {value}" for name, value in fields.items()
    )


def rows_have_boxes(rows: Dataset) -> bool:
    """Whether any row lists objects (``objects_json`` other than ``[]``) or target boxes.

    Read as two Arrow columns, without a Python loop over the rows.
    """
    objects = arrow_column(rows, "objects_json")
    if pc.any(pc.not_equal(objects, "[]")).as_py():
        return True
    boxes = pc.list_value_length(arrow_column(rows, "target_boxes")).fill_null(0)
    return bool(len(boxes)) and pc.max(boxes).as_py() > 0


def box_free_training(preset: Preset, args: object, has_boxes: bool) -> tuple[dict, str | None]:
    """The preset's box-free ``TrainingArguments`` fields (``Preset.box_free_training``) that
    apply to this run, and a line that says so (None when there is nothing to say).

    They apply where the recipe's model fields would (:func:`box_free_fields`), to each field
    that ``args`` leaves unset (None), also where flags replace the recipe's losses.
    """
    if (has_boxes and not args.answers_only) or not preset.box_free_training:
        return {}, None
    if any(getattr(args, name) for name in NOT_APPLIED):
        return {}, None
    fields = {
        name: value
        for name, value in preset.box_free_training.items()
        if getattr(args, name) is None
    }
    if not fields:
        return {}, None
    return fields, f"without boxes the preset trains with {describe_settings(fields)}"


def box_free_fields(preset: Preset, args: object, has_boxes: bool) -> tuple[dict, str | None]:
    """The preset's box-free ``HybridVQAConfig`` fields that apply to this run, and a line
    that says what was decided (None when there is nothing to say).

    Args:
        preset: the run's preset; its ``box_free`` dict may be empty.
        args: ``TrainingArguments``; a field it sets (not None) is left to it, and
            ``answers_only`` applies the recipe even where the rows have boxes.
        has_boxes: whether the training rows have boxes (:func:`rows_have_boxes`).
    """
    if has_boxes and not args.answers_only:
        return {}, None
    why = "--answers-only" if has_boxes else "the training rows have no boxes"
    if not preset.box_free:
        return {}, f"{why}: the model learns from the answers alone"
    for name, reason in NOT_APPLIED.items():
        if getattr(args, name):
            return {}, f"{why}; the preset's box-free recipe is not used: {reason}"
    fields = {
        name: value
        for name, value in preset.box_free.items()
        if getattr(args, flag_name(name)) is None
    }
    if not fields:
        return {}, f"{why}; your flags replace the preset's box-free recipe"
    return fields, f"{why}: the preset's box-free recipe adds {describe_settings(fields)}"
