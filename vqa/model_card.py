"""``RUN/README.md``: a Hugging Face Hub model card for a run directory.

:func:`write_model_card` writes it from the run's ``config.json`` and ``metrics.json``: the
Hub's YAML metadata (tags, dataset, ``model-index`` with the validation scores of the best
epoch), then what the model is, the ``vqa train`` command that made it, its results per epoch,
how to use it and its limitations; ``hf upload OWNER/NAME RUN --exclude "checkpoint/*"``
publishes it with the model. :func:`update_model_card_metrics` adds the scores of a
``vqa eval --update-card`` to the card; evaluating the same split again replaces them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hybrid_attention import describe_k
from vqa.arguments import TrainingArguments
from vqa.configuration import HybridVQAConfig
from vqa.curves import CURVES_FILE
from vqa.files import write_text_atomic
from vqa.presets import PRESETS

CARD_FILE = "README.md"
LIBRARY = "hybrid-attention-vqa"
TASK = "visual-question-answering"
SYNTHETIC = "synthetic-scenes"  # the ``name`` in a generated dataset's dataset_info.json
MODE_FORWARD = {
    "soft": "softmax over all {n} regions",
    "hard": "the top {k} of {n} regions, weight 1/{k} each",
    "hybrid": "the top {k} of {n} regions, then a softmax over those {k} only",
}
PRECISIONS = {"no": "fp32", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}
EVALUATION = "## Evaluation"
EVALUATION_INTRO = "Scores of `vqa eval --update-card` on the saved weights."
USAGE = "## How to use"


def fmt(value: float | None, digits: int = 4) -> str:
    """``value`` rounded for a table; a dash when it is missing or nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def count(number: int, noun: str) -> str:
    """``1 layer``, ``3 layers``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def duration(seconds: float) -> str:
    """``42.0 s``, ``12 min 5 s`` or ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = round(seconds) // 60
    if minutes < 60:
        return f"{minutes} min {round(seconds) % 60} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def answer_count(config: dict) -> int:
    """Size of the answer vocabulary: the classifier's labels (``id2label``)."""
    return len(config.get("id2label") or {}) or config["num_answers"]


def training_command(arguments: dict) -> str:
    """The ``vqa train`` command line of a run from its ``metrics.json`` "arguments": the
    options that differ from their defaults, epochs, batch size and learning rate from the
    preset's (metrics.json holds them resolved), each as ``add_arguments`` spells its flag."""
    preset = PRESETS.get(arguments.get("preset", "default"))
    defaults = {
        item.name: item.default
        for item in dataclasses.fields(TrainingArguments)
        if item.default is not dataclasses.MISSING
    }
    defaults.update(preset.training if preset else {})
    words = ["vqa", "train"]
    for item in dataclasses.fields(TrainingArguments):
        if item.name not in arguments or arguments[item.name] == defaults.get(item.name, ...):
            continue
        value, flag = arguments[item.name], item.name.replace("_", "-")
        if isinstance(value, bool):  # True by default: --no-flag; False by default: --flag
            words.append(f"--no-{flag}" if item.default else f"--{flag}")
        else:
            words += [f"--{flag}", shlex.quote(str(value))]
    return " ".join(words)


def augmentation(arguments: dict) -> str:
    """The answer-preserving augmentation of a run's arguments, in words ("none" without)."""
    parts = []
    if arguments.get("augment_mirror"):
        parts.append("left-right mirror with its words swapped")
    if arguments.get("augment_shift"):
        parts.append(f"shift within the empty margin, up to {arguments['augment_shift'] * 100:g}%")
    return ", ".join(parts) or "none"


def dataset_entry(data: str) -> dict:
    """How the card names the dataset ``data`` (a ``--data`` value): {"type", "name", "hub"}.

    A hub id is its own type and name; the embedded scenes (``synthetic``, or a directory
    that ``vqa data synthetic`` wrote) are ``synthetic-scenes``; any other local dataset is
    ``local``, named after its directory. ``hub`` is the hub id or None.
    """
    from vqa.data.sources import HUB_ID

    path = Path(data)
    if HUB_ID.fullmatch(data) and not path.exists():
        return {"type": data, "name": data, "hub": data}
    info = path / "dataset_info.json"
    if data == "synthetic" or (
        info.is_file() and json.loads(info.read_text()).get("name") == SYNTHETIC
    ):
        return {"type": SYNTHETIC, "name": "synthetic scenes (vqa data synthetic)", "hub": None}
    return {"type": "local", "name": path.resolve().name or data, "hub": None}


