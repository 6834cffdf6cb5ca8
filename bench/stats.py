"""Paired statistics: per-round ratios of two interleaved models, their median and a bootstrap CI.

The harness times the models round-robin, so round r of the baseline and round r of a compressed
model saw the same machine state (other tenants, clocks, caches). The ratio of their round medians
cancels that shared state; the spread left over is what differs between the two models. Speedup
and efficiency are reported as the median of those paired ratios, with a percentile-bootstrap 95%
confidence interval of that median (resampling rounds, the independent unit).

With few rounds the bootstrap interval of a median degenerates to [min, max] of the ratios; below
``MIN_ROUNDS`` rounds it would cover the truth too rarely to decide anything (75% at 3 rounds,
93.75% at 5), so no verdict is given there.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP = 2000
# The fewest rounds that give a verdict; fewer are "inconclusive" whatever the interval says.
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Interval:
    """A median with its confidence interval.

    Args:
        value: the median of the paired ratios.
        lo, hi: the interval's ends.
        n: how many rounds (paired ratios) it came from.
    """

    value: float
    lo: float
    hi: float
    n: int

    @property
    def rel_width(self) -> float:
        """(hi - lo) / value: the interval's width relative to the estimate."""
        return (self.hi - self.lo) / self.value if self.value > 0 else float("inf")

    def scaled(self, factor: float) -> Interval:
        """The interval of ``factor`` x the ratio (e.g. efficiency = speedup / MACs reduction)."""
        return Interval(self.value * factor, self.lo * factor, self.hi * factor, self.n)

    def to_dict(self) -> dict[str, float | int]:
        """Plain data for JSON."""
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}

    def __str__(self) -> str:
        return f"{self.value:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


STATISTICS = ("median", "min")


def round_medians(samples: Sequence[float], rounds: int, statistic: str = "median") -> list[float]:
    """Median (or minimum) of each round's samples; samples come in ``rounds`` equal consecutive
    chunks.

    The minimum suits a CPU shared with other processes: there a call is preempted with a
    probability that grows with its duration, so the median of a long call inflates more than a
    short one's and their ratio is biased; the fastest call of a round is the least disturbed.

    Raises:
        ValueError: the samples do not split into ``rounds`` equal chunks, or an unknown statistic.
    """
    if rounds < 1 or len(samples) % rounds or not samples:
        raise ValueError(f"{len(samples)} samples do not split into {rounds} equal rounds")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    k = len(samples) // rounds
    pick = statistics.median if statistic == "median" else min
    return [pick(samples[i * k : (i + 1) * k]) for i in range(rounds)]


def paired_ratios(baseline: Sequence[float], other: Sequence[float]) -> list[float]:
    """Per round, baseline time / other time (a speedup when ``other`` is the compressed model).

    Rounds are paired by position; a model that ran fewer rounds pairs with the first ones.
    """
    n = min(len(baseline), len(other))
    if n == 0:
        raise ValueError("no rounds to pair")
    if min(other[:n]) <= 0:
        raise ValueError("a round median is zero: cannot form a ratio")
    return [b / o for b, o in zip(baseline[:n], other[:n], strict=True)]


def bootstrap_median(
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> Interval:
    """The median of ``values`` and its percentile-bootstrap interval (deterministic per seed)."""
    if not values:
        raise ValueError("no values to bootstrap")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    if len(v) == 1:
        return Interval(med, med, med, 1)
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, len(v), size=(resamples, len(v)))], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = (float(q) for q in np.quantile(meds, [alpha, 1 - alpha]))
    return Interval(med, min(lo, med), max(hi, med), len(v))


def paired_speedup(
    baseline_samples: Sequence[float],
    baseline_rounds: int,
    samples: Sequence[float],
    rounds: int,
    statistic: str = "median",
) -> Interval:
    """Speedup of a model over the baseline: median of per-round ratios (of each round's median,
    or minimum), with its interval."""
    ratios = paired_ratios(
        round_medians(baseline_samples, baseline_rounds, statistic),
        round_medians(samples, rounds, statistic),
    )
    return bootstrap_median(ratios)


class Verdict(str, Enum):
    """What ``--check`` concludes about one row."""

    PASS = "pass"  # the whole interval is at or above the bar
    FAIL = "fail"  # the whole interval is below the bar
    INCONCLUSIVE = "inconclusive"  # the interval straddles the bar, or too few rounds


def verdict(efficiency: Interval, bar: float, min_rounds: int = MIN_ROUNDS) -> Verdict:
    """Pass only when the interval's lower end clears ``bar``; fail only when its upper end is
    below it; otherwise (or with fewer than ``min_rounds`` rounds) inconclusive."""
    if efficiency.n < min_rounds:
        return Verdict.INCONCLUSIVE
    if efficiency.hi < bar:
        return Verdict.FAIL
    if efficiency.lo >= bar:
        return Verdict.PASS
    return Verdict.INCONCLUSIVE
