"""The ablation's grid of runs, and :func:`run_ablation`, which trains, measures and reports it.

The settings that a ``--resume`` must match are written to ``ablation.json`` before the first
run; each finished run adds one row to ``results.csv``, so an interrupted ablation loses at
most the run in progress (and that one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqa.ablation.plots import (
    plot_accuracy_vs_flops,
    plot_accuracy_vs_k,
    plot_accuracy_vs_mean_k,
    plot_attention_gallery,
    plot_pointing,
    plot_training_curves,
)
from vqa.ablation.probes import (
    blind_accuracy,
    collate,
    count_flops,
    final_loss,
    regions_spread,
    score_gradient_noise,
)
from vqa.ablation.report import summarise, write_report
from vqa.ablation.statistics import (
    FIXED,
    SOFT_ESTIMATOR,
    aggregate,
    append_result,
    encoder_setting,
    k_name,
    read_results,
)
from vqa.files import write_json
from vqa.presets import Preset, get_preset

if TYPE_CHECKING:
    from datasets import Dataset

SETTINGS_FILE = "ablation.json"
# The settings that ablation.json holds only where they were used (see run_ablation).
OPTIONAL_SETTINGS = (
    "pointing_loss_weight",
    "region_loss_weight",
    "vision_class_token",
    "encoder_fold",
    "fusion_hops",
    "reconstruction_loss_weight",
    "contrast_loss_weight",
    "glimpse_loss_weight",
)
RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
REPORT_FILE = "report.md"
RUNS_DIR = "runs"
# In each run's directory: how many questions used each number of regions, overall and per
# question type (the distribution of k).
REGIONS_FILE = "regions_used.json"
PLOT_FILES = {
    "accuracy_vs_k": "accuracy_vs_k.png",
    "accuracy_vs_mean_k": "accuracy_vs_mean_k.png",
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


@dataclass
class AblationArguments:
    """Everything ``vqa ablate`` accepts; ``None`` means "what the preset says".

    Attributes:
        out: the output directory.
        data: a dataset directory in the local format, or ``"synthetic"`` (embedded scenes).
        preset: model, training and data sizes and the default grid (see ``vqa.presets``).
        modes, k, estimators, seeds: the grid. Estimators and k apply to hard and hybrid
            runs; soft runs once per seed.
        select_after, encoder_k, encoder_rule: the selection inside the vision encoder (None:
            none, the grid of earlier versions). Hard and hybrid runs are crossed with every
            ViT blocks before the selection, patch tokens kept (a count, or a ratio in
            (0, 1]) and rule that ranks them (``question``, or ``cls``: EViT's CLS attention);
            ``encoder_k`` and ``encoder_rule`` need ``select_after`` and default to the
            preset's and ``question``. Soft keeps every token, so it still runs once per seed.
            With the ``cls`` rule every run of the grid, soft included, gets a CLS token
            (``vision_class_token``), so that all of them share one architecture.
        k_rule: how many regions hard and hybrid runs keep (None: ``fixed`` alone, the grid of
            earlier versions): ``fixed`` (each value of ``k``), ``top_p`` (each value of
            ``top_p``) or ``budget`` (a learned k, each compute penalty of ``k_penalty``).
        top_p, k_penalty: the settings of the adaptive rules (None: the preset's, 0.9 and 0).
        k_max: the most regions an adaptive rule keeps (None: the preset's, 16).
        encoder_fold: every selection inside the encoder folds the dropped tokens into one.
        epochs: training epochs of every run.
        pointing_loss_weight: weight of the pointing loss in every run (None: the preset's,
            0 in ``quick`` and ``full``, so that pointing accuracy measures where each mode
            learns to look from the answers alone).
        region_loss_weight: weight of the region attribute loss in every run (None: the
            preset's, 1 in ``quick``). With it and the pointing loss at 0, nothing reads a box:
            every run learns from the answers alone, as on data without boxes.
        answers_only: every run trains as ``vqa train --answers-only`` does: no loss that
            reads a box, and the preset's box-free recipe (the default preset's; ``quick``
            has none) even where the rows have boxes. The two loss weights are then 0.
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
    select_after: Sequence[int] | None = None
    encoder_k: Sequence[int | float] | None = None
    encoder_rule: Sequence[str] | None = None
    k_rule: Sequence[str] | None = None
    top_p: Sequence[float] | None = None
    k_penalty: Sequence[float] | None = None
    k_max: int | None = None
    encoder_fold: bool = False
    epochs: int | None = None
    pointing_loss_weight: float | None = None
    region_loss_weight: float | None = None
    answers_only: bool = False
    resume: bool = False
    progress: bool = True
    grad_repeats: int = 8
    probe_batch_size: int = 32

    def __post_init__(self) -> None:
        """With ``answers_only``, the box losses' unset weights become 0 (a positive one is a
        ValueError), so that ablation.json records what the runs train with."""
        from vqa.arguments import turn_off_box_losses

        if self.answers_only:
            turn_off_box_losses(self)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid; ``k`` is the number of regions for soft (it keeps all),
    and the most regions (k_max) for an adaptive ``k_rule``.

    ``select_after``, ``encoder_k`` and ``encoder_rule`` are the selection inside the vision
    encoder (ViT blocks before it, patch tokens kept, what ranks them), None without one.
    ``k_rule`` is ``fixed``, ``top_p`` (with ``top_p``) or ``budget`` (with ``k_penalty``).
    """

    mode: str
    k: int
    estimator: str
    seed: int
    select_after: int | None = None
    encoder_k: int | float | None = None
    encoder_rule: str | None = None
    k_rule: str = FIXED
    top_p: float | None = None
    k_penalty: float | None = None

    @property
    def name(self) -> str:
        """Directory name of the run, e.g. ``hybrid-k4-ste-seed0``, ``soft-seed0``, with an
        adaptive k ``hybrid-topp0.9-kmax16-ste-seed0`` or ``hybrid-budget0.01-kmax16-ste-seed0``,
        or with a selection of 16 tokens after 1 ViT block ``hybrid-k4-ste-enc1x16-seed0``
        (ranked by the CLS attention: ``hybrid-k4-ste-enc1x16-cls-seed0``)."""
        if self.mode == "soft":
            return f"soft-seed{self.seed}"
        setting = encoder_setting(self.select_after, self.encoder_k, self.encoder_rule)
        encoder = f"-enc{setting}" if setting else ""
        keeps = k_name(self.k, self.k_rule, self.top_p, self.k_penalty)
        return f"{self.mode}-{keeps}-{self.estimator}{encoder}-seed{self.seed}"


def num_regions(preset: Preset) -> int:
    """Number of regions N (ViT patches) of the models that ``preset`` builds."""
    from vqa.configuration import HybridVQAConfig

    return HybridVQAConfig(**preset.model).num_regions


def listed(name: str, given: Sequence | None, defaults: dict) -> list:
    """``given`` (or the default grid's ``name``) without repeats; a ValueError if empty."""
    # Keyed by type too: the count 1 and the ratio 1.0 (every token) are different values.
    chosen = defaults[name] if given is None else given
    values = list({(type(value), value): value for value in chosen}.values())
    if not values:
        raise ValueError(f"{name}: the list is empty; give at least one value")
    return values


def grid(args: AblationArguments) -> list[RunSpec]:
    """The runs of ``args``: seeds outermost (a partial ablation covers every configuration
    with its first seeds), then modes, k and its rule (see :func:`k_grid`), estimators and
    the encoder selections (select_after, then encoder_k, then encoder_rule) in the order
    given.

    Raises:
        ValueError: an empty list, an unknown mode or estimator, a bad k or k rule (see
            :func:`k_grid`), or a bad encoder selection (see :func:`encoder_grid`); the
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
    keeps: list[tuple[int, str, float | None, float | None]] = []
    estimators: list[str] = []
    if any(mode != "soft" for mode in modes):
        keeps = k_grid(args, defaults)
        estimators = listed("estimators", args.estimators, defaults)
        for estimator in estimators:
            if estimator not in ESTIMATORS:
                raise ValueError(
                    f"estimators: unknown estimator {estimator!r}; choose from "
                    f"{', '.join(ESTIMATORS)}"
                )
    most = [k for k, _, _, _ in keeps]  # the most regions each setting keeps
    encoders = encoder_grid(args, preset, most) if keeps else [(None, None, None)]
    specs = []
    for seed in seeds:
        for mode in modes:
            if mode == "soft":
                specs.append(RunSpec("soft", regions, SOFT_ESTIMATOR, seed))
            else:
                specs.extend(
                    RunSpec(mode, k, e, seed, after, keep, rule, k_rule, top_p, penalty)
                    for k, k_rule, top_p, penalty in keeps
                    for e in estimators
                    for after, keep, rule in encoders
                )
    return specs


def k_grid(
    args: AblationArguments, defaults: dict
) -> list[tuple[int, str, float | None, float | None]]:
    """The (k, k_rule, top_p, k_penalty) settings that hard and hybrid runs are crossed with,
    rule by rule in the order of ``args.k_rule`` (default: ``fixed`` alone): each k of a
    fixed rule, each top_p of the top-p rule, each compute penalty of the budget rule. The
    adaptive rules keep at most k = ``args.k_max`` (default: the preset's) regions.

    Raises:
        ValueError: an empty list; an unknown rule; a k or k_max outside 1..N; a top_p outside
            (0, 1]; a negative k_penalty; k, top_p, k_penalty or k_max without a rule that
            reads it. The message names the argument and the value.
    """
    from vqa.configuration import K_RULES, HybridVQAConfig

    preset = get_preset(args.preset)
    config = HybridVQAConfig(**preset.model)
    rules = listed("k_rule", args.k_rule, {"k_rule": (FIXED,)})
    for rule in rules:
        if rule not in K_RULES:
            raise ValueError(f"k_rule: unknown rule {rule!r}; choose from {', '.join(K_RULES)}")
    readers = {
        "k": (FIXED,),
        "top_p": ("top_p",),
        "k_penalty": ("budget",),
        "k_max": ("top_p", "budget"),
    }
    for name, readable in readers.items():
        value = getattr(args, name)
        if value is not None and not set(readable) & set(rules):
            raise ValueError(f"{name}: {value!r} needs the {' or '.join(readable)} rule in k_rule")

    def check_count(name: str, k: object) -> None:
        """Raise a ValueError unless ``k`` is a number of regions, 1..N."""
        regions = config.num_regions
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= regions:
            raise ValueError(
                f"{name}: {k!r} is not between 1 and the number of regions ({regions}) of the "
                f"{args.preset!r} preset"
            )

    keeps: list[tuple[int, str, float | None, float | None]] = []
    for rule in rules:
        if rule == FIXED:
            ks = listed("k", args.k, defaults)
            for k in ks:
                check_count("k", k)
            keeps += [(k, FIXED, None, None) for k in ks]
            continue
        k_max = config.fusion_k_max if args.k_max is None else args.k_max
        check_count("k_max", k_max)
        if rule == "top_p":
            for top_p in listed("top_p", args.top_p, {"top_p": (config.fusion_top_p,)}):
                real = isinstance(top_p, int | float) and not isinstance(top_p, bool)
                if not (real and 0 < top_p <= 1):
                    raise ValueError(f"top_p: {top_p!r} is not in (0, 1]")
                keeps.append((k_max, rule, top_p, None))
        else:
            default = {"k_penalty": (config.fusion_k_penalty,)}
            for penalty in listed("k_penalty", args.k_penalty, default):
                real = isinstance(penalty, int | float) and not isinstance(penalty, bool)
                if not (real and penalty >= 0):
                    raise ValueError(f"k_penalty: {penalty!r} is not a number >= 0")
                keeps.append((k_max, rule, None, penalty))
    return keeps


def encoder_grid(
    args: AblationArguments, preset: Preset, ks: Sequence[int]
) -> list[tuple[int | None, int | float | None, str | None]]:
    """The (select_after, encoder_k, encoder_rule) triples that hard and hybrid runs are
    crossed with: ``[(None, None, None)]`` (no selection in the encoder) unless
    ``args.select_after`` is given. ``ks``: the most regions each k setting of the fusion
    keeps (k, or k_max).

    Raises:
        ValueError: ``encoder_k``, ``encoder_rule`` or ``encoder_fold`` without
            ``select_after``; a select_after outside 0..the preset's ViT blocks or that its
            model refuses (a vision encoder that cannot run block by block); an encoder_k that
            is neither a count in 1..N nor a ratio in (0, 1], or keeps fewer tokens than a k
            of the fusion; an unknown rule.
    """
    from vqa.class_attention import ENCODER_RULES
    from vqa.configuration import HybridVQAConfig

    if args.select_after is None:
        for name in ("encoder_k", "encoder_rule", "encoder_fold"):
            if getattr(args, name):
                raise ValueError(
                    f"{name}: {getattr(args, name)!r} needs select_after (the ViT blocks that "
                    "run on every patch token before the encoder keeps some of them)"
                )
        return [(None, None, None)]
    config = HybridVQAConfig(**preset.model)
    afters = listed("select_after", args.select_after, {})
    for after in afters:
        if (
            isinstance(after, bool)
            or not isinstance(after, int)
            or not 0 <= after <= config.vision_layers
        ):
            raise ValueError(
                f"select_after: {after!r} is not between 0 and the {config.vision_layers} ViT "
                f"blocks of the {args.preset!r} preset"
            )
        try:  # e.g. a vision encoder that cannot run block by block
            HybridVQAConfig(**{**preset.model, "encoder_select_after": after})
        except ValueError as error:
            raise ValueError(
                f"select_after: {after!r} with the {args.preset!r} preset: {error}"
            ) from None
    regions = config.num_regions
    keeps = listed("encoder_k", args.encoder_k, {"encoder_k": (config.encoder_k,)})
    for keep in keeps:
        count = isinstance(keep, int) and not isinstance(keep, bool) and 1 <= keep <= regions
        if not (count or (isinstance(keep, float) and 0.0 < keep <= 1.0)):
            raise ValueError(
                f"encoder_k: {keep!r} is neither a count between 1 and the number of regions "
                f"({regions}) of the {args.preset!r} preset nor a ratio in (0, 1]"
            )
        # The TokenSelector's rounding of a ratio (0.07 * 100 keeps 7, not 8).
        kept = keep if count else max(1, math.ceil(round(keep * regions, 9)))
        if kept < max(ks):
            raise ValueError(
                f"encoder_k: {keep!r} keeps {kept} of the {regions} patch tokens, fewer than "
                f"the fusion keeps (k={max(ks)}); give an encoder_k of at least {max(ks)} or "
                "smaller values of k"
            )
    rules = listed("encoder_rule", args.encoder_rule, {"encoder_rule": ("question",)})
    for rule in rules:
        if rule not in ENCODER_RULES:
            raise ValueError(
                f"encoder_rule: unknown rule {rule!r}; choose from {', '.join(ENCODER_RULES)}"
            )
    return [(after, keep, rule) for after in afters for keep in keeps for rule in rules]


def run_ablation(args: AblationArguments) -> Path:
    """Train and measure every run of ``grid(args)`` not yet in ``results.csv``, then write
    ``table.md``, ``report.md`` and the plots. Returns the output directory.

    Raises:
        FileExistsError: ``results.csv`` already has runs and ``args.resume`` is False.
        ValueError: a bad grid (see :func:`grid`), or ``--resume`` with other settings.
    """
    from tqdm.auto import tqdm

    from vqa.arguments import loss_weight
    from vqa.box_free import rows_have_boxes
    from vqa.cache import resolve_data_dir
    from vqa.data.formats import load_local_dataset
    from vqa.machine import machine

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
    data_dir = resolve_data_dir(args.data, preset, args.progress)
    split = evaluation_split(data_dir)
    splits = load_local_dataset(data_dir, ["train", split])
    has_boxes = rows_have_boxes(splits["train"])
    settings = {
        "data": args.data,
        "preset": args.preset,
        "epochs": run_epochs(args, preset, has_boxes),
    }
    pointing = loss_weight("pointing_loss_weight", preset, args)
    region = loss_weight("region_loss_weight", preset, args)
    for name, value in (("pointing_loss_weight", pointing), ("region_loss_weight", region)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    # Recorded only when used (or, for the region loss, changed from the preset's), so that
    # the ablation.json of earlier versions still matches on --resume; so are the CLS token
    # and the folding of every encoder selection.
    if pointing > 0:
        settings["pointing_loss_weight"] = pointing
    if region != preset.model.get("region_loss_weight", 0.0):
        settings["region_loss_weight"] = region
    if class_token(args):
        settings["vision_class_token"] = True
    if args.encoder_fold:
        settings["encoder_fold"] = True
    hops = run_hops(args, preset, has_boxes)
    if hops != 1:
        settings["fusion_hops"] = hops
    for name, value in recipe_fields(args, preset, has_boxes).items():
        if name != "fusion_hops":  # recorded above, where it is not 1
            settings[name] = value
    check_settings(out, settings, args.resume)
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


def run_epochs(args: AblationArguments, preset: Preset, has_boxes: bool) -> int:
    """The epochs each run trains: ``--epochs``, or the preset's, which on rows without boxes
    are its box-free recipe's (``Preset.box_free_training``) where it has them."""
    from vqa.arguments import TrainingArguments
    from vqa.box_free import box_free_training

    training = TrainingArguments(
        output=args.out, epochs=args.epochs, answers_only=args.answers_only
    )
    fields, _ = box_free_training(preset, training, has_boxes)
    return training.resolved(preset, fields).epochs


def run_hops(args: AblationArguments, preset: Preset, has_boxes: bool) -> int:
    """The fusion hops each run's model has: the preset's, or on rows without boxes (or with
    ``answers_only``) its box-free recipe's (the default preset: 2 with boxes, 1 without)."""
    fields = recipe_fields(args, preset, has_boxes)
    return fields.get("fusion_hops", preset.model.get("fusion_hops", 1))


def recipe_fields(args: AblationArguments, preset: Preset, has_boxes: bool) -> dict:
    """The preset's box-free ``HybridVQAConfig`` fields that every run's model trains with:
    on rows without boxes, or with ``answers_only`` (``vqa.box_free.box_free_fields``)."""
    from vqa.arguments import TrainingArguments
    from vqa.box_free import box_free_fields

    training = TrainingArguments(output=args.out, answers_only=args.answers_only)
    fields, _ = box_free_fields(preset, training, has_boxes)
    return fields


def class_token(args: AblationArguments) -> bool:
    """Whether every run gets a CLS token: when some run ranks the patches by its attention."""
    return "cls" in (args.encoder_rule or ())


def check_settings(out: Path, settings: dict, resume: bool) -> None:
    """On resume, raise a ValueError if ``settings`` differ from those the runs were made with."""
    saved_file = out / SETTINGS_FILE
    if not (resume and saved_file.is_file()):
        return
    saved = json.loads(saved_file.read_text())
    names = [
        *settings,
        *(name for name in OPTIONAL_SETTINGS if name in saved and name not in settings),
    ]
    changed = [
        f"{name} was {saved.get(name)!r}, now {settings.get(name)!r}"
        for name in names
        if saved.get(name) != settings.get(name)
    ]
    if changed:
        raise ValueError(
            f"--resume with other settings than the runs in {out}: " + "; ".join(changed)
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

    from vqa.arguments import K_WORDS, TrainingArguments
    from vqa.checkpoints import CHECKPOINT_DIR
    from vqa.evaluation import evaluate
    from vqa.inference import load_model
    from vqa.training import train

    run_dir = Path(args.out) / RUNS_DIR / spec.name
    selective = spec.mode != "soft"
    adaptive = spec.k_rule != FIXED
    k_word = {rule: word for word, rule in K_WORDS.items()}.get(spec.k_rule)  # "auto", "budget"
    summary = train(
        TrainingArguments(
            output=str(run_dir),
            data=args.data,
            preset=args.preset,
            mode=spec.mode,
            k=(k_word if adaptive else spec.k) if selective else None,
            k_max=spec.k if adaptive else None,
            top_p=spec.top_p,
            k_penalty=spec.k_penalty,
            estimator=spec.estimator if selective else None,
            select_after=spec.select_after,
            encoder_k=spec.encoder_k,
            encoder_rule=spec.encoder_rule,
            encoder_fold=args.encoder_fold and spec.select_after is not None,
            vision_class_token=class_token(args),
            epochs=args.epochs,
            pointing_loss_weight=args.pointing_loss_weight,
            region_loss_weight=args.region_loss_weight,
            answers_only=args.answers_only,
            seed=spec.seed,
            resume=args.resume and (run_dir / CHECKPOINT_DIR).is_dir(),
            progress=args.progress,
        )
    )
    model, processor = load_model(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    scores = evaluate(model, processor, eval_rows, progress=args.progress, histograms_by_type=True)
    histograms = scores["regions_used_histogram_by_type"]  # the distribution of k per type
    write_json(
        run_dir / REGIONS_FILE,
        {"histogram": scores["regions_used_histogram"], "histogram_by_type": histograms},
    )

    size = min(args.probe_batch_size, len(eval_rows))
    inputs = collate(processor, eval_rows, range(size), device)
    inputs.pop("labels")
    fusion_flops, total_flops = count_flops(model, inputs)  # total: the encoders included

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

    loss, loss_variance = final_loss(summary["history"])
    return {
        "name": spec.name,
        "mode": spec.mode,
        "k": spec.k,
        "k_rule": spec.k_rule,
        "top_p": spec.top_p,
        "k_penalty": spec.k_penalty,
        "estimator": spec.estimator,
        "select_after": spec.select_after,
        "encoder_k": spec.encoder_k,
        "encoder_rule": spec.encoder_rule,
        "seed": spec.seed,
        "epochs": len(summary["history"]),
        "questions": scores["questions"],
        "accuracy": scores["accuracy"],
        **{f"accuracy_{kind}": value for kind, value in scores["accuracy_by_type"].items()},
        "pointing_accuracy": scores["pointing_accuracy"],
        "attention_entropy": scores["attention_entropy"],
        "regions_used": scores["regions_used"],
        "regions_spread": regions_spread(scores["regions_used_histogram"]),
        **{f"regions_used_{kind}": value for kind, value in scores["regions_used_by_type"].items()},
        **{f"regions_spread_{kind}": regions_spread(counts) for kind, counts in histograms.items()},
        "encoder_flops": total_flops - fusion_flops,
        "fusion_flops": fusion_flops,
        "total_flops": total_flops,
        "ms_per_question": scores["ms_per_question"],
        "train_seconds": sum(record["train_seconds"] for record in summary["history"]),
        "final_loss": loss,
        "loss_variance": loss_variance,
        "score_grad_variance": grad_variance,
        "score_grad_noise": grad_noise,
        "score_grad_batch_noise": grad_batch_noise,
    }


def write_outputs(out: Path, eval_rows: Dataset) -> None:
    """table.md, report.md and the plots, from ``out/results.csv`` and ``out/runs``."""
    results = out / RESULTS_FILE
    stats = aggregate(read_results(results))
    (out / TABLE_FILE).write_text(summarise(results), encoding="utf-8")
    write_report(results, out / REPORT_FILE, json.loads((out / SETTINGS_FILE).read_text()))
    plot_accuracy_vs_k(stats, out / PLOT_FILES["accuracy_vs_k"])
    plot_accuracy_vs_mean_k(stats, out / PLOT_FILES["accuracy_vs_mean_k"])
    plot_accuracy_vs_flops(stats, out / PLOT_FILES["accuracy_vs_flops"])
    plot_training_curves(stats, out / RUNS_DIR, out / PLOT_FILES["training_curves"])
    plot_pointing(stats, out / PLOT_FILES["pointing"])
    plot_attention_gallery(stats, out / RUNS_DIR, eval_rows, out / PLOT_FILES["attention_gallery"])
