"""``table.md`` and ``report.md``: the ablation's numbers per configuration, and each claim of
``claims.CLAIMS`` with the comparisons that test it, their p-values and verdicts.

How each number is measured is :data:`DEFINITIONS`, printed at the end of report.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from vqa.ablation.claims import (
    CLAIMS,
    ENCODER_SAVING,
    FUSION_SAVING,
    LATENCY_SAVING,
    TOTAL_SAVING,
    Comparison,
    claim_comparisons,
    equal_cost_accuracy,
    family_column,
    fixed_curve,
    rule_pairs,
    selects_in_encoder,
    verdict,
)
from vqa.ablation.probes import FUSION_MODULES, LOSS_TAIL
from vqa.ablation.statistics import (
    ALPHA,
    MEAN_TEST,
    SPREAD_TEST,
    aggregate,
    config_label,
    encoder_setting,
    is_adaptive,
    mean_std,
    one_sample_test,
    read_results,
    rule_setting,
    selection_of,
    welch_test,
)
from vqa.presets import get_preset

# (results.csv column, table header, scale, format) of the numbers that table.md shows.
METRICS = (
    ("accuracy", "accuracy", 1.0, ".3f"),
    ("pointing_accuracy", "pointing", 1.0, ".3f"),
    ("attention_entropy", "entropy (nats)", 1.0, ".2f"),
    ("regions_used", "regions used", 1.0, ".1f"),
    ("encoder_flops", "encoder MFLOP/q", 1e-6, ".2f"),
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
- **regions used**: regions with a non-zero weight (of the head-averaged weights: with
  several fusion heads or hops, the regions that any head or hop kept). With one head and one
  hop this is the question's k, so its mean is the **mean k**; the fixed-k reference of an
  adaptive rule is placed by the regions each fixed run used, so that both count the same;
  `regions_used_<type>` and `regions_spread_<type>` in results.csv are its mean and its
  standard deviation over the questions of each type, and
  `runs/<name>/regions_used.json` its distribution (questions per number of regions).
- **k rule** (`k_rule`, `top_p`, `k_penalty` in results.csv): how many regions hard and hybrid
  runs keep: a fixed k; `top_p=P k_max=K`, per question the fewest regions whose attention
  mass reaches P, at most K; `budget=L k_max=K`, a learned k per question, trained with the
  compute penalty L · E[k]. For an adaptive rule the k column is K.
- **fusion MFLOP/q**: FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (matrix
  products, convolutions, attention; element-wise operations are not counted) in eval-mode
  forward passes of the first questions of the evaluation split, each asked alone (its own
  question tokens, no padding), averaged over them, in the modules after the encoders and their
  projections: `model.{", model.".join(FUSION_MODULES)}` (everything whose cost depends on the
  fusion's selection). Asked alone, a question of an adaptive rule runs on exactly its own k
  slots, so these FLOPs follow the kept k (in a batch, every question runs on the batch's
  largest k). **total MFLOP/q** adds the encoders, counted on the batch: questions about one
  image share its encoding, as in evaluation, except for the ViT blocks after a selection
  inside the vision encoder, which run per question.
  **encoder MFLOP/q** is total minus fusion: the vision and text encoders, their projections
  and the selection inside the vision encoder (where `--select-after` gives one).
- **enc=SxK** (`select_after`, `encoder_k` in results.csv): the selection inside the vision
  encoder of hard and hybrid runs: S ViT blocks run on every patch token, then the question
  keeps the top K (a count, or a ratio of the N patches) for the remaining blocks. Without it
  the encoders run on every patch in every mode, and hard attention can save only after them.
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
- **Comparisons** in report.md: the per-seed values of two configurations are compared with
  {MEAN_TEST} (two-sided, `scipy.stats.ttest_ind(..., equal_var=False)`), their accuracy
  spreads with the two-sided {SPREAD_TEST} (s₁² / s₂²). A difference counts at p < {ALPHA};
  otherwise it is a *tie*. Measurements that do not vary between seeds (FLOP counts) differ
  exactly (p = 0) or not at all (p = 1). With fewer than 2 seeds on either side no test can
  run: the comparison is *not tested*, and counts as a tie that supports nothing. The p-values
  are not corrected for the number of comparisons: about 1 in 20 comparisons of configurations
  that do not differ shows a difference by chance. Each claim is split into
  what it implies, one measurement each. An implication *holds* when every comparison holds
  (for "not lower" / "not higher" a tie holds too), is *contradicted* when every comparison
  contradicts it, is *inconclusive* when every comparison is a tie or not tested, and is
  *mixed* otherwise. A claim's verdict combines its implications' verdicts the same way.
"""


