"""The ablation's numbers: ``results.csv`` in and out, aggregation over seeds, and the tests
that decide whether two configurations differ.

Means are compared with Welch's t-test (unequal variances), spreads over seeds with the
two-sided F-test of the variance ratio; a difference counts at p < :data:`ALPHA`.
scipy is imported inside the tests, so that importing this module stays cheap.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqa.files import write_text_atomic

SOFT_ESTIMATOR = "-"  # the estimator column of soft runs: soft selects nothing
TEXT_COLUMNS = ("name", "mode", "estimator")
INT_COLUMNS = ("k", "seed", "epochs", "questions")
# The selection inside the vision encoder: empty cells (None) for runs without one, and
# absent from the results.csv of ablations made before these axes (encoder_rule: before the
# CLS rule, when every selection was the question's).
ENCODER_COLUMNS = ("select_after", "encoder_k", "encoder_rule")
# How many regions each question keeps: ``fixed`` (``k``), or an adaptive rule with its
# setting (``top_p``; ``budget`` and its compute penalty ``k_penalty``) that keeps at most
# ``k`` (k_max) regions. Absent from the results.csv of ablations made before the k rule:
# those runs read as fixed.
FIXED = "fixed"
K_RULE_COLUMNS = ("k_rule", "top_p", "k_penalty")
ALPHA = 0.05  # significance level of every comparison
MEAN_TEST = "Welch's t-test"
SPREAD_TEST = "F-test of the variance ratio"


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv``: text columns as str, counts as int, the encoder
    selection (``select_after``, ``encoder_k``) as int, float or None and its ``encoder_rule``
    as str or None, the k rule as str (``fixed`` when empty) with its ``top_p`` and
    ``k_penalty`` as float or None, the rest as float (an empty cell, e.g. a question type
    that one dataset lacks, reads as nan).

    Rows of ablations made before the encoder selection get ``select_after``, ``encoder_k``
    and ``encoder_rule`` None, and ``encoder_flops`` = ``total_flops`` - ``fusion_flops``
    where it is missing; rows made before the k rule get ``k_rule`` ``fixed``.
    """
    with Path(path).open(newline="", encoding="utf-8") as file:
        rows = [
            {name: parse_cell(name, value) for name, value in row.items()}
            for row in csv.DictReader(file)
        ]
    for row in rows:
        for name in ENCODER_COLUMNS:
            row.setdefault(name, None)
        row.setdefault("k_rule", FIXED)
        row.setdefault("top_p", None)
        row.setdefault("k_penalty", None)
        missing = math.isnan(row.get("encoder_flops", math.nan))
        if missing and "total_flops" in row and "fusion_flops" in row:
            row["encoder_flops"] = row["total_flops"] - row["fusion_flops"]
    return rows


def parse_cell(name: str, value: str) -> str | int | float | None:
    """One cell of ``results.csv`` as the type of its column (see :func:`read_results`)."""
    if name in TEXT_COLUMNS:
        return value
    if name == "encoder_rule":
        return value or None
    if name == "k_rule":
        return value or FIXED
    if name in ("top_p", "k_penalty"):
        return None if value == "" else float(value)
    if name in INT_COLUMNS:
        return int(value)
    if name in ENCODER_COLUMNS:
        # "8" is a count and "1.0" a ratio (every token): the text keeps them apart.
        return None if value == "" else int(value) if value.isdigit() else float(value)
    return float(value or "nan")


def encoder_setting(
    select_after: int | None, encoder_k: int | float | None, rule: str | None = None
) -> str:
    """``1x8`` for a selection that keeps 8 patch tokens (or a ratio, ``1x0.25``) after 1 ViT
    block, ranked by the question; ``1x8-cls`` when EViT's CLS attention ranks them; ``""``
    without a selection inside the vision encoder."""
    if select_after is None:
        return ""
    return f"{select_after}x{encoder_k}" + ("-cls" if rule == "cls" else "")


def rule_setting(entry: dict) -> str:
    """The adaptive k rule of a results row or an aggregated configuration with its setting,
    ``top_p=0.9`` or ``budget=0.01`` (the budget's compute penalty); ``""`` for a fixed k."""
    rule = entry.get("k_rule", FIXED)
    if rule == FIXED:
        return ""
    return f"{rule}={entry['top_p'] if rule == 'top_p' else entry['k_penalty']:g}"


