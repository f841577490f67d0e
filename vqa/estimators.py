"""How the selection's estimators train: REINFORCE's reward baseline and entropy schedule,
the annealing of the relaxed selection's temperature (ste, gumbel) and of the fusion's k.

The schedules are pure functions of the optimizer step, so that a resumed run continues them
exactly where it stopped:

- ``tau`` (``--tau-final``): exponential annealing from the config's ``fusion_tau`` to a final
  temperature over the training steps, as Jang et al. (2017) anneal the Gumbel-softmax's:
  a sharper relaxation, closer to the hard selection, as training goes on.
- REINFORCE's entropy bonus (``--entropy-schedule``): the config's
  ``reinforce_entropy_weight`` throughout (``constant``), or decayed from it to 0 at the last
  step, ``linear``-ly or along a half ``cosine``: explore early, exploit late.
- the fusion's k (``--k-start``, ``--k-anneal``): from a larger k, up to every region (where
  hybrid attention is soft attention), shrinking geometrically to the model's ``fusion_k`` over
  the first share of the steps: the selection narrows gradually, where ``--soft-warmup``
  switches from soft to the model's mode at one step.
"""

from __future__ import annotations

import math

REINFORCE_BASELINES = ("type", "global")
ENTROPY_SCHEDULES = ("constant", "linear", "cosine")


def training_progress(step: int, total_steps: int) -> float:
    """Share of training done at the 0-based optimizer ``step`` of ``total_steps``: 0 at the
    first step, 1 at the last (and after it)."""
    return min(step / max(total_steps - 1, 1), 1.0)


def annealed_tau(start: float, final: float | None, step: int, total_steps: int) -> float:
    """The temperature at ``step``: ``start * (final / start) ** progress``, from ``start`` at
    the first step to ``final`` at the last; ``start`` throughout when ``final`` is None."""
    if final is None:
        return start
    return start * (final / start) ** training_progress(step, total_steps)


def scheduled_entropy_weight(schedule: str, start: float, step: int, total_steps: int) -> float:
    """The weight of the entropy bonus at ``step``: ``start`` (``constant``), or
    ``start * (1 - progress)`` (``linear``), or ``start * (1 + cos(pi * progress)) / 2``
    (``cosine``), which reach 0 at the last step."""
    if schedule not in ENTROPY_SCHEDULES:
        raise ValueError(f"entropy schedule must be one of {ENTROPY_SCHEDULES}, got {schedule!r}")
    progress = training_progress(step, total_steps)
    if schedule == "linear":
        return start * (1.0 - progress)
    if schedule == "cosine":
        return start * (1.0 + math.cos(math.pi * progress)) / 2.0
    return start


def annealed_k(start: int | None, final: int, share: float, step: int, total_steps: int) -> int:
    """The fusion's k at ``step``: from ``start`` at the first step to ``final`` at the
    ``share`` of the steps, geometrically (``start * (final / start) ** (progress / share)``,
    rounded), and ``final`` from there on; ``final`` throughout when ``start`` is None."""
    if start is None or share == 0:
        return final
    progress = min(training_progress(step, total_steps) / share, 1.0)
    return round(start * (final / start) ** progress)


def check_k_schedule(start: int | None, final: int, mode: str, rule: str, regions: int) -> None:
    """Refuse a ``--k-start`` that the model's fusion cannot anneal from: soft ``mode`` (no
    k), an adaptive k ``rule`` (no single k), or a start outside ``final..regions`` (the
    region tokens the fusion reads, ``HybridVQAModel.fusion_tokens``)."""
    if start is None:
        return
    if mode == "soft":
        raise ValueError("--k-start anneals the k of hard and hybrid modes; soft mode has no k")
    if rule != "fixed":
        raise ValueError(
            f"--k-start anneals a fixed k; the model's fusion_k_rule is {rule!r} (its k adapts "
            "per question already)"
        )
    if not final <= start <= regions:
        raise ValueError(
            f"--k-start must be between the model's fusion_k ({final}) and the number of "
            f"regions its fusion reads ({regions}), got {start}"
        )