def cell(value: tuple[float, float], scale: float = 1.0, fmt: str = ".3f") -> str:
    """``mean ± std`` (``mean`` alone for one seed, ``n/a`` when not measured)."""
    mean, std = value
    if math.isnan(mean):
        return "n/a"
    text = f"{mean * scale:{fmt}}"
    return text if math.isnan(std) else f"{text} ± {std * scale:{fmt}}"


def p_text(p_value: float) -> str:
    """A p-value for a table: three significant digits, ``n/a`` when no test ran."""
    return "n/a" if math.isnan(p_value) else f"{p_value:.3g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summarise(results_csv: str | Path) -> str:
    """``table.md``: mean ± standard deviation over seeds per configuration (mode, k,
    estimator, and the encoder selection when a run has one), the measurements, then accuracy
    per question type."""
    stats = aggregate(read_results(results_csv))
    # The encoder column only when a run selects inside the vision encoder, so that the
    # tables of ablations without one stay as they were.
    encoder = any(selects_in_encoder(entry) for entry in stats)
    # Likewise the k rule's column and table only when a run keeps an adaptive k.
    adaptive = any(map(is_adaptive, stats))
    config = [
        "mode",
        "k",
        *(["k rule"] if adaptive else []),
        "estimator",
        *(["encoder"] if encoder else []),
        "seeds",
    ]

    def configuration(entry: dict) -> list[str]:
        setting = encoder_setting(*selection_of(entry)) or "-"
        rule = rule_setting(entry) or "-"
        return [
            entry["mode"],
            str(entry["k"]),
            *([rule] if adaptive else []),
            entry["estimator"],
            *([setting] if encoder else []),
            str(entry["seeds"]),
        ]

    present = [metric for metric in METRICS if any(metric[0] in entry for entry in stats)]
    main = markdown_table(
        config + [header for _, header, _, _ in present],
        (
            configuration(entry)
            + [cell(entry.get(c, (math.nan, math.nan)), s, f) for c, _, s, f in present]
            for entry in stats
        ),
    )
    types = list(dict.fromkeys(c for e in stats for c in e if c.startswith("accuracy_")))
    by_type = markdown_table(
        config + [column.removeprefix("accuracy_") for column in types],
        (
            configuration(entry)
            + [cell(entry.get(column, (math.nan, math.nan))) for column in types]
            for entry in stats
        ),
    )
    legend = (
        " encoder SxK: K patch tokens kept after S ViT blocks, ranked by the question (SxK-cls: "
        "by the CLS token's attention, EViT's rule; - : every token)."
        if encoder
        else ""
    )
    if adaptive:
        legend += (
            " k rule: top_p=P keeps per question the fewest regions whose attention mass "
            "reaches P, budget=L a learned k trained with the compute penalty L; k is then the "
            "most regions kept (k_max), and regions used the mean k."
        )
    text = (
        "# Ablation: mean ± standard deviation over seeds\n\n"
        f"k is the number of regions kept (all N for soft).{legend} Definitions: see "
        f"report.md.\n\n{main}\n## Accuracy per question type\n\n{by_type}"
    )
    if adaptive:
        text += f"\n## Regions used (mean k) per question type\n\n{regions_by_type(stats)}"
    return text


