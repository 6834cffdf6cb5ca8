"""Timer statistics on a fake clock: structure and ordering, never speed."""

from __future__ import annotations

import itertools

import pytest
from uvc.bench.timer import Stopwatch, TimingConfig, set_threads, summarize, take_samples


class FakeClock:
    """Each call to ``fn`` advances the clock by the next duration in ``durations``."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = itertools.cycle(durations)

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.now += next(self.durations)


def test_stopwatch_measures_fake_clock_exactly() -> None:
    clock = FakeClock([0.002, 0.004])
    watch = Stopwatch("cpu", clock=clock)
    assert take_samples(clock.work, 4, watch) == pytest.approx([0.002, 0.004] * 2)


def test_warmup_calls_are_not_timed() -> None:
    clock = FakeClock([1.0])
    calls = []
    samples = take_samples(lambda: (calls.append(1), clock.work()), 3, Stopwatch(clock=clock), 2)
    assert len(calls) == 5 and len(samples) == 3


def test_summary_statistics_and_ordering() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = summarize(samples, batch=8, label="x")
    assert s.n == 100 and s.batch == 8
    assert s.min_ms == pytest.approx(1.0)
    assert s.p10_ms < s.median_ms < s.p90_ms
    assert s.median_ms == pytest.approx(50.5)
    assert s.p10_ms == pytest.approx(10.9) and s.p90_ms == pytest.approx(90.1)
    assert s.iqr_ms == pytest.approx(49.5)
    assert s.throughput == pytest.approx(8 / 0.0505)
    assert s.samples_ms == pytest.approx(tuple(range(1, 101)))
    assert s.to_dict()["spread"] == pytest.approx(49.5 / 50.5)


def test_noisy_flag_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    quiet = summarize([0.010] * 9 + [0.0101], batch=1)
    assert not quiet.noisy
    noisy = summarize([0.010, 0.020, 0.030, 0.040, 0.050], batch=1, label="spread")
    assert noisy.noisy and noisy.spread > 0.1
    assert any("not quiet" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    ("samples", "batch"), [([], 1), ([0.1, -0.1], 1), ([0.1], 0)], ids=["empty", "neg", "batch"]
)
def test_summarize_rejects_bad_input(samples: list[float], batch: int) -> None:
    with pytest.raises(ValueError):
        summarize(samples, batch)


def test_timing_config_validation() -> None:
    assert TimingConfig(rounds=3, reps=4).samples == 12
    with pytest.raises(ValueError):
        TimingConfig(rounds=0)
    with pytest.raises(ValueError):
        TimingConfig(warmup=-1)
    with pytest.raises(ValueError):
        set_threads(0)
