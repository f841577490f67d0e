"""``vqa ablate``: test the textbook claims about hard and soft attention with numbers.

| aspect           | hard (claimed)                                | soft (claimed)                |
|------------------|-----------------------------------------------|-------------------------------|
| training         | non-differentiable, REINFORCE, high variance  | differentiable, smooth        |
| compute          | lower, looks at key inputs only               | higher, processes every input |
| interpretability | high, clear focus points                      | moderate, diffuse weights     |
| accuracy         | lower, less stable                            | higher, more stable           |

Hybrid (hard top-k, then softmax weights over the k) is meant to get the best of both.
:func:`run_ablation` trains every (mode, k, estimator, seed) of a grid on the same data, measures
each run and writes::

    OUT/
      ablation.json          the settings that a --resume must match
      results.csv            one row per finished run, rewritten atomically after each run
      runs/<name>/           each run's model, metrics.json and checkpoint
      table.md               mean ± standard deviation over seeds per configuration
      report.md              each claim, the numbers that test it, and a verdict
      accuracy_vs_k.png  accuracy_vs_flops.png  training_curves.png  pointing.png
      attention_gallery.png

How each number is measured is written in :data:`DEFINITIONS` (and at the end of report.md).

Heavy imports (torch, matplotlib, the training stack) happen inside the functions that use
them, so that ``vqa --help`` stays instant while ``vqa.cli`` imports this module's parser.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa.files import write_json, write_text_atomic
from vqa.presets import Preset, get_preset

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import Tensor, device

    from vqa.modeling import HybridVQAModel
    from vqa.processing import HybridVQAProcessor

SETTINGS_FILE = "ablation.json"
RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
REPORT_FILE = "report.md"
RUNS_DIR = "runs"
PLOT_FILES = {
    "accuracy_vs_k": "accuracy_vs_k.png",
    "accuracy_vs_flops": "accuracy_vs_flops.png",
    "training_curves": "training_curves.png",
    "pointing": "pointing.png",
    "attention_gallery": "attention_gallery.png",
}

DEFAULT_GRID = {
    "modes": ("soft", "hard", "hybrid"),
    "k": (4, 8, 16),
    "estimators": ("ste", "gumbel", "reinforce"),
    "seeds": (0, 1, 2),
}
SOFT_ESTIMATOR = "-"  # soft attention selects nothing, so no estimator applies
FUSION_MODULES = ("fusion", "reasoner", "head")  # the part whose cost depends on the selection
LOSS_TAIL = 0.2  # share of the last training steps whose answer loss gives final loss / variance
GALLERY_QUESTIONS = 4

TEXT_COLUMNS = ("name", "mode", "estimator")
INT_COLUMNS = ("k", "seed", "epochs", "questions")

# (results.csv column, table header, scale, format) of the numbers that table.md shows.
METRICS = (
    ("accuracy", "accuracy", 1.0, ".3f"),
    ("pointing_accuracy", "pointing", 1.0, ".3f"),
    ("attention_entropy", "entropy (nats)", 1.0, ".2f"),
    ("regions_used", "regions used", 1.0, ".1f"),
    ("fusion_flops", "fusion MFLOP/q", 1e-6, ".3f"),
    ("total_flops", "total MFLOP/q", 1e-6, ".2f"),
    ("ms_per_question", "ms/q", 1.0, ".3f"),
    ("train_seconds", "train s", 1.0, ".1f"),
    ("final_loss", "final loss", 1.0, ".3f"),
    ("loss_variance", "loss var", 1.0, ".2e"),
    ("score_grad_variance", "score-grad var", 1.0, ".2e"),
    ("score_grad_noise", "estimator noise/signal", 1.0, ".3g"),
    ("score_grad_batch_noise", "SGD noise/signal", 1.0, ".3g"),
)
METRIC_FORMATS = {column: (header, scale, fmt) for column, header, scale, fmt in METRICS}
MODE_COLOURS = {"soft": "tab:blue", "hard": "tab:orange", "hybrid": "tab:green"}
ESTIMATOR_MARKERS = {"ste": "o", "gumbel": "s", "reinforce": "^", "none": "x", SOFT_ESTIMATOR: "D"}

DEFINITIONS = f"""\
## How each number is measured

- Each run trains with `vqa.training.train`; the checkpoint with the best validation accuracy
  is measured on the evaluation split (test, or val when there is no test split).
- **accuracy**: VQA accuracy (exact match for one answer), overall and per question type.
- **pointing**: share of the questions with ground-truth objects whose highest-weighted
  region (weights averaged over heads) overlaps one of those objects. Hard attention weighs its
  k regions equally (1/k), so its top region is a tie that `vqa.metrics.top_region` breaks
  by the selection score.
- **entropy**: entropy in nats of the head-averaged attention weights over the N regions
  (log k for hard attention, at most log N).
- **regions used**: regions with a non-zero weight.
- **fusion MFLOP/q**: FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (matrix
  products, convolutions, attention; element-wise operations are not counted) in one eval-mode
  forward pass over the first questions of the evaluation split, divided by their number, in
  the modules after the encoders and their projections: `model.{", model.".join(FUSION_MODULES)}`
  (everything whose cost depends on the selection). **total MFLOP/q** counts the whole forward
  pass; questions about one image share its encoding, as in evaluation.
- **ms/q**: wall time of the forward passes during evaluation (batches of 64) divided by the
  number of questions, encoders included, on the machine that ran the ablation.