def eval_results(dataset: dict, split: str, scores: dict, prefix: str = "") -> list[EvalResult]:
    """The model-index entries of ``scores`` (keys ``{prefix}accuracy`` and
    ``{prefix}pointing_accuracy``) on ``split`` of ``dataset``; nan scores are left out."""
    metrics = (("accuracy", "VQA accuracy"), ("pointing_accuracy", "Pointing accuracy"))
    return [
        EvalResult(
            task_type=TASK,
            task_name="Visual Question Answering",
            dataset_type=dataset["type"],
            dataset_name=dataset["name"],
            dataset_split=split,
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(scores[prefix + metric]), 4),
        )
        for metric, name in metrics
        if finite(scores.get(prefix + metric))
    ]


def parameter_count(run: Path) -> int | None:
    """Numbers stored in the run's ``model*.safetensors`` (parameters and buffers), read from
    the file headers; None when there is none."""
    from safetensors import safe_open

    files = sorted(run.glob("model*.safetensors"))
    total = 0
    for file in files:
        with safe_open(file, framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                total += math.prod(weights.get_slice(name).get_shape())
    return total if files else None


def encoder_lines(config: dict, arguments: dict) -> list[str]:
    """The vision and text encoders of ``config`` (``config.json``), one Markdown bullet each."""
    vision_source = (
        f"pretrained from `{config['vision_pretrained']}`"
        if config.get("vision_pretrained")
        else f"trained from scratch, {config.get('vision_stem', 'patch')} stem"
    )
    text_source = (
        f"pretrained from `{config['text_pretrained']}`"
        if config.get("text_pretrained")
        else f"trained from scratch, vocabulary of {config['text_vocab_size']} tokens"
    )
    frozen = {
        part: " (frozen)" if arguments.get(f"freeze_{part}") else "" for part in ("vision", "text")
    }
    return [
        f"- Vision encoder: ViT ({vision_source}){frozen['vision']}, "
        f"{count(config['vision_layers'], 'layer')}, width {config['vision_hidden_size']}, "
        f"{count(config['vision_heads'], 'head')}, {config['patch_size']}-pixel patches of "
        f"{config['image_size']}-pixel images",
        f"- Text encoder: transformer ({text_source}){frozen['text']}, "
        f"{count(config['text_layers'], 'layer')}, width {config['text_hidden_size']}, "
        f"{count(config['text_heads'], 'head')}, questions up to "
        f"{config['max_question_length']} tokens",
    ]


def configured_k(config: dict) -> int | str:
    """The k of a saved config: ``fusion_k``, or its adaptive rule as text (``describe_k``)."""
    return describe_k(HybridVQAConfig.from_dict(config).fusion_rule)


def model_section(run: Path, config: dict, arguments: dict) -> list[str]:
    """``## Model``: the fusion, encoders, regions, answers and size of the model."""
    regions = (config["image_size"] // config["patch_size"]) ** 2
    mode, k = config["fusion_mode"], configured_k(config)
    forward = MODE_FORWARD[mode].format(n=regions, k=k if isinstance(k, int) else "k")
    estimator = "" if mode == "soft" else f", `{config['fusion_estimator']}` estimator"
    parameters = parameter_count(run)
    hops = config.get("fusion_hops", 1)  # configs saved before multi-hop fusion have none
    hops = f"{hops} hops (each with its own query), " if hops > 1 else ""
    lines = [
        "## Model",
        "",
        f"- Fusion: **{mode}** attention from the question to the image regions ({forward}"
        f"{estimator}), width {config['fusion_dim']}, {count(config['fusion_heads'], 'head')}, "
        f"{hops}"
        f"then {count(config['reasoner_layers'], 'transformer layer')} and a classifier over "
        "the answers",
        f"- Regions: {regions}, the patch tokens of the ViT (a "
        f"{config['image_size'] // config['patch_size']} × "
        f"{config['image_size'] // config['patch_size']} grid)"
        + ("" if mode == "soft" else f", of which k = {k} are kept"),
        *encoder_lines(config, arguments),
        f"- Answers: a closed vocabulary of {answer_count(config)} (`answers.json`)",
    ]
    if config.get("region_attributes"):
        attributes = ", ".join(config["region_attributes"])
        lines.append(f"- Region attribute head: {attributes}")
    if parameters is not None:
        lines.append(
            f"- Parameters: {parameters:,} ({parameters / 1e6:.2f} M, `model.safetensors`)"
        )
    return [*lines, ""]


def training_section(metrics: dict, config: dict) -> list[str]:
    """``## Training``: the command line and the settings, device and time of the run."""
    arguments, history = metrics.get("arguments", {}), metrics.get("history", [])
    preset = arguments.get("preset", "default")
    processes, accumulation = metrics.get("processes", 1), arguments.get("grad_accum", 1)
    batch, precision = arguments.get("batch_size"), metrics.get("mixed_precision")
    seconds = sum(record.get("train_seconds", 0.0) for record in history)
    lines = [
        "## Training",
        "",
        "```bash",
        training_command(arguments),
        "```",
        "",
        f"- Preset: `{preset}`"
        + (f" ({PRESETS[preset].description})" if preset in PRESETS else ""),
        f"- Data: `{arguments.get('data')}`, {history[-1]['train_questions'] if history else 0} "
        "training questions per epoch",
        f"- Epochs: {len(history)} of {arguments.get('epochs')}",
        f"- Batch size: {batch} per process × {count(processes, 'process')} × {accumulation} "
        f"accumulated = {batch * processes * accumulation if batch else '–'} per step",
        f"- Learning rate: {arguments.get('lr')}"
        + (f", encoders {arguments['encoder_lr']}" if arguments.get("encoder_lr") else "")
        + f", warmup {arguments.get('warmup_ratio')}, weight decay {arguments.get('weight_decay')}",
        f"- Augmentation: {augmentation(arguments)}",
        f"- Auxiliary losses: region attributes × {config.get('region_loss_weight', 0)}, "
        f"pointing × {config.get('pointing_loss_weight', 0)}, "
        f"window reconstruction × {config.get('reconstruction_loss_weight', 0)}"
        + (
            f" ({config['reconstruction_mask_ratio']:.0%} of the regions hidden)"
            if config.get("reconstruction_mask_ratio") and config.get("reconstruction_loss_weight")
            else ""
        )
        + f", recoloured-view contrast × {config.get('contrast_loss_weight', 0)}"
        + f", glimpse answer × {config.get('glimpse_loss_weight', 0)}",
        f"- Precision: {PRECISIONS.get(precision, precision)} on `{metrics.get('device')}`, "
        f"{count(processes, 'process')}, seed {arguments.get('seed')}",
        f"- Training time: {duration(seconds)} (training steps; validation not counted)",
        "",
    ]
    return lines


def type_table(by_type: dict, title: str) -> list[str]:
    """A Markdown table of accuracy per type (``val_accuracy_by_type`` or the like)."""
    return [
        f"| {title} | accuracy |",
        "|---|---:|",
        *(f"| {name} | {fmt(value)} |" for name, value in by_type.items()),
        "",
    ]


def results_section(metrics: dict) -> list[str]:
    """``## Results``: the curves, the best epoch's validation scores and every epoch."""
    history = metrics.get("history", [])
    best_epoch = metrics.get("best_epoch")
    best = next((record for record in history if record["epoch"] == best_epoch), None)
    lines = ["## Results", "", f"![Training curves]({CURVES_FILE})", ""]
    if best is not None and "val_accuracy" in best:
        lines += [
            f"The saved weights are those of epoch {best_epoch}, the best on the validation "
            f"split ({best.get('val_questions', '?')} questions):",
            "",
            f"- VQA accuracy: **{fmt(best['val_accuracy'])}**",
            f"- Pointing accuracy (top region on an object the question is about): "
            f"{fmt(best.get('val_pointing_accuracy'))}",
            "",
            *type_table(best.get("val_accuracy_by_type", {}), "question type"),
        ]
        if "val_raw_accuracy" in best:
            decay = metrics.get("ema_decay")
            lines += [
                "",
                f"They are a moving average of the trained weights (`--ema-decay {decay}`); the "
                f"trained weights themselves scored {fmt(best['val_raw_accuracy'])} there.",
            ]
    else:
        lines += [
            f"The data has no validation split: the saved weights are those of epoch "
            f"{best_epoch}, the one with the lowest training loss. No accuracy was measured.",
            "",
        ]
    lines += [
        "| epoch | train loss | val accuracy | pointing accuracy | train seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for record in history:
        epoch = f"**{record['epoch']}**" if record["epoch"] == best_epoch else record["epoch"]
        lines.append(
            f"| {epoch} | {fmt(record.get('train_loss'))} | {fmt(record.get('val_accuracy'))} "
            f"| {fmt(record.get('val_pointing_accuracy'))} | {record.get('train_seconds', 0):.1f} |"
        )
    return [*lines, ""]


def usage_section(run_name: str, synthetic: bool) -> list[str]:
    """``## How to use``: predict, serve and Python, on this directory."""
    question = "what colour is the large circle?" if synthetic else "what is on the table?"
    return [
        USAGE,
        "",
        "With hybrid-attention-vqa (the `vqa` command) installed, on this directory (or a "
        f"download of it: `hf download OWNER/NAME --local-dir {run_name}`):",
        "",
        "```bash",
        f'vqa predict --model {run_name} --image scene.png --question "{question}"',
        f"vqa serve --model {run_name}     # a web app that shows the regions it looked at",
        f"vqa eval --model {run_name} --data DATA --split test --update-card",
        "```",
        "",
        "```python",
        "from PIL import Image",
        "from vqa.inference import load_model, predict",
        "",
        f'model, processor = load_model("{run_name}")',
        f'result = predict(model, processor, Image.open("scene.png"), "{question}")',
        "print(result.answers[0], result.regions[0])  # best answer, region looked at most",
        "```",
        "",
        "Only `model.safetensors` and JSON files are read. The `checkpoint/` folder (optimizer "
        "and RNG state, pickled) is for `vqa train --resume`: publish the run without it, "
        f'`hf upload OWNER/NAME {run_name} --exclude "checkpoint/*"`.',
        "",
    ]


def limitations_section(dataset: dict, config: dict) -> list[str]:
    """``## Limitations``: what the model was trained on and what it cannot do."""
    if dataset["type"] == SYNTHETIC:
        data = (
            "procedurally generated scenes of coloured circles, squares and triangles on a "
            f"plain background, {config['image_size']} pixels wide. It has never seen a "
            "photograph: it does not transfer to photos or to other kinds of questions"
        )
    else:
        data = (
            f"`{dataset['name']}` only; expect it to do worse on images and questions unlike those"
        )
    return [
        "## Limitations",
        "",
        f"- Trained on {data}.",
        f"- The answer vocabulary is closed: it answers one of its {answer_count(config)} "
        "training answers, never anything else.",
        f"- It sees {config['image_size']}-pixel images (larger ones are resized) as a grid of "
        f"{config['patch_size']}-pixel regions; smaller details are lost.",
        "- The regions it attends to show where it looked, not why it answered: a high "
        "weight is not an explanation.",
        "",
    ]


def check_run(run_dir: str | Path) -> None:
    """Raise FileNotFoundError unless ``run_dir`` is a run directory that a card describes:
    one with the ``config.json`` and ``metrics.json`` of ``vqa train``."""
    for name in ("config.json", "metrics.json"):
        if not (Path(run_dir) / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory of vqa train (no {name})")


def read_run(run: Path) -> tuple[dict, dict]:
    """(config.json, metrics.json) of the run directory ``run``."""
    check_run(run)
    return json.loads((run / "config.json").read_text()), json.loads(
        (run / "metrics.json").read_text()
    )


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``RUN/README.md`` from the run's ``config.json`` and ``metrics.json``; return
    its path. A card written before (and its Evaluation section) is replaced: the weights it
    described may have changed."""
    run = Path(run_dir)
    config, metrics = read_run(run)
    arguments = metrics.get("arguments", {})
    dataset = dataset_entry(str(arguments.get("data", "synthetic")))
    history, best_epoch = metrics.get("history", []), metrics.get("best_epoch")
    best = next((record for record in history if record["epoch"] == best_epoch), {})
    results = eval_results(dataset, "val", best, prefix="val_")
    data = ModelCardData(
        library_name=LIBRARY,
        tags=list(
            dict.fromkeys([TASK, "hybrid-attention", f"{config['fusion_mode']}-attention", "vqa"])
        ),
        datasets=[dataset["hub"]] if dataset["hub"] else None,
        metrics=["accuracy"],
        pipeline_tag=TASK,
        model_name=run.resolve().name,
        eval_results=results or None,
    )
    mode, k = config["fusion_mode"], configured_k(config)
    regions = (
        "all regions"
        if mode == "soft"
        else f"k = {k} regions (`{config['fusion_estimator']}` estimator)"
    )
    body = [
        f"# {run.resolve().name}",
        "",
        f"A visual question answering model with **{mode}** attention over {regions}, trained "
        "with `vqa train` of hybrid-attention-vqa. It answers a question about an image with one "
        "of a closed set of answers and shows which image regions it attended to.",
        "",
        *model_section(run, config, arguments),
        *training_section(metrics, config),
        *results_section(metrics),
        *usage_section(run.resolve().name, dataset["type"] == SYNTHETIC),
        *limitations_section(dataset, config),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = run / CARD_FILE
    write_text_atomic(path, str(card))
    return path


def evaluation_lines(scores: dict) -> list[str]:
    """What the card says of one evaluation's ``scores``, under the evaluation's heading."""
    lines = [""]
    if not finite(scores.get("accuracy")):
        lines.append(f"- {scores.get('questions', 0)} questions, none with answers to score")
    else:
        lines += [
            f"- VQA accuracy: **{fmt(scores['accuracy'])}** "
            f"({scores.get('scored_questions', '?')} of {scores.get('questions', '?')} "
            "questions scored)",
        ]
    lines += [
        f"- Pointing accuracy: {fmt(scores.get('pointing_accuracy'))}",
        f"- Regions used: {fmt(scores.get('regions_used'), 1)}",
        f"- Milliseconds per question: {fmt(scores.get('ms_per_question'), 2)} "
        f"on `{scores.get('device', '?')}`",
        "",
    ]
    if scores.get("accuracy_by_type"):
        lines += type_table(scores["accuracy_by_type"], "question type")
    if scores.get("accuracy_by_answer_type"):
        lines += type_table(scores["accuracy_by_answer_type"], "answer type")
    return lines


def upsert_evaluation(text: str, heading: str, block: list[str]) -> str:
    """``text`` (a card's Markdown body) with ``heading`` (``### ...``) and the lines of
    ``block`` in its Evaluation section: what was under the same heading is replaced, else the
    block is added last. The section is made, before "How to use", when there is none."""
    lines = text.splitlines()
    if EVALUATION not in lines:
        at = lines.index(USAGE) if USAGE in lines else len(lines)
        lines[at:at] = [EVALUATION, "", EVALUATION_INTRO, ""]
    start = lines.index(EVALUATION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    intro: list[str] = []
    blocks: dict[str, list[str]] = {}
    current = None
    for line in lines[start:end]:
        if line.startswith("### "):
            current = line
            blocks[current] = []
        elif current is None:
            intro.append(line)
        else:
            blocks[current].append(line)
    blocks[heading] = block
    section = list(intro)
    for name, content in blocks.items():
        while content and not content[-1].strip():
            content = content[:-1]
        section += [name, *content, ""]
    return "\n".join(lines[:start] + section + lines[end:]) + "\n"


def update_model_card_metrics(
    run_dir: str | Path, split: str, scores: dict, *, data: str | None = None
) -> Path:
    """Add ``scores`` (what ``vqa eval`` measured, with ``mode`` and ``k``) on ``split`` of
    ``data`` (a ``--data`` value; default: the training data) to the run's card; return its path.

    The card gets a block in its Evaluation section and, when the scores are of the saved
    fusion setting (no ``--mode``/``--k`` override), the model-index results of that split.
    Evaluating the same split of the same data again replaces both. A run without a card gets
    one first (``write_model_card``).
    """
    run = Path(run_dir)
    path = run / CARD_FILE
    config, metrics = read_run(run)
    if not path.is_file():
        write_model_card(run)
    data = data if data is not None else str(metrics.get("arguments", {}).get("data"))
    dataset = dataset_entry(data)
    card = ModelCard.load(path)
    mode, k = scores.get("mode", config["fusion_mode"]), scores.get("k", configured_k(config))
    if (mode, k) == (config["fusion_mode"], configured_k(config)):
        kept = [
            result
            for result in card.data.eval_results or []
            if (result.dataset_type, result.dataset_name, result.dataset_split)
            != (dataset["type"], dataset["name"], split)
        ]
        card.data.eval_results = kept + eval_results(dataset, split, scores) or None
        card.data.model_name = card.data.model_name or run.resolve().name
    fusion = mode if mode == "soft" else f"{mode}, k = {k}"
    heading = f"### `{split}` split of {dataset['name']} ({fusion})"
    text = upsert_evaluation(card.text, heading, evaluation_lines(scores))
    updated = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
    write_text_atomic(path, str(updated))
    return path