def k_label(entry: dict) -> str:
    """How many regions a results row or an aggregated configuration keeps: ``k=4``, or an
    adaptive rule with its most regions, ``top_p=0.9 k_max=16``."""
    setting = rule_setting(entry)
    return f"{setting} k_max={entry['k']}" if setting else f"k={entry['k']}"


def k_name(
    k: int, rule: str = FIXED, top_p: float | None = None, k_penalty: float | None = None
) -> str:
    """The k part of a run's name: ``k4``, ``topp0.9-kmax16`` or ``budget0.01-kmax16``."""
    if rule == FIXED:
        return f"k{k}"
    if rule == "top_p":
        return f"topp{top_p:g}-kmax{k}"
    return f"budget{k_penalty:g}-kmax{k}"


def is_adaptive(entry: dict) -> bool:
    """Whether a results row or an aggregated configuration keeps an adaptive k."""
    return entry.get("k_rule", FIXED) != FIXED


def selection_of(entry: dict) -> tuple:
    """(select_after, encoder_k, encoder_rule) of a results row or an aggregated
    configuration: the arguments of :func:`encoder_setting`."""
    return entry.get("select_after"), entry.get("encoder_k"), entry.get("encoder_rule")


def append_result(path: Path, row: dict) -> None:
    """Add ``row`` to the results CSV at ``path``, atomically (write beside, then rename).

    The header is the union of every row's columns, so a run that measures a new question
    type adds a column and leaves the older rows' cells empty.
    """
    rows = (read_results(path) if path.is_file() else []) + [row]
    columns = list(dict.fromkeys(name for each in rows for name in each))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def measured(values: Iterable[float]) -> list[float]:
    """``values`` without the nans (runs that did not measure the column)."""
    return [value for value in values if not math.isnan(value)]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the non-nan values; nan where undefined."""
    kept = measured(values)
    mean = statistics.fmean(kept) if kept else math.nan
    return mean, statistics.stdev(kept) if len(kept) > 1 else math.nan


def std_error(values: Sequence[float]) -> tuple[float, float]:
    """(sample standard deviation s, its standard error s / sqrt(2 (n - 1))) of the non-nan
    ``values``: the seed spread of a configuration with its own uncertainty."""
    kept = measured(values)
    std = statistics.stdev(kept) if len(kept) > 1 else math.nan
    return std, std / math.sqrt(2 * (len(kept) - 1)) if len(kept) > 1 else math.nan


def config_label(entry: dict) -> str:
    """The name of an aggregated configuration: ``soft``, e.g. ``hybrid k=4 ste``, with an
    adaptive k e.g. ``hybrid top_p=0.9 k_max=16 ste``, or with a selection inside the vision
    encoder e.g. ``hybrid k=4 ste enc=1x8`` (``enc=1x8-cls`` for EViT's CLS rule)."""
    if entry["mode"] == "soft":
        return "soft"
    label = f"{entry['mode']} {k_label(entry)} {entry['estimator']}"
    setting = encoder_setting(*selection_of(entry))
    return f"{label} enc={setting}" if setting else label


def aggregate(rows: Iterable[dict]) -> list[dict]:
    """Rows grouped per configuration (mode, k and its rule, estimator and the encoder
    selection), in order of first appearance.

    Returns:
        One dict per configuration: ``mode``, ``k``, ``k_rule``, ``top_p``, ``k_penalty``,
        ``estimator``, ``select_after``, ``encoder_k`` and ``encoder_rule`` (None without a
        selection in the encoder; the rule also in ablations made before it), ``seeds`` (how
        many runs),
        ``names`` (the runs, lowest seed first), for every numeric column its (mean, std) over
        the seeds, and ``values``: for every numeric column the per-seed values, lowest seed
        first, for the tests.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        setting = encoder_setting(*selection_of(row))
        key = (row["mode"], row["k"], k_label(row), row["estimator"], setting)
        groups.setdefault(key, []).append(row)
    stats = []
    for (mode, k, _, estimator, _), members in groups.items():
        members = sorted(members, key=lambda row: row["seed"])
        entry = {
            "mode": mode,
            "k": k,
            "estimator": estimator,
            **{name: members[0].get(name) for name in (*K_RULE_COLUMNS, *ENCODER_COLUMNS)},
            "seeds": len(members),
            "names": [row["name"] for row in members],
            "values": {},
        }
        columns = dict.fromkeys(name for row in members for name in row)
        for column in columns:
            if column not in (*TEXT_COLUMNS, *K_RULE_COLUMNS, *ENCODER_COLUMNS, "k", "seed"):
                values = tuple(row.get(column, math.nan) for row in members)
                entry["values"][column] = values
                entry[column] = mean_std(values)
        stats.append(entry)
    return stats


@dataclass(frozen=True)
class Difference:
    """The outcome of a two-sided test of ``subject`` against ``reference``.

    Attributes:
        direction: ``higher`` or ``lower`` (subject against reference, at p < ALPHA), ``tie``
            (p >= ALPHA), ``not tested`` (fewer than 2 values on a side) or ``not measured``
            (no value on a side).
        p_value: the test's p-value; nan when it was not run.
        test: the name of the test.
    """

    direction: str
    p_value: float
    test: str


def untested(subject: Sequence[float], reference: Sequence[float], test: str) -> Difference | None:
    """The Difference when a side has too few values to run ``test``, else None."""
    if not subject or not reference:
        return Difference("not measured", math.nan, test)
    if len(subject) < 2 or len(reference) < 2:
        return Difference("not tested", math.nan, test)
    return None


def decide(p_value: float, higher: bool, test: str) -> Difference:
    """``higher``/``lower`` when ``p_value`` < ALPHA, else ``tie``."""
    if p_value < ALPHA:
        return Difference("higher" if higher else "lower", p_value, test)
    return Difference("tie", p_value, test)


def welch_test(subject: Sequence[float], reference: Sequence[float]) -> Difference:
    """Do the means of two samples differ? Welch's two-sided t-test (unequal variances).

    Nans are dropped first. Two constant samples (e.g. FLOP counts, which do not depend on the
    seed) have no variance to test against: they differ exactly (p = 0) or not at all (p = 1).
    """
    from scipy.stats import ttest_ind

    subject, reference = measured(subject), measured(reference)
    if (skipped := untested(subject, reference, MEAN_TEST)) is not None:
        return skipped
    higher = statistics.fmean(subject) > statistics.fmean(reference)
    if len(set(subject)) == 1 and len(set(reference)) == 1:
        return decide(float(subject[0] == reference[0]), higher, MEAN_TEST)
    with warnings.catch_warnings():
        # A nearly constant side (the entropy log k of hard attention) makes scipy warn of
        # precision loss in its variance, which is ~0 either way: the other side decides.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        p_value = float(ttest_ind(subject, reference, equal_var=False).pvalue)
    return decide(p_value, higher, MEAN_TEST)


def variance_test(subject: Sequence[float], reference: Sequence[float]) -> Difference:
    """Do two samples spread differently? The two-sided F-test of the variance ratio.

    Nans are dropped first; two constant samples do not differ (p = 1).
    """
    from scipy.stats import f

    subject, reference = measured(subject), measured(reference)
    if (skipped := untested(subject, reference, SPREAD_TEST)) is not None:
        return skipped
    a, b = statistics.variance(subject), statistics.variance(reference)
    if a == b:
        return decide(1.0, False, SPREAD_TEST)
    ratio = math.inf if b == 0 else a / b
    degrees = (len(subject) - 1, len(reference) - 1)
    p_value = min(1.0, 2 * min(f.cdf(ratio, *degrees), f.sf(ratio, *degrees)))
    return decide(float(p_value), a > b, SPREAD_TEST)


def one_sample_test(values: Sequence[float], value: float) -> Difference:
    """Does the mean of ``values`` differ from ``value``? The two-sided one-sample t-test
    (a constant sample differs exactly or not at all)."""
    from scipy.stats import ttest_1samp

    test = "one-sample t-test"
    values = measured(values)
    if (skipped := untested(values, [value, value], test)) is not None:
        return skipped
    higher = statistics.fmean(values) > value
    if len(set(values)) == 1:
        return decide(float(values[0] == value), higher, test)
    return decide(float(ttest_1samp(values, value).pvalue), higher, test)
