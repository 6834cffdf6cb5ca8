"""Paired statistics on synthetic timings: the numbers are right and --check is not a coin flip."""

from __future__ import annotations

import numpy as np
import pytest
from uvc.bench.report import BenchResult, Row, check_result, fill_efficiency
from uvc.bench.stats import (
    MIN_ROUNDS,
    Interval,
    Verdict,
    bootstrap_median,
    paired_ratios,
    paired_speedup,
    round_medians,
    verdict,
)
from uvc.bench.timer import summarize

BAR = 0.8


def _pair(
    seed: int,
    speedup: float,
    rounds: int = 10,
    reps: int = 5,
    drift: float = 0.3,
    noise: float = 0.15,
) -> tuple[list[float], list[float]]:
    """Baseline and compressed samples (seconds): a machine-load factor shared by both models in
    each round (``drift``), plus per-call noise of each model (``noise``), both log-normal."""
    rng = np.random.default_rng(seed)
    base, comp = [], []
    for _ in range(rounds):
        load = np.exp(rng.normal(0, drift))
        base += list(10e-3 * load * np.exp(rng.normal(0, noise, reps)))
        comp += list(10e-3 / speedup * load * np.exp(rng.normal(0, noise, reps)))
    return base, comp


def _rows(base: list[float], comp: list[float], rounds: int, macs_ratio: float) -> BenchResult:
    rows = [
        Row("dense", "ort", 8, "ok", 1000, 0, summary=summarize(base, 8, rounds=rounds)),
        Row(
            "half",
            "ort",
            8,
            "ok",
            round(1000 / macs_ratio),
            0,
            summary=summarize(comp, 8, rounds=rounds),
        ),
    ]
    fill_efficiency(rows, "dense")
    return BenchResult({}, [], "dense", rows)


def test_round_medians_and_ratios() -> None:
    assert round_medians([1, 2, 3, 10, 20, 30], 2) == [2, 20]
    with pytest.raises(ValueError, match="equal rounds"):
        round_medians([1, 2, 3], 2)
    assert paired_ratios([4.0, 9.0], [2.0, 3.0, 1.0]) == [2.0, 3.0]  # pairs by position


def test_bootstrap_interval_of_a_median() -> None:
    const = bootstrap_median([2.0] * 7)
    assert (const.value, const.lo, const.hi, const.n) == (2.0, 2.0, 2.0, 7)
    five = bootstrap_median([1.0, 2.0, 3.0, 4.0, 100.0])
    # With 5 values the 2.5% / 97.5% bootstrap medians are the extremes; the outlier moves only hi.
    assert five.value == 3.0 and five.lo == 1.0 and five.hi == 100.0
    many = bootstrap_median(list(np.random.default_rng(0).normal(5, 1, 400)))
    assert many.lo < many.value < many.hi and many.hi - many.lo < 0.4  # ~ 2 x 1.96 x 1.25/20
    assert bootstrap_median([1.0, 2.0, 3.0], seed=1) == bootstrap_median([1.0, 2.0, 3.0], seed=1)


def test_pairing_cancels_load_shared_by_both_models() -> None:
    # 40% round-to-round drift, 1% per-call noise: unpaired, the rounds would swamp a 2x speedup's
    # precision; paired, the interval is tight and holds the truth.
    base, comp = _pair(0, speedup=2.0, drift=0.4, noise=0.01)
    ci = paired_speedup(base, 10, comp, 10)
    assert ci.lo <= 2.0 <= ci.hi and ci.rel_width < 0.03
    per_round = round_medians(base, 10)
    assert max(per_round) / min(per_round) > 1.5  # the drift really is there


def test_efficiency_interval_in_rows_table_and_json() -> None:
    base, comp = _pair(1, speedup=1.8)
    result = _rows(base, comp, 10, macs_ratio=2.0)
    half = result.rows[1]
    assert half.speedup_ci is not None and half.efficiency_ci is not None
    assert half.efficiency == pytest.approx(half.speedup / 2.0)
    assert half.efficiency_ci.lo == pytest.approx(half.speedup_ci.lo / 2.0)
    assert half.efficiency_ci.n == 10
    data = half.to_dict()
    assert data["efficiency_ci"]["lo"] <= data["efficiency"] <= data["efficiency_ci"]["hi"]
    from uvc.bench.report import format_table

    assert f"[{half.efficiency_ci.lo:.2f}, {half.efficiency_ci.hi:.2f}]" in format_table(result)