def regions_by_type(stats: Sequence[dict]) -> str:
    """A markdown table of each adaptive-k configuration's mean k per question type: mean ±
    std over seeds, and in brackets the standard deviation of k over the questions of that
    type (mean over seeds)."""
    adaptive = [entry for entry in stats if is_adaptive(entry)]
    prefix = "regions_used_"
    types = [
        column.removeprefix(prefix)
        for column in dict.fromkeys(c for e in adaptive for c in e if c.startswith(prefix))
    ]
    missing = (math.nan, math.nan)

    def spread(entry: dict, kind: str) -> str:
        mean = entry.get(f"regions_spread_{kind}", missing)[0]
        return "" if math.isnan(mean) else f" ({mean:.1f})"

    return markdown_table(
        ["configuration", *types],
        (
            [config_label(entry)]
            + [
                cell(entry.get(prefix + kind, missing), 1.0, ".1f") + spread(entry, kind)
                for kind in types
            ]
            for entry in adaptive
        ),
    )


def comparison_row(comparison: Comparison) -> list[str]:
    """A comparison as a row of the report's tables: label, metric, the two sides (mean ± std,
    or std ± its standard error for spreads), the claim, the p-value and the outcome."""
    header, scale, fmt = METRIC_FORMATS.get(comparison.metric, (comparison.metric, 1.0, ".3f"))
    return [
        comparison.label,
        header,
        cell(comparison.summary(comparison.subject), scale, fmt),
        cell(comparison.summary(comparison.reference), scale, fmt),
        comparison.expected,
        p_text(comparison.test.p_value),
        comparison.outcome,
    ]


def describe_machine(info: dict | str | None) -> str:
    """The machine of ``ablation.json``: a ``vqa.machine.machine()`` dict, or the one-line
    text that ablations recorded before that dict existed."""
    if isinstance(info, dict):
        from vqa.machine import describe

        return describe(info)
    return info or "n/a"


def blind_baseline(stats: Sequence[dict], blind: float) -> str:
    """The paragraph that compares the most accurate configuration with the blind baseline."""
    best = max(stats, key=lambda entry: entry["accuracy"][0])
    test = one_sample_test(best["values"]["accuracy"], blind)
    text = (
        "A blind baseline (the most frequent training answer of the same question, else of "
        f"the same question type) scores {blind:.3f}; the most accurate configuration, "
        f"{config_label(best)}, scores {cell(best['accuracy'])}. "
    )
    if test.direction == "higher":
        return text + (
            f"It beats the baseline by {best['accuracy'][0] - blind:.3f} ({test.test}, p = "
            f"{p_text(test.p_value)}); a blind model can learn more than this baseline (e.g. "
            "the answer priors of question templates), so a small margin does not show that "
            "the image is used."
        )
    if test.direction == "not tested":
        return text + (
            "With one seed the difference could not be tested, so these runs cannot tell "
            "whether the models use the image."
        )
    return text + (
        f"**The difference is not significant ({test.test} over {best['seeds']} seeds, p = "
        f"{p_text(test.p_value)}): these runs do not show that the models use the image, so "
        "they cannot rank the modes by accuracy, and accuracy ties below only say that no mode "
        "is worse.**"
    )


