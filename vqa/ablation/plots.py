"""The ablation's plots: accuracy against k, against the mean k and against FLOPs, training
curves, pointing, and a gallery of where each mode looked.

Each function takes the configurations of ``statistics.aggregate``, saves a PNG and returns the
matplotlib Figure, so that callers (and the tests) can read back what was drawn. Figures are
made without pyplot (no global state, no display needed); matplotlib is imported inside.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vqa.ablation.probes import answer_losses, collate
from vqa.ablation.report import METRIC_FORMATS
from vqa.ablation.statistics import (
    SOFT_ESTIMATOR,
    config_label,
    encoder_setting,
    is_adaptive,
    k_label,
    selection_of,
)

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MODE_COLOURS = {"soft": "tab:blue", "hard": "tab:orange", "hybrid": "tab:green"}
ESTIMATOR_MARKERS = {
    "ste": "o",
    "ste-soft": "v",
    "gumbel": "s",
    "reinforce": "^",
    "none": "x",
    SOFT_ESTIMATOR: "D",
}
RULE_MARKERS = {"top_p": "*", "budget": "P"}  # adaptive-k points of accuracy vs mean k
GALLERY_QUESTIONS = 4


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` values (fewer at the start)."""
    smoothed, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        smoothed.append(total / min(index + 1, window))
    return smoothed


def new_axes(
    columns: int = 1, rows: int = 1, size: tuple[float, float] = (6.4, 4.2)
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout matplotlib Figure (Agg, no pyplot state) and its (rows, columns)
    array of axes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def errorbar(
    axes: Axes, entries: Sequence[dict], x: Sequence[float], metric: str, **style: object
) -> None:
    """Means of ``metric`` at ``x`` with the seed standard deviation as error bars."""
    means = [entry[metric][0] for entry in entries]
    stds = [0.0 if math.isnan(entry[metric][1]) else entry[metric][1] for entry in entries]
    axes.errorbar(x, means, yerr=stds, capsize=3, **style)


def series_label(entry: dict) -> str:
    """``soft``, e.g. ``hybrid ste``, or ``hybrid ste enc=1x8`` (a selection inside the vision
    encoder): one series per mode, estimator and encoder selection."""
    if entry["mode"] == "soft":
        return "soft"
    label = f"{entry['mode']} {entry['estimator']}"
    setting = encoder_setting(*selection_of(entry))
    return f"{label} enc={setting}" if setting else label


def selection_style(entry: dict) -> dict:
    """Hollow markers for a selection inside the vision encoder, filled ones without."""
    return {"mfc": "none"} if entry.get("select_after") is not None else {}


def plot_accuracy_vs_k(stats: Sequence[dict], path: str | Path) -> Figure:
    """Accuracy against k, one errorbar line per (mode, estimator, encoder selection) labelled
    as :func:`series_label`; soft (all N regions) as a horizontal line with a ± std band.
    Adaptive-k configurations are left out: :func:`plot_accuracy_vs_mean_k` draws them."""
    figure, axes = new_axes()
    ax = axes[0][0]
    for entry in stats:
        if entry["mode"] == "soft":
            mean, std = entry["accuracy"]
            ax.axhline(mean, color=MODE_COLOURS["soft"], ls="--", label=f"soft (all {entry['k']})")
            if not math.isnan(std):
                ax.axhspan(mean - std, mean + std, color=MODE_COLOURS["soft"], alpha=0.15)
    lines: dict[str, list[dict]] = {}
    for entry in stats:
        if entry["mode"] != "soft" and not is_adaptive(entry):
            lines.setdefault(series_label(entry), []).append(entry)
    for label, entries in lines.items():
        entries = sorted(entries, key=lambda entry: entry["k"])
        mode, estimator = entries[0]["mode"], entries[0]["estimator"]
        errorbar(
            ax,
            entries,
            [entry["k"] for entry in entries],
            "accuracy",
            color=MODE_COLOURS.get(mode),
            marker=ESTIMATOR_MARKERS.get(estimator, "o"),
            ls="-" if mode == "hybrid" else ":",
            label=label,
            **selection_style(entries[0]),
        )
    ks = sorted(
        {entry["k"] for entry in stats if entry["mode"] != "soft" and not is_adaptive(entry)}
    )
    if ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="k (regions kept)", ylabel="accuracy", title="Accuracy vs k (mean ± std)")
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return figure