- **train s**: training wall time (validation excluded).
- **final loss**, **loss var**: mean and sample variance of the per-step answer loss
  (cross-entropy, without REINFORCE's surrogate term) over the last {LOSS_TAIL:.0%} of the
  training steps.
- **score-grad var**: the gradient g of the training loss with respect to the weights that
  compute the selection scores (`fusion.q_proj.weight`, `fusion.k_proj.weight`), taken R times
  on one fixed training batch with dropout off and the fusion in training mode (so gumbel and
  reinforce sample their selection as in training); the variance across the R passes, averaged
  over the weights. Only the estimator's sampling varies, so this is the estimator's own noise:
  exactly 0 for soft and ste, which do not sample. Its size follows the size of the gradient,
  so it is not comparable between runs whose scorers grew to different scales.
- **estimator noise/signal**: on the same R passes, the summed variance divided by the squared
  norm of the mean gradient: the estimator's noise relative to the gradient it estimates,
  scale-free (0 for soft and ste).
- **SGD noise/signal**: the same ratio over R different training batches (data and sampling
  both vary): the noise that SGD sees in the scorer's updates.
- **accuracy spread** (stability): the standard deviation s of accuracy over the n seeds,
  shown as s ± its standard error s / sqrt(2 (n - 1)).
- **Comparisons** in report.md: a difference counts only when it is larger than the larger of
  the two standard deviations over seeds (for accuracy spread: of the two standard errors);
  otherwise it is a *tie*. Each claim is split into
  what it implies, one measurement each. An implication *holds* when every comparison holds
  (for "not lower" / "not higher" a tie holds too), is *contradicted* when every comparison
  contradicts it, is *inconclusive* when every comparison is a tie, and is *mixed* otherwise.
  A claim's verdict combines its implications' verdicts the same way.
"""


@dataclass
class AblationArguments:
    """Everything ``vqa ablate`` accepts; ``None`` means "what the preset says".

    Attributes:
        out: the output directory.
        data: a dataset directory in the local format, or ``"synthetic"`` (embedded scenes).
        preset: model, training and data sizes and the default grid (see ``vqa.presets``).
        modes, k, estimators, seeds: the grid. Estimators and k apply to hard and hybrid
            runs; soft runs once per seed.
        epochs: training epochs of every run.
        pointing_loss_weight: weight of the pointing loss in every run (None: the preset's,
            0 in ``quick`` and ``full``, so that pointing accuracy measures where each mode
            learns to look from the answers alone).
        resume: skip the runs already in ``results.csv`` and finish a half-trained run.
        progress: show the overall progress bar and each run's own bars.
        grad_repeats: passes R of the score-gradient measurements.
        probe_batch_size: questions per batch of the FLOP count and the gradient measurements.
    """

    out: str
    data: str = "synthetic"
    preset: str = "quick"
    modes: Sequence[str] | None = None
    k: Sequence[int] | None = None
    estimators: Sequence[str] | None = None
    seeds: Sequence[int] | None = None
    epochs: int | None = None
    pointing_loss_weight: float | None = None
    resume: bool = False
    progress: bool = True
    grad_repeats: int = 8
    probe_batch_size: int = 32


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid; ``k`` is the number of regions for soft (it keeps all)."""

    mode: str
    k: int
    estimator: str
    seed: int

    @property
    def name(self) -> str:
        """Directory name of the run, e.g. ``hybrid-k4-ste-seed0`` or ``soft-seed0``."""
        if self.mode == "soft":
            return f"soft-seed{self.seed}"
        return f"{self.mode}-k{self.k}-{self.estimator}-seed{self.seed}"


def num_regions(preset: Preset) -> int:
    """Number of regions N (ViT patches) of the models that ``preset`` builds."""
    from vqa.configuration import HybridVQAConfig

    return HybridVQAConfig(**preset.model).num_regions


def listed(name: str, given: Sequence | None, defaults: dict) -> list:
    """``given`` (or the default grid's ``name``) without repeats; a ValueError if empty."""
    values = list(dict.fromkeys(defaults[name] if given is None else given))
    if not values:
        raise ValueError(f"{name}: the list is empty; give at least one value")
    return values


def grid(args: AblationArguments) -> list[RunSpec]:
    """The runs of ``args``: seeds outermost (a partial ablation covers every configuration
    with its first seeds), then modes, k and estimators in the order given.

    Raises:
        ValueError: an empty list, an unknown mode or estimator, or a k outside 1..N; the
            message names the argument and the value.
    """
    from hybrid_attention import ESTIMATORS, MODES

    preset = get_preset(args.preset)
    defaults = {**DEFAULT_GRID, **preset.ablation}
    modes = listed("modes", args.modes, defaults)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    seeds = listed("seeds", args.seeds, defaults)
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds: {seed!r} is not an integer >= 0")
    regions = num_regions(preset)
    ks: list[int] = []
    estimators: list[str] = []
    if any(mode != "soft" for mode in modes):
        ks = listed("k", args.k, defaults)
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= regions:
                raise ValueError(
                    f"k: {k!r} is not between 1 and the number of regions ({regions}) of the "
                    f"{args.preset!r} preset"
                )
        estimators = listed("estimators", args.estimators, defaults)
        for estimator in estimators:
            if estimator not in ESTIMATORS:
                raise ValueError(
                    f"estimators: unknown estimator {estimator!r}; choose from "
                    f"{', '.join(ESTIMATORS)}"
                )
    specs = []
    for seed in seeds:
        for mode in modes:
            if mode == "soft":
                specs.append(RunSpec("soft", regions, SOFT_ESTIMATOR, seed))
            else:
                specs.extend(RunSpec(mode, k, e, seed) for k in ks for e in estimators)
    return specs


def run_ablation(args: AblationArguments) -> Path:
    """Train and measure every run of ``grid(args)`` not yet in ``results.csv``, then write
    ``table.md``, ``report.md`` and the plots. Returns the output directory.

    Raises:
        FileExistsError: ``results.csv`` already has runs and ``args.resume`` is False.
        ValueError: a bad grid (see :func:`grid`), or ``--resume`` with other settings.
    """
    from tqdm.auto import tqdm

    from vqa.data.formats import load_local_dataset
    from vqa.training import loss_weight, resolve_data_dir

    specs = grid(args)
    out = Path(args.out)
    results = out / RESULTS_FILE
    done = {row["name"] for row in read_results(results)} if results.is_file() else set()
    if done and not args.resume:
        raise FileExistsError(
            f"{results} already holds {len(done)} runs: pass --resume to add the missing "
            "ones, or choose another --out"
        )
    preset = get_preset(args.preset)
    settings = {
        "data": args.data,
        "preset": args.preset,
        "epochs": args.epochs or preset.training["epochs"],
    }
    pointing = loss_weight("pointing_loss_weight", preset, args)
    if pointing < 0:
        raise ValueError(f"pointing_loss_weight must be >= 0, got {pointing!r}")
    if pointing > 0:  # absent: no pointing loss, as in earlier ablations
        settings["pointing_loss_weight"] = pointing
    check_settings(out, settings, args.resume)
    data_dir = resolve_data_dir(args.data, preset, args.progress)
    split = evaluation_split(data_dir)
    splits = load_local_dataset(data_dir, ["train", split])
    write_json(
        out / SETTINGS_FILE,
        {
            **settings,
            "split": split,
            "machine": machine(),
            "blind_accuracy": blind_accuracy(splits["train"], splits[split]),
        },
    )

    todo = [spec for spec in specs if spec.name not in done]
    with tqdm(
        total=len(specs),
        initial=len(specs) - len(todo),
        desc="Ablation",
        unit="run",
        disable=not args.progress,
    ) as bar:
        for spec in todo:
            bar.set_postfix_str(spec.name)
            append_result(results, measure_run(spec, args, splits["train"], splits[split]))
            bar.update()
    write_outputs(out, splits[split])
    return out


def check_settings(out: Path, settings: dict, resume: bool) -> None:
    """On resume, raise a ValueError if ``settings`` differ from those the runs were made with."""
    saved_file = out / SETTINGS_FILE
    if not (resume and saved_file.is_file()):
        return
    saved = json.loads(saved_file.read_text())
    changed = [
        f"{name} was {saved.get(name)!r}, now {value!r}"
        for name, value in settings.items()
        if saved.get(name) != value
    ]
    if changed:
        raise ValueError(
            f"--resume with other settings than the runs in {out}: " + "; ".join(changed)
        )


def machine() -> str:
    """The GPU, or the processor and torch's thread count, that the timings are measured on."""
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu} ({os.cpu_count()} cores; torch threads: {torch.get_num_threads()})"