def end_to_end(stats: Sequence[dict], verdicts: dict[str, str]) -> list[str]:
    """The Compute claim judged on the whole forward pass (total FLOPs and ms per question,
    encoders included), and whether hard's saving is in the encoders or only after them.

    Args:
        stats: the aggregated configurations.
        verdicts: the verdict of each implication of the Compute claim.

    Returns:
        report.md's lines (a paragraph and a blank line); none without soft and hard runs.
    """
    soft = next((entry for entry in stats if entry["mode"] == "soft"), None)
    hard = [entry for entry in stats if entry["mode"] == "hard"]
    if soft is None or not hard:
        return []
    total, latency = verdicts[TOTAL_SAVING], verdicts[LATENCY_SAVING]
    text = (
        f"**End to end** (the encoders included): total FLOPs below soft's: {total}; ms per "
        f"question below soft's: {latency}; **hard is cheaper: {verdict([total, latency])}**. "
    )
    selecting = [entry for entry in hard if selects_in_encoder(entry)]
    if not selecting:
        fusion, whole = (
            soft.get(name, (math.nan, math.nan))[0] for name in ("fusion_flops", "total_flops")
        )
        share = ""
        if whole > 0 and not math.isnan(fusion):
            share = f" ({fusion / whole:.0%} of soft's total FLOPs: the most it can save)"
        if any(map(selects_in_encoder, stats)):  # hybrid runs do
            subject, encodes = "No hard run", "hard encodes all N patches as soft does"
        else:
            subject, encodes = "No run", "every mode encodes all N patches"
        text += (
            f"{subject} selects patch tokens inside the vision encoder (`--select-after`): "
            f"{encodes}, so any saving of hard attention is only after the encoders, in the "
            f"fusion, reasoner and head{share}."
        )
    else:
        encoder, after = verdicts[ENCODER_SAVING], verdicts[FUSION_SAVING]
        text += (
            "Hard configurations that select patch tokens inside the vision encoder: "
            f"{len(selecting)} of {len(hard)}; their encoder FLOPs below soft's: {encoder}; "
            f"FLOPs after the encoders below soft's: {after}; {saving_source(encoder, after)}."
        )
    return [text, ""]


def guidance(stats: Sequence[dict]) -> list[str]:
    """What the question's guidance inside the vision encoder is worth, per keep rate: the
    accuracy of the question-guided selection minus that of EViT's CLS rule keeping as many
    patches, with Welch's t-test (a tie when p >= ALPHA), and the total FLOPs of both.

    Returns:
        report.md's lines (a list and a blank line); none without such pairs.
    """
    outcomes = {
        "higher": "the question's guidance is worth accuracy",
        "lower": "the CLS rule is more accurate",
        "tie": "a tie, within the noise",
        "not tested": "not tested (fewer than 2 seeds on a side)",
    }
    lines = []
    for guided, other in rule_pairs(stats):
        test = welch_test(guided["values"]["accuracy"], other["values"]["accuracy"])
        difference = guided["accuracy"][0] - other["accuracy"][0]
        flops = [
            cell(entry.get("total_flops", (math.nan, math.nan)), 1e-6, ".2f")
            for entry in (guided, other)
        ]
        lines.append(
            f"- {config_label(guided)}: question − CLS = {difference:+.3f} accuracy "
            f"({cell(guided['accuracy'])} vs {cell(other['accuracy'])}; {test.test}, p = "
            f"{p_text(test.p_value)}): **{outcomes.get(test.direction, test.direction)}**; "
            f"total MFLOP/q {flops[0]} vs {flops[1]}."
        )
    if not lines:
        return []
    return [
        "**What the question's guidance is worth**, per keep rate (accuracy of the "
        "question-guided selection minus that of EViT's CLS rule keeping as many patches):",
        "",
        *lines,
        "",
    ]


def adaptive_k(stats: Sequence[dict]) -> list[str]:
    """The Adaptive k claim's answers, per adaptive-k configuration: its accuracy against
    fixed k at the same mean k (:func:`equal_cost_line`), and its mean k per question type
    with the tests of counting and comparison questions against colour ones
    (:func:`family_line`).

    Returns:
        report.md's lines; none without an adaptive-k configuration.
    """
    adaptive = [entry for entry in stats if is_adaptive(entry)]
    if not adaptive:
        return []
    return [
        "**At equal mean cost**: each adaptive-k configuration against fixed k of the same mode "
        "and estimator at its mean k (regions used), the fixed k's accuracy interpolated "
        f"linearly in k between the fixed k around it, seed by seed; {MEAN_TEST}, a *tie* when "
        f"p ≥ {ALPHA}. The mean k is the cost that the comparison holds equal; fusion FLOPs "
        "follow it, each question counted alone on exactly its own k slots.",
        "",
        *(equal_cost_line(entry, stats) for entry in adaptive),
        "",
        "**Regions per question type**: mean k ± std over seeds, in brackets the standard "
        "deviation of k over the questions of the type (mean over seeds):",
        "",
        regions_by_type(stats),
        *(family_line(entry) for entry in adaptive),
        "",
    ]