def test_verdicts_from_interval() -> None:
    assert verdict(Interval(0.7, 0.6, 0.75, 10), BAR) is Verdict.FAIL
    assert verdict(Interval(0.9, 0.8, 1.0, 10), BAR) is Verdict.PASS
    assert verdict(Interval(0.85, 0.7, 1.0, 10), BAR) is Verdict.INCONCLUSIVE
    # Too few rounds: no verdict, however narrow the interval looks.
    assert verdict(Interval(0.5, 0.5, 0.5, MIN_ROUNDS - 1), BAR) is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(("efficiency", "expected"), [(0.5, 1), (1.0, 0)])
def test_clear_cases_pass_or_fail(efficiency: float, expected: int) -> None:
    for seed in range(20):
        base, comp = _pair(seed, speedup=2.0 * efficiency)
        assert check_result(_rows(base, comp, 10, 2.0), BAR).exit_code == expected, seed


def test_noisy_pair_at_the_bar_is_not_decided_by_luck() -> None:
    """True efficiency exactly at the bar under heavy noise: a point estimate flips between pass
    and fail from seed to seed; the interval check says inconclusive almost always."""
    decided = point_fails = 0
    seeds = 200
    for seed in range(seeds):
        base, comp = _pair(seed, speedup=2.0 * BAR, noise=0.25)
        result = _rows(base, comp, 10, 2.0)
        check = check_result(result, BAR)
        decided += check.exit_code != 3
        point_fails += result.rows[1].efficiency < BAR
    assert 0.3 < point_fails / seeds < 0.7  # the old check: a coin flip
    assert decided / seeds <= 0.1  # ~5% expected from a 95% interval


def test_noisy_pair_below_the_bar_never_passes() -> None:
    passes = 0
    for seed in range(200):
        base, comp = _pair(seed, speedup=2.0 * 0.7, noise=0.3)
        passes += check_result(_rows(base, comp, 10, 2.0), BAR).exit_code == 0
    assert passes <= 2


def test_check_lines_and_exit_codes() -> None:
    base, comp = _pair(3, speedup=1.6, noise=0.25)
    result = _rows(base, comp, 10, 2.0)
    check = check_result(result, BAR)
    assert check.exit_code == 3 and not check.failed
    (line,) = check.inconclusive
    assert line.startswith("inconclusive: efficiency") and "straddles 0.8" in line
    assert line.endswith("half / ort / batch 8")
    few = _rows(*_pair(3, speedup=1.0, rounds=3), 3, 2.0)
    (line,) = check_result(few, BAR).inconclusive
    assert "3 rounds < 5" in line
    only_base = BenchResult({}, [], "dense", result.rows[:1])
    assert check_result(only_base, BAR).exit_code == 1


def _preempted(seed: int, speedup: float, rounds: int = 10, reps: int = 10) -> tuple[list, list]:
    """A CPU shared with other processes: a call of T ms is preempted with probability T / 4 ms
    (a scheduler slice) and then waits 7 ms more, so long calls are hit more often."""
    rng = np.random.default_rng(seed)

    def call(t: float) -> float:
        return (t + (7.0 if rng.random() < min(1.0, t / 4.0) else 0.0)) / 1e3

    base, comp = [], []
    for _ in range(rounds):
        base += [call(3.0) for _ in range(reps)]
        comp += [call(3.0 / speedup) for _ in range(reps)]
    return base, comp


def test_preemption_biases_medians_and_round_minima_resist_it() -> None:
    base, comp = _preempted(0, speedup=2.0)
    by_median = paired_speedup(base, 10, comp, 10)
    by_min = paired_speedup(base, 10, comp, 10, statistic="min")
    assert by_median.lo > 2.5  # confidently wrong: the 3 ms calls are preempted 75% of the time
    assert by_min.lo <= 2.0 <= by_min.hi
    assert round_medians([5.0, 1.0, 3.0, 9.0], 2, "min") == [1.0, 3.0]
    with pytest.raises(ValueError, match="statistic"):
        round_medians([1.0], 1, "mean")


def test_oversubscribed_machine_is_flagged_in_the_table() -> None:
    from uvc.bench.report import format_table, oversubscribed

    assert oversubscribed({"load_average": [1.5, 1, 1], "cpu_count": 2}) is None
    assert oversubscribed({}) is None
    busy = {"load_average": [7.4, 6, 5], "cpu_count": 2}
    assert "load average 7.4 on 2 CPUs" in (oversubscribed(busy) or "")
    base, comp = _pair(0, speedup=2.0)
    result = _rows(base, comp, 10, 2.0)
    result.environment = busy
    assert "--statistic min" in format_table(result)
