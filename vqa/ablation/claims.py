"""The textbook claims about hard and soft attention, and the comparisons that test them.

A claim (:data:`CLAIMS`) is split into what it implies, one measurement each; each implication
is tested by :class:`Comparison` s of aggregated configurations (``statistics.aggregate``), and
:func:`verdict` combines their outcomes into the verdicts of report.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from vqa.ablation.statistics import (
    Difference,
    config_label,
    encoder_setting,
    is_adaptive,
    k_label,
    mean_std,
    measured,
    selection_of,
    std_error,
    variance_test,
    welch_test,
)

SPREAD = "accuracy spread"  # the metric of comparisons of the std of accuracy over seeds

# The implications of the Compute claim that report.md's end-to-end verdict reads.
FUSION_SAVING = "hard computes less after the encoders (fusion FLOPs)"
ENCODER_SAVING = "hard computes less in the encoders when it selects inside them (encoder FLOPs)"
TOTAL_SAVING = "hard computes less in total (total FLOPs)"
LATENCY_SAVING = "hard answers faster (ms per question)"
# The implications of the Adaptive k claim that report.md answers per configuration.
EQUAL_COST = "adaptive k is at least as accurate as fixed k at the same mean k (accuracy)"
# The question families whose regions the Adaptive k claim compares, each with the names of
# its question type: the synthetic scenes' first, then VQAv2's (the first one present counts).
FAMILIES = {
    "counting": ("count", "how many"),
    "comparison": ("compare",),
    "colour": ("colour", "what color"),
}
# The implication of the Guidance claim that report.md states per keep rate.
GUIDANCE = (
    "the question-guided selection is more accurate than EViT's CLS rule at the same keep "
    "rate (accuracy)"
)

CLAIMS = {
    "Training": "Hard: non-differentiable, needs REINFORCE, high variance. "
    "Soft: differentiable, smooth gradients.",
    "Compute": "Hard: lower, looks at key inputs only. Soft: higher, processes every input.",
    "Interpretability": "Hard: high, clear focus points. Soft: moderate, diffuse weights.",
    "Accuracy": "Hard: lower, less stable. Soft: higher, more stable.",
    "Hybrid": "Hybrid (hard top-k, then soft weights over the selected) gets the best of both: "
    "soft's accuracy, stability and focus at hard's compute.",
    "Guidance": "Inside the vision encoder, letting the question choose the patches is worth "
    "accuracy: it beats a question-agnostic rule that keeps as many at the same cost (EViT's: "
    "the patches the CLS token attends to most).",
    "Adaptive k": "Letting each question choose how many regions it keeps (top-p, or a learned "
    "budget) is at least as accurate as a fixed k at the same mean number of regions, and "
    "counting and comparison questions take more regions than colour questions.",
}


@dataclass(frozen=True)
class Comparison:
    """One measured test of a claim: is ``subject`` ``expected`` than ``reference``?

    Attributes:
        label: what is compared, e.g. ``hard k=4 ste vs soft``.
        metric: a results.csv column (its means are compared), or :data:`SPREAD` (the spreads
            of accuracy are compared).
        subject, reference: the per-seed values of each side (accuracies for SPREAD).
        expected: ``higher`` or ``lower``; ``not lower`` or ``not higher`` when a tie agrees
            with the claim.
    """

    label: str
    metric: str
    subject: Sequence[float]
    reference: Sequence[float]
    expected: str

    @cached_property
    def test(self) -> Difference:
        """Welch's t-test of the means, or the F-test of the spreads for SPREAD."""
        compare = variance_test if self.metric == SPREAD else welch_test
        return compare(self.subject, self.reference)

    @property
    def outcome(self) -> str:
        """``holds``, ``contradicted``, ``tie`` (p >= ALPHA), ``not tested`` (fewer than 2
        seeds on a side) or ``not measured``."""
        direction = self.test.direction
        if direction not in ("higher", "lower"):
            return direction
        agrees = (direction == "higher") == (self.expected in ("higher", "not lower"))
        return "holds" if agrees else "contradicted"

    @property
    def support(self) -> str:
        """The outcome as evidence: a tie holds for ``not lower`` and ``not higher``."""
        if self.outcome == "tie" and self.expected.startswith("not "):
            return "holds"
        return self.outcome

    def summary(self, values: Sequence[float]) -> tuple[float, float]:
        """(mean, std) of one side, or (std, its standard error) for SPREAD."""
        return (std_error if self.metric == SPREAD else mean_std)(values)


def verdict(outcomes: Iterable[str]) -> str:
    """Comparison outcomes (or implication verdicts) -> one verdict: holds, contradicted or
    inconclusive (all ties or not tested) when they agree, mixed when they do not, not
    measured if none."""
    found = {
        "inconclusive" if outcome in ("tie", "not tested") else outcome for outcome in outcomes
    }
    found.discard("not measured")
    if not found:
        return "not measured"
    return found.pop() if len(found) == 1 else "mixed"


def selects_in_encoder(entry: dict) -> bool:
    """Whether an aggregated configuration selects patch tokens inside the vision encoder."""
    return entry.get("select_after") is not None