def answers_only(settings: dict) -> bool:
    """Whether the runs of ``settings`` (ablation.json) had no loss that reads a box: the
    pointing loss off and the region attribute loss at 0 (given, or the preset's)."""
    preset_weight = get_preset(settings["preset"]).model.get("region_loss_weight", 0.0)
    region = settings.get("region_loss_weight", preset_weight)
    return region == 0 and not settings.get("pointing_loss_weight")


def equal_cost_line(entry: dict, stats: Sequence[dict]) -> str:
    """One adaptive-k configuration against fixed k at its mean k: a list item that says
    whether adaptive k beats fixed k, ties with it or is worse, or why it cannot be told."""
    outcomes = {
        "higher": "adaptive k beats fixed k",
        "lower": "adaptive k is worse than fixed k",
        "tie": "a tie, within the noise",
        "not tested": "not tested (fewer than 2 seeds on a side)",
    }
    missing = (math.nan, math.nan)
    text = (
        f"- {config_label(entry)}: mean k {cell(entry.get('regions_used', missing), 1.0, '.1f')} "
        f"(fusion MFLOP/q {cell(entry.get('fusion_flops', missing), 1e-6, '.3f')}; "
        f"k_max = {entry['k']})"
    )
    curve = fixed_curve(entry, stats)
    reference = equal_cost_accuracy(entry, curve)
    if reference is None:
        ks = ", ".join(str(fixed["k"]) for fixed in curve) or "none"
        return text + (
            f"; **not compared**: its mean k is not within the fixed k of the grid at every "
            f"seed (fixed k of the same mode and estimator: {ks})."
        )
    test = welch_test(entry["values"]["accuracy"], reference)
    return text + (
        f"; accuracy {cell(entry['accuracy'])} vs {cell(mean_std(reference))} for fixed k at "
        f"the same mean k ({test.test}, p = {p_text(test.p_value)}): "
        f"**{outcomes.get(test.direction, test.direction)}**."
    )


def family_line(entry: dict) -> str:
    """A list item: the mean k of one adaptive-k configuration's counting and comparison
    questions minus that of its colour questions, each with Welch's t-test over seeds."""
    colour = family_column(entry, "colour")
    parts = []
    for family in ("counting", "comparison"):
        column = family_column(entry, family)
        if column is None or colour is None:
            continue
        test = welch_test(entry["values"][column], entry["values"][colour])
        outcome = {
            "higher": f"{family} questions take more regions",
            "lower": f"{family} questions take fewer regions",
            "tie": "a tie, within the noise",
            "not tested": "not tested (fewer than 2 seeds on a side)",
        }.get(test.direction, test.direction)
        names = column.removeprefix("regions_used_"), colour.removeprefix("regions_used_")
        parts.append(
            f"{names[0]} − {names[1]} = {entry[column][0] - entry[colour][0]:+.1f} regions "
            f"({cell(entry[column], 1.0, '.1f')} vs {cell(entry[colour], 1.0, '.1f')}; "
            f"{test.test}, p = {p_text(test.p_value)}): **{outcome}**"
        )
    if not parts:
        return f"- {config_label(entry)}: no counting or comparison questions beside colour ones."
    return f"- {config_label(entry)}: " + "; ".join(parts) + "."