def plot_accuracy_vs_flops(stats: Sequence[dict], path: str | Path) -> Figure:
    """Accuracy against MFLOPs per question: after the encoders (left axes) and in total,
    encoders included (right), one errorbar point per configuration, annotated with its k
    (an adaptive rule with its k_max, whose slots it computes) and its selection inside the
    vision encoder, ``enc=SxK``."""
    figure, axes = new_axes(columns=2)
    for ax, metric in zip(axes[0], ("fusion_flops", "total_flops"), strict=True):
        seen = set()
        for entry in stats:
            label = series_label(entry)
            errorbar(
                ax,
                [entry],
                [entry[metric][0] * 1e-6],
                "accuracy",
                color=MODE_COLOURS.get(entry["mode"]),
                marker=ESTIMATOR_MARKERS.get(entry["estimator"], "o"),
                ls="none",
                label=None if label in seen else label,  # one legend entry per series
                **selection_style(entry),
            )
            seen.add(label)
            setting = encoder_setting(*selection_of(entry))
            ax.annotate(
                k_label(entry) + (f" enc={setting}" if setting else ""),
                (entry[metric][0] * 1e-6, entry["accuracy"][0]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set(xlabel=f"{METRIC_FORMATS[metric][0]} (counted)", ylabel="accuracy")
    axes[0][0].set_title("Accuracy vs FLOPs after the encoders")
    axes[0][1].set_title("Accuracy vs FLOPs of the whole model")
    axes[0][0].legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return figure


def plot_accuracy_vs_mean_k(stats: Sequence[dict], path: str | Path) -> Figure:
    """Accuracy against the mean k (regions used) of hard and hybrid configurations: fixed k
    as one errorbar line per :func:`series_label`, each adaptive-k configuration as a point
    (a star for top-p, a plus for a budget) with the seed standard deviation of its mean k
    as horizontal error bar, in the legend under its :func:`config_label`."""
    figure, axes = new_axes()
    ax = axes[0][0]
    lines: dict[str, list[dict]] = {}
    for entry in stats:
        if entry["mode"] != "soft" and not is_adaptive(entry):
            lines.setdefault(series_label(entry), []).append(entry)
    for label, entries in lines.items():
        entries = sorted(entries, key=lambda entry: entry["regions_used"][0])
        errorbar(
            ax,
            entries,
            [entry["regions_used"][0] for entry in entries],
            "accuracy",
            color=MODE_COLOURS.get(entries[0]["mode"]),
            marker=ESTIMATOR_MARKERS.get(entries[0]["estimator"], "o"),
            ls="-" if entries[0]["mode"] == "hybrid" else ":",
            label=f"{label} (fixed k)",
            **selection_style(entries[0]),
        )
    for entry in (entry for entry in stats if is_adaptive(entry)):
        mean_k, spread = entry["regions_used"]
        ax.errorbar(
            [mean_k],
            [entry["accuracy"][0]],
            xerr=[0.0 if math.isnan(spread) else spread],
            yerr=[0.0 if math.isnan(entry["accuracy"][1]) else entry["accuracy"][1]],
            capsize=3,
            color=MODE_COLOURS.get(entry["mode"]),
            marker=RULE_MARKERS.get(entry["k_rule"], "o"),
            markersize=10,
            ls="none",
            label=config_label(entry),
            **selection_style(entry),
        )
    ax.set(
        xlabel="mean k (regions used per question)",
        ylabel="accuracy",
        title="Accuracy vs mean k: fixed k (lines), adaptive k (points)",
    )
    if lines or any(map(is_adaptive, stats)):  # an ablation of soft runs alone draws nothing
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return figure


def plot_training_curves(stats: Sequence[dict], runs_dir: str | Path, path: str | Path) -> Figure:
    """Per-step answer loss (trailing moving average over 1/20 of the steps) per mode: one
    axes per mode, one line per configuration, the mean over seeds with a min-max band.

    The seeds' curves are cut to the shortest, so that the mean is over every seed at each
    step.
    """
    modes = list(dict.fromkeys(entry["mode"] for entry in stats))
    figure, axes = new_axes(columns=len(modes), size=(5.0, 3.8))
    for ax, mode in zip(axes[0], modes, strict=True):
        for entry in (entry for entry in stats if entry["mode"] == mode):
            curves = [
                answer_losses(
                    json.loads((Path(runs_dir) / name / "metrics.json").read_text())["history"]
                )
                for name in entry["names"]
            ]
            steps = min(len(curve) for curve in curves)
            window = max(1, steps // 20)
            curves = [smooth(curve[:steps], window) for curve in curves]
            mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
            line = ax.plot(range(1, steps + 1), mean, label=config_label(entry))[0]
            ax.fill_between(
                range(1, steps + 1),
                [min(values) for values in zip(*curves, strict=True)],
                [max(values) for values in zip(*curves, strict=True)],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set(title=f"{mode}", xlabel="training step", ylabel="answer loss (moving average)")
        ax.legend(fontsize="x-small")
    figure.suptitle("Training curves: mean over seeds, band = min to max over seeds")
    figure.savefig(path, dpi=120)
    return figure


def plot_pointing(stats: Sequence[dict], path: str | Path) -> Figure:
    """Pointing accuracy per configuration: one bar each, in the order of ``stats``,
    coloured by mode, with the seed standard deviation as error bar."""
    figure, axes = new_axes(size=(max(6.4, 0.5 * len(stats) + 2), 4.2))
    ax = axes[0][0]
    means = [entry["pointing_accuracy"][0] for entry in stats]
    stds = [entry["pointing_accuracy"][1] for entry in stats]
    ax.bar(
        range(len(stats)),
        means,
        yerr=[0.0 if math.isnan(std) else std for std in stds],
        color=[MODE_COLOURS.get(entry["mode"], "tab:gray") for entry in stats],
        capsize=3,
    )
    ax.set_xticks(
        range(len(stats)), [config_label(entry) for entry in stats], rotation=45, ha="right"
    )
    ax.set(ylim=(0, 1), ylabel="pointing accuracy", title="Does the top region hit the object?")
    figure.savefig(path, dpi=120)
    return figure


def gallery_questions(rows: Dataset, count: int = GALLERY_QUESTIONS) -> list[int]:
    """Indices of up to ``count`` rows with ground-truth objects, of different question types
    while there are types left (the first rows when no row has objects)."""
    chosen: list[int] = []
    kinds: set[str] = set()
    for index, (kind, boxes) in enumerate(
        zip(rows["question_type"], rows["target_boxes"], strict=True)
    ):
        if boxes and kind not in kinds and len(chosen) < count:
            chosen.append(index)
            kinds.add(kind)
    return chosen or list(range(min(count, len(rows))))


def plot_attention_gallery(
    stats: Sequence[dict], runs_dir: str | Path, rows: Dataset, path: str | Path
) -> Figure:
    """The same questions (one row of axes each) answered by each mode's most accurate
    configuration (one column each, its first seed): the image, the head-averaged weight of
    each region on one colour scale for every cell, and the ground-truth boxes."""
    import textwrap

    import torch
    from matplotlib.patches import Rectangle

    from vqa.inference import load_model
    from vqa.metrics import answer_accuracy
    from vqa.processing import open_image, to_rgb

    best: dict[str, dict] = {}
    for entry in stats:
        if entry["accuracy"][0] > best.get(entry["mode"], {"accuracy": (-1.0, 0.0)})["accuracy"][0]:
            best[entry["mode"]] = entry
    indices = gallery_questions(rows)
    answered = []  # per column: (entry, predictions, (B, side, side) weights)
    for entry in best.values():
        model, processor = load_model(Path(runs_dir) / entry["names"][0])
        inputs = collate(processor, rows, indices, model.device)
        inputs.pop("labels")
        with torch.no_grad():
            output = model(**inputs)
        side = processor.image_size // model.config.patch_size
        weights = output.attention_weights.float().mean(1).reshape(-1, side, side)  # (B, s, s)
        predictions = [processor.answers.decode(int(i)) for i in output.logits.argmax(-1)]
        answered.append((entry, predictions, weights))
    size = processor.image_size
    highest = max(float(weights.max()) for _, _, weights in answered)

    figure, axes = new_axes(columns=len(answered), rows=len(indices), size=(2.6, 2.9))
    for line, index in enumerate(indices):
        example = rows[index]
        image = to_rgb(open_image(example["image"]))
        scale_x, scale_y = size / image.width, size / image.height
        for column, (entry, predictions, weights) in enumerate(answered):
            ax = axes[line][column]
            ax.imshow(image.resize((size, size)), extent=(0, size, size, 0))
            heat = ax.imshow(
                weights[line].numpy(),
                extent=(0, size, size, 0),
                cmap="inferno",
                vmin=0.0,
                vmax=highest,
                alpha=0.6,
                interpolation="nearest",
            )
            for x0, y0, x1, y1 in example["target_boxes"]:
                ax.add_patch(
                    Rectangle(
                        (x0 * scale_x, y0 * scale_y),
                        (x1 - x0) * scale_x,
                        (y1 - y0) * scale_y,
                        fill=False,
                        edgecolor="cyan",
                        linewidth=1.5,
                    )
                )
            right = answer_accuracy(predictions[line], example["answers"])
            title = f"{config_label(entry)}\n{predictions[line]} ({'right' if right else 'wrong'})"
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        question = textwrap.fill(example["question"], 28)
        axes[line][0].set_ylabel(f"{question}\nanswer: {example['answers'][0]}", fontsize=8)
    figure.colorbar(heat, ax=axes, shrink=0.5, label="attention weight (same scale everywhere)")
    figure.suptitle(
        "Same questions, each mode's most accurate configuration; cyan: objects asked about"
    )
    figure.savefig(path, dpi=110)
    return figure
