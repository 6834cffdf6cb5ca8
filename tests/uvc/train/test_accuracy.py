"""Accuracy intervals, McNemar's test and the paired bootstrap (``uvc.train.accuracy``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from uvc.train.accuracy import accuracy, mcnemar_p, paired_difference


def test_wilson_interval_matches_the_closed_form() -> None:
    acc = accuracy(np.array([True] * 50 + [False] * 50))
    assert acc.top1 == 50.0 and acc.n == 100
    assert acc.lo == pytest.approx(40.383, abs=1e-3) and acc.hi == pytest.approx(59.617, abs=1e-3)
    perfect = accuracy(np.ones(20, dtype=bool))  # stays inside [0, 100], unlike a normal interval
    assert perfect.hi == pytest.approx(100.0) and 80 < perfect.lo < 90
    with pytest.raises(ValueError, match="no images"):
        accuracy(np.zeros(0, dtype=bool))


@pytest.mark.parametrize(("a", "b"), [(10, 30), (3, 4), (0, 9), (25, 25), (100, 140)])
def test_mcnemar_equals_the_exact_binomial_tail(a: int, b: int) -> None:
    n, k = a + b, min(a, b)
    exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_p(a, b) == pytest.approx(exact, rel=1e-9)
    assert mcnemar_p(a, b) == mcnemar_p(b, a)
    assert mcnemar_p(0, 0) == 1.0


def test_paired_difference_counts_and_interval() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(5000) < 0.7
    same = paired_difference(a, a)
    assert (same.diff, same.lo, same.hi, same.only_a, same.only_b, same.p_value) == (
        0.0, 0.0, 0.0, 0, 0, 1.0,
    )  # fmt: skip
    b = a.copy()
    wrong = np.flatnonzero(~a)[:100]
    b[wrong] = True  # b fixes 100 of a's mistakes and breaks 20 of its hits
    b[np.flatnonzero(a)[:20]] = False
    d = paired_difference(a, b)
    assert (d.only_a, d.only_b) == (20, 100)
    assert d.diff == pytest.approx(100 * 80 / 5000)
    assert 0 < d.lo < d.diff < d.hi and d.p_value < 1e-10
    # The multinomial shortcut is the image bootstrap: its interval has the same width as one
    # that resamples image indices (within Monte-Carlo error).
    idx = np.random.default_rng(1).integers(0, 5000, size=(2000, 5000))
    boots = 100 * (b[idx].astype(int) - a[idx].astype(int)).mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    assert (d.hi - d.lo) == pytest.approx(hi - lo, rel=0.15)
    back = paired_difference(b, a)
    assert back.diff == -d.diff and (back.only_a, back.only_b) == (100, 20)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, b[:10])