def blind_accuracy(train_rows: Dataset, eval_rows: Dataset) -> float:
    """Accuracy on ``eval_rows`` of a baseline that ignores the image: the most frequent
    training answer of the same question text, else of the same question type."""
    from collections import Counter

    from vqa.metrics import answer_accuracy

    by_question: dict[str, Counter] = {}
    by_type: dict[str, Counter] = {}
    for question, kind, answers in zip(
        train_rows["question"], train_rows["question_type"], train_rows["answers"], strict=True
    ):
        by_question.setdefault(question.lower(), Counter()).update(answers)
        by_type.setdefault(kind, Counter()).update(answers)
    overall = sum(by_type.values(), Counter())
    return statistics.fmean(
        answer_accuracy(
            (by_question.get(question.lower()) or by_type.get(kind) or overall).most_common(1)[0][
                0
            ],
            answers,
        )
        for question, kind, answers in zip(
            eval_rows["question"], eval_rows["question_type"], eval_rows["answers"], strict=True
        )
    )


def evaluation_split(data_dir: Path) -> str:
    """``test`` if ``data_dir`` has it, else ``val``; a ValueError if it has neither."""
    from vqa.data.formats import available_splits

    present = available_splits(data_dir)
    for split in ("test", "val"):
        if split in present:
            return split
    raise ValueError(f"{data_dir} has neither a test nor a val split to evaluate on: {present}")