def saving_source(encoder: str, after: str) -> str:
    """Where hard attention's saving is, from the verdicts of its encoder FLOPs and its FLOPs
    after the encoders against soft's (``mixed``: for some configurations)."""
    saves = {"holds": "", "mixed": " (for some configurations)"}
    if encoder in saves and after in saves:
        return f"the saving comes from the encoder and after it{saves[encoder] or saves[after]}"
    if encoder in saves:
        return f"the saving comes from the encoder only{saves[encoder]}"
    # Why a selection can cost more than it saves: its later blocks cannot share the image.
    costlier = (
        " (after a selection inside the encoder, its blocks run once per question instead of "
        "once per image)"
        if encoder == "contradicted"
        else ""
    )
    if after in saves:
        return f"the saving is only after the encoders{saves[after]}{costlier}"
    return f"neither the encoders nor what runs after them computes less than soft{costlier}"


def write_report(results_csv: str | Path, path: str | Path, settings: dict) -> str:
    """Write ``report.md``: each claim, what it implies, the comparisons that test each
    implication with their p-values, verdicts computed from them, and where the numbers
    contradict the claim. Returns the text.

    Args:
        results_csv: the ablation's results.
        path: where to write the report.
        settings: ``data``, ``preset``, ``epochs``, ``split``, ``machine`` and
            ``blind_accuracy`` of the ablation (ablation.json).
    """
    stats = aggregate(read_results(results_csv))
    runs = sum(entry["seeds"] for entry in stats)
    lines = [
        "# Hard, soft and hybrid attention: the claims, measured",
        "",
        f"{runs} runs ({len(stats)} configurations) of preset `{settings['preset']}` "
        f"(epochs per run: {settings['epochs']}), trained on `{settings['data']}` and measured "
        f"on its {settings['split']} split; timings on "
        f"{describe_machine(settings.get('machine'))}. "
        "Means ± standard deviations over seeds; table.md has every number per configuration. "
        f"Means are compared with {MEAN_TEST}, spreads over seeds with the {SPREAD_TEST}; a "
        f"difference with p ≥ {ALPHA} is a *tie*, and with fewer than 2 seeds on a side the "
        "comparison is *not tested* (see the end of this page).",
        "",
    ]
    if answers_only(settings):
        lines += [
            "Every run learned from the answers alone: no region attribute loss, no pointing "
            "loss, so nothing read a box, as on data without boxes.",
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
        lines += [blind_baseline(stats, settings["blind_accuracy"]), ""]
    outcomes = ("holds", "tie", "not tested", "contradicted")
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
            *(end_to_end(stats, verdicts) if title == "Compute" else []),
            *(guidance(stats) if title == "Guidance" else []),
            *(adaptive_k(stats) if title == "Adaptive k" else []),
            markdown_table(
                ["what the claim implies", "verdict", "hold", "ties", "not tested", "contradict"],
                (
                    [
                        implication,
                        verdicts[implication],
                        *(str(sum(c.outcome == o for c in group)) for o in outcomes),
                    ]
                    for implication, group in implications.items()
                ),
            ),
        ]
        against = [c for c in comparisons if c.outcome == "contradicted"]
        if against:
            lines += ["Where the numbers contradict the claim:", ""]
            for comparison in against:
                label, metric, measured, reference, expected, p_value, _ = comparison_row(
                    comparison
                )
                lines.append(
                    f"- {label}: {metric} {measured} vs {reference} "
                    f"(claimed: {expected}; p = {p_value})"
                )
            lines.append("")
        if comparisons:
            lines += [
                "All comparisons:",
                "",
                markdown_table(
                    ["comparison", "metric", "measured", "reference", "claimed", "p", "outcome"],
                    (comparison_row(comparison) for comparison in comparisons),
                ),
            ]
    text = "\n".join(lines) + "\n" + DEFINITIONS
    Path(path).write_text(text, encoding="utf-8")
    return text