def same_selection(entry: dict) -> tuple:
    """(k and its rule, selection inside the encoder): what two configurations share to be
    compared at the same selection."""
    return k_label(entry), encoder_setting(*selection_of(entry))


def selection_label(entry: dict) -> str:
    """e.g. ``hard k=4``, ``hard top_p=0.9 k_max=16``, or ``hard k=4 enc=1x8`` with a
    selection inside the encoder."""
    keeps, setting = same_selection(entry)
    return f"{entry['mode']} {keeps}" + (f" enc={setting}" if setting else "")


def rule_pairs(stats: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(question-guided, CLS rule) pairs of aggregated configurations that differ only in the
    rule that ranks the patch tokens inside the vision encoder: same mode, k, estimator,
    blocks before the selection and tokens kept."""

    def keep_rate(entry: dict) -> tuple:
        setting = encoder_setting(entry["select_after"], entry["encoder_k"])  # rule left out
        return entry["mode"], k_label(entry), entry["estimator"], setting

    agnostic = [entry for entry in stats if entry.get("encoder_rule") == "cls"]
    return [
        (guided, other)
        for guided in stats
        if selects_in_encoder(guided) and guided.get("encoder_rule") != "cls"
        for other in agnostic
        if keep_rate(other) == keep_rate(guided)
    ]


def fixed_curve(adaptive: dict, stats: Sequence[dict]) -> list[dict]:
    """The fixed-k configurations that ``adaptive`` is measured against, by increasing k:
    same mode, estimator and selection inside the encoder."""

    def setting(entry: dict) -> tuple:
        return entry["mode"], entry["estimator"], encoder_setting(*selection_of(entry))

    curve = [
        entry
        for entry in stats
        if entry["mode"] != "soft"
        and not is_adaptive(entry)
        and setting(entry) == setting(adaptive)
    ]
    return sorted(curve, key=lambda entry: entry["k"])


def equal_cost_accuracy(adaptive: dict, curve: Sequence[dict]) -> tuple[float, ...] | None:
    """Per seed (lowest first), the accuracy of fixed k at the mean k that ``adaptive`` kept
    with that seed: linear between the two fixed configurations around it, same seed.

    Both sides are placed by the regions they used (``regions_used``): with one head and one
    hop a fixed configuration's is its k, with several it is the union of their selections,
    which is what an adaptive configuration's mean k counts too.

    Args:
        adaptive: an aggregated adaptive-k configuration (its ``regions_used`` is its mean k).
        curve: :func:`fixed_curve` of it.

    Returns:
        One accuracy per seed of ``adaptive``; None when a seed's mean k is outside the
        regions the fixed configurations of ``curve`` used, or one of them lacks that seed.
    """
    import numpy as np

    references = []
    for seed, mean_k in enumerate(adaptive["values"].get("regions_used", ())):
        if not curve or any(len(entry["values"]["accuracy"]) <= seed for entry in curve):
            return None
        points = sorted(
            (regions_of(entry, seed), entry["values"]["accuracy"][seed]) for entry in curve
        )
        costs, accuracies = zip(*points, strict=True)
        if not costs[0] <= mean_k <= costs[-1]:
            return None
        references.append(float(np.interp(mean_k, costs, accuracies)))
    return tuple(references) or None


def regions_of(entry: dict, seed: int) -> float:
    """The regions a fixed-k configuration used with its ``seed``-th seed (its k where
    results.csv has no ``regions_used``)."""
    used = entry["values"].get("regions_used", ())
    return float(used[seed]) if len(used) > seed else float(entry["k"])


def family_column(entry: dict, family: str) -> str | None:
    """The ``regions_used_<type>`` column of ``family`` (:data:`FAMILIES`) that ``entry``
    measured (at some seed), or None."""
    columns = (f"regions_used_{kind}" for kind in FAMILIES[family])
    return next((column for column in columns if measured(entry["values"].get(column, ()))), None)


def adaptive_comparisons(stats: Sequence[dict]) -> dict[str, list[Comparison]]:
    """The implications of the Adaptive k claim and their comparisons, for each adaptive-k
    configuration: its accuracy against fixed k at the same mean k
    (:func:`equal_cost_accuracy`), and the mean k of its counting and comparison questions
    against that of its colour questions."""
    adaptive = [entry for entry in stats if is_adaptive(entry)]
    equal_cost = []
    for entry in adaptive:
        reference = equal_cost_accuracy(entry, fixed_curve(entry, stats))
        if reference is not None:
            label = f"{config_label(entry)} vs fixed k at its mean k"
            accuracy = entry["values"]["accuracy"]
            equal_cost.append(Comparison(label, "accuracy", accuracy, reference, "not lower"))
    implications = {EQUAL_COST: equal_cost}
    for family in ("counting", "comparison"):
        comparisons = []
        for entry in adaptive:
            column, colour = family_column(entry, family), family_column(entry, "colour")
            if column is None or colour is None:
                continue
            comparisons.append(
                Comparison(
                    f"{config_label(entry)}: {column.removeprefix('regions_used_')} vs "
                    f"{colour.removeprefix('regions_used_')}",
                    "regions_used",
                    entry["values"][column],
                    entry["values"][colour],
                    "higher",
                )
            )
        implications[f"{family} questions keep more regions than colour questions (mean k)"] = (
            comparisons
        )
    return implications


def claim_comparisons(stats: Sequence[dict]) -> dict[str, dict[str, list[Comparison]]]:
    """For each claim of :data:`CLAIMS`, what it implies (one sentence per measurement) and
    the comparisons of aggregated configurations that test each implication: hard and hybrid
    against soft, hybrid against hard at the same k, estimator and encoder selection,
    REINFORCE against the other estimators at the same k and encoder selection; and, when the
    ablation crossed the encoder selection with EViT's CLS rule, the question-guided selection
    against that rule at the same keep rate (the Guidance claim, left out otherwise); and,
    when it has adaptive-k runs, :func:`adaptive_comparisons` (the Adaptive k claim)."""
    soft = next((entry for entry in stats if entry["mode"] == "soft"), None)
    hard = [entry for entry in stats if entry["mode"] == "hard"]
    hybrid = [entry for entry in stats if entry["mode"] == "hybrid"]

    def values(entry: dict, metric: str) -> tuple[float, ...]:
        """Per-seed values of ``metric`` (accuracy for SPREAD); empty if not measured."""
        return entry["values"].get("accuracy" if metric == SPREAD else metric, ())

    def compare(subject: dict, reference: dict, metric: str, expected: str) -> Comparison:
        label = f"{config_label(subject)} vs {config_label(reference)}"
        return Comparison(
            label, metric, values(subject, metric), values(reference, metric), expected
        )

    def versus(subjects: Sequence[dict], metric: str, expected: str) -> list[Comparison]:
        """Each of ``subjects`` against soft."""
        if soft is None:
            return []
        return [compare(subject, soft, metric, expected) for subject in subjects]

    needs_reinforce = [
        Comparison(
            f"{selection_label(policy)}: reinforce vs {other['estimator']}",
            "accuracy",
            values(policy, "accuracy"),
            values(other, "accuracy"),
            "higher",
        )
        for policy in hard
        if policy["estimator"] == "reinforce"
        for other in hard
        if same_selection(other) == same_selection(policy) and other["estimator"] != "reinforce"
    ]
    hybrid_vs_hard = [
        compare(mixed, plain, "accuracy", "not lower")
        for mixed in hybrid
        for plain in hard
        if (same_selection(plain), plain["estimator"])
        == (same_selection(mixed), mixed["estimator"])
    ]
    claims = {
        "Training": {
            "hard's estimator makes the score gradient noisy (estimator noise/signal)": versus(
                hard, "score_grad_noise", "higher"
            ),
            "the scorer's SGD updates are noisier for hard (SGD noise/signal)": versus(
                hard, "score_grad_batch_noise", "higher"
            ),
            "hard's loss fluctuates more at the end of training (loss var)": versus(
                hard, "loss_variance", "higher"
            ),
            "hard needs REINFORCE: it beats ste and gumbel (accuracy)": needs_reinforce,
        },
        "Compute": {
            FUSION_SAVING: versus(hard, "fusion_flops", "lower"),
            ENCODER_SAVING: versus(
                [entry for entry in hard if selects_in_encoder(entry)], "encoder_flops", "lower"
            ),
            TOTAL_SAVING: versus(hard, "total_flops", "lower"),
            LATENCY_SAVING: versus(hard, "ms_per_question", "lower"),
            "hard trains faster (training seconds)": versus(hard, "train_seconds", "lower"),
        },
        "Interpretability": {
            "hard's weights are focused (entropy)": versus(hard, "attention_entropy", "lower"),
            "hard's top region is on the object asked about (pointing)": versus(
                hard, "pointing_accuracy", "higher"
            ),
        },
        "Accuracy": {
            "hard is less accurate (accuracy)": versus(hard, "accuracy", "lower"),
            "hard is less stable over seeds (std of accuracy)": versus(hard, SPREAD, "higher"),
        },
        "Hybrid": {
            "hybrid is at least as accurate as hard at the same k and estimator": hybrid_vs_hard,
            "hybrid is as accurate as soft": versus(hybrid, "accuracy", "not lower"),
            "hybrid is as stable as soft over seeds (std of accuracy)": versus(
                hybrid, SPREAD, "not higher"
            ),
            "hybrid points as well as soft (pointing)": versus(
                hybrid, "pointing_accuracy", "not lower"
            ),
            "hybrid computes like hard (fusion FLOPs below soft)": versus(
                hybrid, "fusion_flops", "lower"
            ),
        },
    }
    pairs = rule_pairs(stats)
    if pairs:
        claims["Guidance"] = {
            GUIDANCE: [compare(guided, other, "accuracy", "higher") for guided, other in pairs]
        }
    if any(map(is_adaptive, stats)):
        claims["Adaptive k"] = adaptive_comparisons(stats)
    return claims