def measure_run(
    spec: RunSpec, args: AblationArguments, train_rows: Dataset, eval_rows: Dataset
) -> dict:
    """Train one run (or finish it, on resume) and measure it: one ``results.csv`` row."""
    import torch

    from vqa.evaluation import evaluate
    from vqa.inference import load_model
    from vqa.training import CHECKPOINT_DIR, TrainingArguments, train

    run_dir = Path(args.out) / RUNS_DIR / spec.name
    selective = spec.mode != "soft"
    summary = train(
        TrainingArguments(
            output=str(run_dir),
            data=args.data,
            preset=args.preset,
            mode=spec.mode,
            k=spec.k if selective else None,
            estimator=spec.estimator if selective else None,
            epochs=args.epochs,
            pointing_loss_weight=args.pointing_loss_weight,
            seed=spec.seed,
            resume=args.resume and (run_dir / CHECKPOINT_DIR).is_dir(),
            progress=args.progress,
        )
    )
    model, processor = load_model(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    scores = evaluate(model, processor, eval_rows, progress=args.progress)

    size = min(args.probe_batch_size, len(eval_rows))
    inputs = collate(processor, eval_rows, range(size), device)
    inputs.pop("labels")
    fusion_flops, total_flops = count_flops(model, inputs)

    generator = torch.Generator().manual_seed(spec.seed)  # which training batches
    torch.manual_seed(spec.seed)  # the estimators' samples
    size = min(args.probe_batch_size, len(train_rows))
    fixed = collate(processor, train_rows, range(size), device)
    batches = [
        collate(
            processor,
            train_rows,
            torch.randperm(len(train_rows), generator=generator)[:size],
            device,
        )
        for _ in range(args.grad_repeats)
    ]
    grad_variance, grad_noise, grad_batch_noise = score_gradient_noise(model, fixed, batches)

    losses = answer_losses(summary["history"])
    tail = losses[-max(2, math.ceil(LOSS_TAIL * len(losses))) :]
    return {
        "name": spec.name,
        "mode": spec.mode,
        "k": spec.k,
        "estimator": spec.estimator,
        "seed": spec.seed,
        "epochs": len(summary["history"]),
        "questions": scores["questions"],
        "accuracy": scores["accuracy"],
        **{f"accuracy_{kind}": value for kind, value in scores["accuracy_by_type"].items()},
        "pointing_accuracy": scores["pointing_accuracy"],
        "attention_entropy": scores["attention_entropy"],
        "regions_used": scores["regions_used"],
        "fusion_flops": fusion_flops,
        "total_flops": total_flops,
        "ms_per_question": scores["ms_per_question"],
        "train_seconds": sum(record["train_seconds"] for record in summary["history"]),
        "final_loss": statistics.fmean(tail),
        "loss_variance": statistics.variance(tail) if len(tail) > 1 else math.nan,
        "score_grad_variance": grad_variance,
        "score_grad_noise": grad_noise,
        "score_grad_batch_noise": grad_batch_noise,
    }


def collate(
    processor: HybridVQAProcessor,
    rows: Dataset,
    indices: Iterable[int],
    device: device | str = "cpu",
) -> dict[str, Tensor]:
    """Model inputs (with ``labels``) for the rows at ``indices``, on ``device``."""
    from vqa.processing import VQACollator

    inputs, _ = VQACollator(processor)([rows[int(i)] for i in indices])
    return {name: value.to(device) for name, value in inputs.items()}


def count_flops(model: HybridVQAModel, inputs: dict[str, Tensor]) -> tuple[float, float]:
    """FLOPs per question of one eval-mode forward pass: (after the encoders, total).

    Args:
        model: the model; its fusion mode and k decide what runs.
        inputs: a batch of B questions without labels: ``pixel_values`` (U, C, H, W),
            ``input_ids`` and ``attention_mask`` (B, L), ``image_index`` (B,).

    Returns:
        (FLOPs of ``model.fusion`` + ``model.reasoner`` + ``model.head``, FLOPs of the whole
        forward pass), each divided by B. Counted by ``FlopCounterMode`` with PyTorch's fused
        ``TransformerEncoderLayer`` fast path off: the counter has no formula for that fused
        kernel (it would count the reasoner as 0), and the plain path does the same arithmetic.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    questions = inputs["input_ids"].shape[0]
    counter = FlopCounterMode(display=False)
    fastpath, was_training = torch.backends.mha.get_fastpath_enabled(), model.training
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(**inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    by_module = counter.get_flop_counts()
    prefix = type(model).__name__
    fusion = sum(sum(by_module.get(f"{prefix}.{name}", {}).values()) for name in FUSION_MODULES)
    return fusion / questions, counter.get_total_flops() / questions


def score_gradient_noise(
    model: HybridVQAModel, fixed: dict[str, Tensor], batches: Sequence[dict[str, Tensor]]
) -> tuple[float, float, float]:
    """How noisy the gradient that trains the selection scores is (see :data:`DEFINITIONS`).

    The gradient g of the training loss with respect to the scorer weights
    (``fusion.q_proj.weight``, ``fusion.k_proj.weight``: the scores are q·k) is taken with
    dropout off and the fusion in training mode, so that gumbel and reinforce sample as in
    training, R = ``len(batches)`` times.

    Args:
        model: the model (its train/eval state is restored afterwards).
        fixed: one batch with labels, passed R times: only the estimator's samples vary.
        batches: R different batches with labels: data and samples vary.

    Returns:
        (variance on ``fixed``: mean over the weights of the variance across the R passes,
        noise-to-signal on ``fixed``, noise-to-signal on ``batches``), where noise-to-signal is
        the summed variance over the squared norm of the mean gradient.
    """
    import torch

    scorer = [model.fusion.q_proj.weight, model.fusion.k_proj.weight]
    was_training = model.training
    model.eval()
    model.fusion.train()

    def gradient(inputs: dict[str, Tensor]) -> Tensor:
        """(P,) the flattened scorer gradient; zeros where the estimator passes none."""
        grads = torch.autograd.grad(model(**inputs).loss, scorer, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(weight) if grad is None else grad).flatten()
                for grad, weight in zip(grads, scorer, strict=True)
            ]
        )

    try:
        repeated = torch.stack([gradient(fixed) for _ in batches])  # (R, P)
        varied = torch.stack([gradient(batch) for batch in batches])  # (R, P)
    finally:
        model.train(was_training)

    def noise_to_signal(gradients: Tensor) -> float:
        """(R, P) gradients -> summed variance over the squared norm of their mean."""
        return (gradients.var(0).sum() / gradients.mean(0).square().sum()).item()

    return repeated.var(0).mean().item(), noise_to_signal(repeated), noise_to_signal(varied)


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv``: text columns as str, counts as int, the rest as float
    (an empty cell, e.g. a question type that one dataset lacks, reads as nan)."""
    with Path(path).open(newline="", encoding="utf-8") as file:
        return [
            {
                name: value
                if name in TEXT_COLUMNS
                else int(value)
                if name in INT_COLUMNS
                else float(value or "nan")
                for name, value in row.items()
            }
            for row in csv.DictReader(file)
        ]


def append_result(path: Path, row: dict) -> None:
    """Add ``row`` to the results CSV at ``path``, atomically (write beside, then rename)."""
    rows = (read_results(path) if path.is_file() else []) + [row]
    columns = list(dict.fromkeys(name for each in rows for name in each))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the non-nan values; nan where undefined."""
    kept = [value for value in values if not math.isnan(value)]
    mean = statistics.fmean(kept) if kept else math.nan
    return mean, statistics.stdev(kept) if len(kept) > 1 else math.nan


def aggregate(rows: Iterable[dict]) -> list[dict]:
    """Rows grouped per configuration (mode, k, estimator), in order of first appearance.

    Returns:
        One dict per configuration: ``mode``, ``k``, ``estimator``, ``seeds`` (how many runs),
        ``names`` (the runs, lowest seed first) and, for every numeric column, (mean, std)
        over the seeds.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["k"], row["estimator"]), []).append(row)
    stats = []
    for (mode, k, estimator), members in groups.items():
        members = sorted(members, key=lambda row: row["seed"])
        entry = {
            "mode": mode,
            "k": k,
            "estimator": estimator,
            "seeds": len(members),
            "names": [row["name"] for row in members],
        }
        columns = dict.fromkeys(name for row in members for name in row)
        for column in columns:
            if column not in (*TEXT_COLUMNS, "k", "seed"):
                entry[column] = mean_std(row.get(column, math.nan) for row in members)
        stats.append(entry)
    return stats


