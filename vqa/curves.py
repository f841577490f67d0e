"""``RUN/curves.png``: the training curves of one run, redrawn from ``metrics.json`` after every
epoch.

Three panels: the training loss of every batch (faint) and its moving average, with the region
and pointing losses where the run has them; the validation accuracy after each epoch, overall
and per question type; and the pointing accuracy after each epoch. The figure is made without
pyplot (Agg, no global state, no display needed) and returned, so that tests can read back what
was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vqa.files import atomic_writer

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVES_FILE = "curves.png"
# (metrics.json series, label): the losses drawn when the run has them (not all 0)
LOSS_SERIES = (
    ("step_losses", "loss"),
    ("step_region_losses", "region loss"),
    ("step_pointing_losses", "pointing loss"),
    ("step_reconstruction_losses", "reconstruction loss"),
    ("step_contrast_losses", "contrast loss"),
    ("step_glimpse_losses", "glimpse loss"),
)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (fewer at the start), skipping non-finite ones
    (a skipped step's NaN loss); nan where the window holds none. Linear in ``len(values)``."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty window is nan
        return ((sums[ends] - sums[starts]) / (counts[ends] - counts[starts])).tolist()


def batch_series(history: Sequence[dict], key: str) -> list[float]:
    """The per-batch values of ``key`` (e.g. ``step_losses``) over every epoch of ``history``."""
    return [value for record in history for value in record.get(key, [])]


def plot_losses(ax: Axes, history: Sequence[dict]) -> None:
    """Every batch's loss (faint, labelled ``loss per batch``) and moving averages of the
    losses of ``LOSS_SERIES``; dotted lines where epochs end."""
    losses = batch_series(history, "step_losses")
    window = max(1, len(losses) // 20)
    batches = range(1, len(losses) + 1)
    raw = ax.plot(batches, losses, alpha=0.3, lw=0.8, label="loss per batch")[0]
    for key, label in LOSS_SERIES:
        values = batch_series(history, key)
        if values and any(value != 0 for value in values):
            colour = raw.get_color() if key == "step_losses" else None
            ax.plot(
                range(1, len(values) + 1),
                moving_average(values, window),
                color=colour,
                label=label if window == 1 else f"{label} (moving average of {window})",
            )
    end = 0
    for record in history[:-1]:
        end += len(record.get("step_losses", []))
        ax.axvline(end + 0.5, color="grey", ls=":", lw=0.8)
    ax.set(title="Training loss", xlabel="batch", ylabel="loss")
    ax.legend(fontsize="small")


def plot_per_epoch(
    ax: Axes, history: Sequence[dict], key: str, title: str, by_type: bool = False
) -> None:
    """``key`` (e.g. ``val_accuracy``) after each epoch of ``history`` that has it, labelled
    ``overall``; with ``by_type`` also one line per question type (``val_accuracy_by_type``).
    Without any such epoch the axes say that the run has no validation split."""
    records = [record for record in history if key in record]
    ax.set(title=title, xlabel="epoch", ylabel="accuracy")
    if not records:
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
        return
    epochs = [record["epoch"] for record in records]
    ax.plot(epochs, [record[key] for record in records], "o-", lw=2, color="black", label="overall")
    if by_type:
        types = dict.fromkeys(name for r in records for name in r.get(f"{key}_by_type", {}))
        for name in types:
            values = [record.get(f"{key}_by_type", {}).get(name, math.nan) for record in records]
            ax.plot(epochs, values, ".--", lw=1, label=name)
    ax.set_xticks(epochs)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")


def plot_training_curves(metrics: dict, path: str | Path) -> Figure:
    """Draw the curves of ``metrics`` (the run's ``metrics.json``) and save them at ``path``.

    Returns the Figure: axes 0 holds the losses against the batch (the line labelled
    ``loss per batch`` is ``step_losses`` of every epoch in order), axes 1 the validation
    accuracy per epoch (``overall``, then one line per question type) and axes 2 the pointing
    accuracy per epoch (``overall``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = metrics.get("history", [])
    figure = Figure(figsize=(15, 4), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, accuracy_ax, pointing_ax = figure.subplots(1, 3)
    plot_losses(loss_ax, history)
    plot_per_epoch(accuracy_ax, history, "val_accuracy", "Validation accuracy", by_type=True)
    plot_per_epoch(pointing_ax, history, "val_pointing_accuracy", "Pointing accuracy")
    with atomic_writer(path, binary=True) as file:
        figure.savefig(file, format="png", dpi=100)
    return figure