def cell(value: tuple[float, float], scale: float = 1.0, fmt: str = ".3f") -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``n/a`` when not measured)."""
    mean, std = value
    if math.isnan(mean):
        return "n/a"
    text = f"{mean * scale:{fmt}}"
    return text if math.isnan(std) else f"{text} ± {std * scale:{fmt}}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summarise(results_csv: str | Path) -> str:
    """``table.md``: mean ± standard deviation over seeds per configuration (mode, k,
    estimator), the measurements, then accuracy per question type."""
    stats = aggregate(read_results(results_csv))
    config = ["mode", "k", "estimator", "seeds"]
    present = [metric for metric in METRICS if any(metric[0] in entry for entry in stats)]
    main = markdown_table(
        config + [header for _, header, _, _ in present],
        (
            [entry["mode"], str(entry["k"]), entry["estimator"], str(entry["seeds"])]
            + [cell(entry.get(c, (math.nan, math.nan)), s, f) for c, _, s, f in present]
            for entry in stats
        ),
    )
    types = list(dict.fromkeys(c for e in stats for c in e if c.startswith("accuracy_")))
    by_type = markdown_table(
        config + [column.removeprefix("accuracy_") for column in types],
        (
            [entry["mode"], str(entry["k"]), entry["estimator"], str(entry["seeds"])]
            + [cell(entry.get(column, (math.nan, math.nan))) for column in types]
            for entry in stats
        ),
    )
    return (
        "# Ablation: mean ± standard deviation over seeds\n\n"
        "k is the number of regions kept (all N for soft). Definitions: see report.md.\n\n"
        f"{main}\n## Accuracy per question type\n\n{by_type}"
    )


@dataclass(frozen=True)
class Comparison:
    """One measured test of a claim: is ``subject`` ``expected`` than ``reference``?

    Attributes:
        label: what is compared, e.g. ``hard k=4 ste vs soft``.
        metric: a results.csv column, or ``accuracy spread``.
        subject, reference: (mean, std over seeds) of each side; for ``accuracy spread``
            (std over seeds, its standard error).
        expected: ``higher`` or ``lower``; ``not lower`` or ``not higher`` when a tie agrees
            with the claim.
    """

    label: str
    metric: str
    subject: tuple[float, float]
    reference: tuple[float, float]
    expected: str

    @property
    def outcome(self) -> str:
        """``holds``, ``contradicted``, ``tie`` (a difference within the seed spread) or
        ``not measured``."""
        (a, a_std), (b, b_std) = self.subject, self.reference
        if math.isnan(a) or math.isnan(b):
            return "not measured"
        noise = max(0.0 if math.isnan(a_std) else a_std, 0.0 if math.isnan(b_std) else b_std)
        if abs(a - b) <= noise:
            return "tie"
        return "holds" if (a > b) == (self.expected in ("higher", "not lower")) else "contradicted"

    @property
    def support(self) -> str:
        """The outcome as evidence: a tie holds for ``not lower`` and ``not higher``."""
        if self.outcome == "tie" and self.expected.startswith("not "):
            return "holds"
        return self.outcome

    def row(self) -> list[str]:
        """The comparison as a row of the report's tables."""
        header, scale, fmt = METRIC_FORMATS.get(self.metric, (self.metric, 1.0, ".3f"))
        return [
            self.label,
            header,
            cell(self.subject, scale, fmt),
            cell(self.reference, scale, fmt),
            self.expected,
            self.outcome,
        ]


def verdict(outcomes: Iterable[str]) -> str:
    """Comparison outcomes (or implication verdicts) -> one verdict: holds, contradicted or
    inconclusive (all ties) when they agree, mixed when they do not, not measured if none."""
    found = {"inconclusive" if outcome == "tie" else outcome for outcome in outcomes}
    found.discard("not measured")
    if not found:
        return "not measured"
    return found.pop() if len(found) == 1 else "mixed"


CLAIMS = {
    "Training": "Hard: non-differentiable, needs REINFORCE, high variance. "
    "Soft: differentiable, smooth gradients.",
    "Compute": "Hard: lower, looks at key inputs only. Soft: higher, processes every input.",
    "Interpretability": "Hard: high, clear focus points. Soft: moderate, diffuse weights.",
    "Accuracy": "Hard: lower, less stable. Soft: higher, more stable.",
    "Hybrid": "Hybrid (hard top-k, then soft weights over the selected) gets the best of both: "
    "soft's accuracy, stability and focus at hard's compute.",
}


def config_label(entry: dict) -> str:
    """``soft`` or e.g. ``hybrid k=4 ste``."""
    if entry["mode"] == "soft":
        return "soft"
    return f"{entry['mode']} k={entry['k']} {entry['estimator']}"


def claim_comparisons(stats: Sequence[dict]) -> dict[str, dict[str, list[Comparison]]]:
    """For each claim of :data:`CLAIMS`, what it implies (one sentence per measurement) and
    the comparisons of aggregated configurations that test each implication: hard and hybrid
    against soft, hybrid against hard at the same k and estimator, REINFORCE against the other
    estimators at the same k."""
    missing = (math.nan, math.nan)
    soft = next((entry for entry in stats if entry["mode"] == "soft"), None)
    hard = [entry for entry in stats if entry["mode"] == "hard"]
    hybrid = [entry for entry in stats if entry["mode"] == "hybrid"]

    def versus(
        subjects: Sequence[dict], reference: dict | None, metric: str, expected: str
    ) -> list[Comparison]:
        if reference is None:
            return []
        return [
            Comparison(
                f"{config_label(subject)} vs {config_label(reference)}",
                metric,
                subject.get(metric, missing),
                reference.get(metric, missing),
                expected,
            )
            for subject in subjects
        ]

    def spread(entry: dict) -> dict:
        """The entry with ``accuracy spread``: (std over seeds, its standard error)."""
        std, seeds = entry["accuracy"][1], entry["seeds"]
        error = std / math.sqrt(2 * (seeds - 1)) if seeds > 1 else math.nan
        return {**entry, "accuracy spread": (std, error)}

    needs_reinforce = [
        Comparison(
            f"hard k={policy['k']}: reinforce vs {other['estimator']}",
            "accuracy",
            policy["accuracy"],
            other["accuracy"],
            "higher",
        )
        for policy in hard
        if policy["estimator"] == "reinforce"
        for other in hard
        if other["k"] == policy["k"] and other["estimator"] != "reinforce"
    ]
    same_selection = [
        Comparison(
            f"{config_label(mixed)} vs {config_label(plain)}",
            "accuracy",
            mixed["accuracy"],
            plain["accuracy"],
            "not lower",
        )
        for mixed in hybrid
        for plain in hard
        if (plain["k"], plain["estimator"]) == (mixed["k"], mixed["estimator"])
    ]
    soft_spread = None if soft is None else spread(soft)
    return {
        "Training": {
            "hard's estimator makes the score gradient noisy (estimator noise/signal)": versus(
                hard, soft, "score_grad_noise", "higher"
            ),
            "the scorer's SGD updates are noisier for hard (SGD noise/signal)": versus(
                hard, soft, "score_grad_batch_noise", "higher"
            ),
            "hard's loss fluctuates more at the end of training (loss var)": versus(
                hard, soft, "loss_variance", "higher"
            ),
            "hard needs REINFORCE: it beats ste and gumbel (accuracy)": needs_reinforce,
        },
        "Compute": {
            "hard computes less after the encoders (fusion FLOPs)": versus(
                hard, soft, "fusion_flops", "lower"
            ),
            "hard computes less in total (total FLOPs)": versus(hard, soft, "total_flops", "lower"),
            "hard answers faster (ms per question)": versus(hard, soft, "ms_per_question", "lower"),
            "hard trains faster (training seconds)": versus(hard, soft, "train_seconds", "lower"),
        },
        "Interpretability": {
            "hard's weights are focused (entropy)": versus(
                hard, soft, "attention_entropy", "lower"
            ),
            "hard's top region is on the object asked about (pointing)": versus(
                hard, soft, "pointing_accuracy", "higher"
            ),
        },
        "Accuracy": {
            "hard is less accurate (accuracy)": versus(hard, soft, "accuracy", "lower"),
            "hard is less stable over seeds (std of accuracy)": versus(
                [spread(entry) for entry in hard], soft_spread, "accuracy spread", "higher"
            ),
        },
        "Hybrid": {
            "hybrid is at least as accurate as hard at the same k and estimator": same_selection,
            "hybrid is as accurate as soft": versus(hybrid, soft, "accuracy", "not lower"),
            "hybrid is as stable as soft over seeds (std of accuracy)": versus(
                [spread(entry) for entry in hybrid], soft_spread, "accuracy spread", "not higher"
            ),
            "hybrid points as well as soft (pointing)": versus(
                hybrid, soft, "pointing_accuracy", "not lower"
            ),
            "hybrid computes like hard (fusion FLOPs below soft)": versus(
                hybrid, soft, "fusion_flops", "lower"
            ),
        },
    }


def write_report(results_csv: str | Path, path: str | Path, settings: dict) -> str:
    """Write ``report.md``: each claim, what it implies, the comparisons that test each
    implication, verdicts computed from them, and where the numbers contradict the claim.
    Returns the text.

    Args:
        results_csv: the ablation's results.
        path: where to write the report.
        settings: ``data``, ``preset``, ``epochs``, ``split``, ``machine`` and
            ``blind_accuracy`` of the ablation.
    """
    stats = aggregate(read_results(results_csv))
    runs = sum(entry["seeds"] for entry in stats)
    lines = [
        "# Hard, soft and hybrid attention: the claims, measured",
        "",
        f"{runs} runs ({len(stats)} configurations) of preset `{settings['preset']}` "
        f"(epochs per run: {settings['epochs']}), trained on `{settings['data']}` and measured "
        f"on its {settings['split']} split; timings on {settings.get('machine', 'n/a')}. "
        "Means ± standard deviations over seeds; table.md has every number per configuration. "
        "A difference within the seed spread is a *tie* (see the end of this page).",
        "",
    ]
    if settings.get("pointing_loss_weight"):
        lines += [
            f"Every run was trained with the pointing loss (weight "
            f"{settings['pointing_loss_weight']:g}): the fusion was told where to look, so "
            "pointing accuracy measures how well each mode follows that supervision.",
            "",
        ]
    if "blind_accuracy" in settings and stats:
        best = max(stats, key=lambda entry: entry["accuracy"][0])
        mean, std = best["accuracy"]
        beaten = mean - (0.0 if math.isnan(std) else std) > settings["blind_accuracy"]
        margin = mean - settings["blind_accuracy"]
        lines += [
            "A blind baseline (the most frequent training answer of the same question, else of "
            f"the same question type) scores {settings['blind_accuracy']:.3f}; the most accurate "
            f"configuration, {config_label(best)}, scores {cell(best['accuracy'])}. "
            + (
                f"It beats the baseline by {margin:.3f}; a blind model can learn more than this "
                "baseline (e.g. the answer priors of question templates), so a small margin "
                "does not show that the image is used."
                if beaten
                else "**No configuration beats this blind baseline by more than its seed "
                "spread: the models answer from the question alone, so these runs cannot rank "
                "the modes by accuracy, and accuracy ties below only say that no mode is worse.**"
            ),
            "",
        ]
    for title, implications in claim_comparisons(stats).items():
        verdicts = {
            implication: verdict(c.support for c in comparisons)
            for implication, comparisons in implications.items()
        }
        comparisons = [c for group in implications.values() for c in group]
        lines += [
            f"## {title}",
            "",
            f"> **Claim.** {CLAIMS[title]}",
            "",
            f"**Verdict: {verdict(verdicts.values())}**",
            "",
            markdown_table(
                ["what the claim implies", "verdict", "hold", "ties", "contradict"],
                (
                    [
                        implication,
                        verdicts[implication],
                        *(
                            str(sum(c.outcome == outcome for c in group))
                            for outcome in ("holds", "tie", "contradicted")
                        ),
                    ]
                    for implication, group in implications.items()
                ),
            ),
        ]
        against = [c for c in comparisons if c.outcome == "contradicted"]
        if against:
            lines += ["Where the numbers contradict the claim:", ""]
            for comparison in against:
                label, metric, measured, reference, expected, _ = comparison.row()
                lines.append(f"- {label}: {metric} {measured} vs {reference} (claimed: {expected})")
            lines.append("")
        if comparisons:
            lines += [
                "All comparisons:",
                "",
                markdown_table(
                    ["comparison", "metric", "measured", "reference", "claimed", "outcome"],
                    (comparison.row() for comparison in comparisons),
                ),
            ]
    text = "\n".join(lines) + "\n" + DEFINITIONS
    Path(path).write_text(text, encoding="utf-8")
    return text


def answer_losses(history: Sequence[dict]) -> list[float]:
    """Per-step answer loss over a whole training run, from its per-epoch history."""
    return [loss for record in history for loss in record["step_answer_losses"]]


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


def plot_accuracy_vs_k(stats: Sequence[dict], path: str | Path) -> None:
    """Accuracy against k, one line per (mode, estimator); soft (all N regions) as a band."""
    figure, axes = new_axes()
    ax = axes[0][0]
    for entry in stats:
        if entry["mode"] == "soft":
            mean, std = entry["accuracy"]
            ax.axhline(mean, color=MODE_COLOURS["soft"], ls="--", label=f"soft (all {entry['k']})")
            if not math.isnan(std):
                ax.axhspan(mean - std, mean + std, color=MODE_COLOURS["soft"], alpha=0.15)
    lines: dict[tuple[str, str], list[dict]] = {}
    for entry in stats:
        if entry["mode"] != "soft":
            lines.setdefault((entry["mode"], entry["estimator"]), []).append(entry)
    for (mode, estimator), entries in lines.items():
        entries = sorted(entries, key=lambda entry: entry["k"])
        errorbar(
            ax,
            entries,
            [entry["k"] for entry in entries],
            "accuracy",
            color=MODE_COLOURS.get(mode),
            marker=ESTIMATOR_MARKERS.get(estimator, "o"),
            ls="-" if mode == "hybrid" else ":",
            label=f"{mode} {estimator}",
        )
    ks = sorted({entry["k"] for entry in stats if entry["mode"] != "soft"})
    if ks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set(xlabel="k (regions kept)", ylabel="accuracy", title="Accuracy vs k (mean ± std)")
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def plot_accuracy_vs_flops(stats: Sequence[dict], path: str | Path) -> None:
    """Accuracy against FLOPs per question: after the encoders (left) and in total (right)."""
    figure, axes = new_axes(columns=2)
    for ax, metric in zip(axes[0], ("fusion_flops", "total_flops"), strict=True):
        seen = set()
        for entry in stats:
            label = f"{entry['mode']} {entry['estimator']}".replace(f" {SOFT_ESTIMATOR}", "")
            errorbar(
                ax,
                [entry],
                [entry[metric][0] * 1e-6],
                "accuracy",
                color=MODE_COLOURS.get(entry["mode"]),
                marker=ESTIMATOR_MARKERS.get(entry["estimator"], "o"),
                ls="none",
                label=None if label in seen else label,
            )
            seen.add(label)
            ax.annotate(
                f"k={entry['k']}",
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


def plot_training_curves(stats: Sequence[dict], runs_dir: str | Path, path: str | Path) -> None:
    """Per-step answer loss (moving average) per mode: one line per configuration, the mean
    over seeds with a min-max band over seeds."""
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


def plot_pointing(stats: Sequence[dict], path: str | Path) -> None:
    """Pointing accuracy per configuration, coloured by mode."""
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
) -> None:
    """The same questions answered by each mode's most accurate configuration (its first
    seed): the image, the head-averaged weight of each region on one colour scale for every
    cell, and the ground-truth boxes."""
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
        inputs = collate(processor, rows, indices)
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


def write_outputs(out: Path, eval_rows: Dataset) -> None:
    """table.md, report.md and the plots, from ``out/results.csv`` and ``out/runs``."""
    results = out / RESULTS_FILE
    stats = aggregate(read_results(results))
    (out / TABLE_FILE).write_text(summarise(results), encoding="utf-8")
    write_report(results, out / REPORT_FILE, json.loads((out / SETTINGS_FILE).read_text()))
    plot_accuracy_vs_k(stats, out / PLOT_FILES["accuracy_vs_k"])
    plot_accuracy_vs_flops(stats, out / PLOT_FILES["accuracy_vs_flops"])
    plot_training_curves(stats, out / RUNS_DIR, out / PLOT_FILES["training_curves"])
    plot_pointing(stats, out / PLOT_FILES["pointing"])
    plot_attention_gallery(stats, out / RUNS_DIR, eval_rows, out / PLOT_FILES["attention_gallery"])


def word_list(text: str) -> list[str]:
    """``"soft, hard"`` -> ``["soft", "hard"]`` (argparse type)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def integer_list(text: str) -> list[int]:
    """``"4,8"`` -> ``[4, 8]`` (argparse type)."""
    try:
        return [int(part) for part in word_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_ablate_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``vqa ablate`` on the ``vqa`` command's sub-parsers."""
    ablate = commands.add_parser(
        "ablate", help="train soft, hard and hybrid attention on one grid and compare them"
    )
    ablate.add_argument(
        "--data", default="synthetic", help="dataset directory, or 'synthetic' (embedded scenes)"
    )
    ablate.add_argument(
        "--modes", type=word_list, help="comma-separated, e.g. soft,hard,hybrid (default: preset)"
    )
    ablate.add_argument(
        "--k", type=integer_list, help="regions kept by hard and hybrid, e.g. 4,8,16"
    )
    ablate.add_argument(
        "--estimators", type=word_list, help="for hard and hybrid, e.g. ste,gumbel,reinforce"
    )
    ablate.add_argument("--seeds", type=integer_list, help="e.g. 0,1,2")
    ablate.add_argument("--epochs", type=int, help="per run (default: the preset's)")
    ablate.add_argument(
        "--pointing-loss-weight",
        type=float,
        help="supervise where every run looks (default: the preset's, 0 in quick and full)",
    )
    ablate.add_argument(
        "--preset", default="quick", help="quick (2-core CPU, 20 min) | full (GPU) | tiny"
    )
    ablate.add_argument("--out", required=True, help="output directory")
    ablate.add_argument(
        "--resume", action="store_true", help="skip the runs already in OUT/results.csv"
    )
    ablate.add_argument("--no-progress", action="store_true")
    ablate.set_defaults(run=run_ablate)


def run_ablate(args: argparse.Namespace) -> None:
    """The ``vqa ablate`` command: run the ablation, then say where the results are."""
    out = run_ablation(
        AblationArguments(
            out=args.out,
            data=args.data,
            preset=args.preset,
            modes=args.modes,
            k=args.k,
            estimators=args.estimators,
            seeds=args.seeds,
            epochs=args.epochs,
            pointing_loss_weight=args.pointing_loss_weight,
            resume=args.resume,
            progress=not args.no_progress,
        )
    )
    print(f"{out / RESULTS_FILE}, {out / TABLE_FILE}, {out / REPORT_FILE} and plots in {out}")
