"""Honest timing: warm up, synchronise the device, repeat, summarise with robust statistics.

A sample is the wall time of one ``infer`` call. On a GPU the call is bracketed by CUDA events (the
time the device spent, not the time the host took to enqueue); on a CPU by ``time.perf_counter``.
The statistics come from ``torch.utils.benchmark``'s ``Measurement`` (median, IQR and its spread
warning), with p10/p90 and throughput added. The harness, not this file, decides the order of the
samples (round-robin over models, so a dense and a compressed model see the same machine state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# IQR / median above this makes a summary "noisy" (torch.utils.benchmark warns at the same 10%).
NOISY_SPREAD = 0.10


@dataclass(frozen=True)
class TimingConfig:
    """How many samples to take, and how.

    Args:
        warmup: untimed calls per model before the first round (caches, allocator, JIT, ORT arena).
        rounds: round-robin passes over all models.
        reps: timed calls per model per round (samples = rounds * reps).
        warmup_per_round: untimed calls per model at the start of each round, so that a model
            whose turn comes after another's does not pay for the other's cache footprint.
        until_ci: after ``rounds``, keep adding rounds until every compressed model's 95%
            interval of its paired speedup is at most this wide relative to its median (e.g. 0.1);
            None: exactly ``rounds`` rounds.
        ci_time_s: with ``until_ci``, stop adding rounds after this many seconds per backend and
            batch size, however wide the intervals still are.
        statistic: each round's ``median`` (default) or ``min`` forms the paired ratios; ``min``
            for a CPU shared with other processes (see ``uvc.bench.stats.round_medians``).
    """

    warmup: int = 5
    rounds: int = 5
    reps: int = 10
    warmup_per_round: int = 1
    until_ci: float | None = None
    ci_time_s: float = 120.0
    statistic: str = "median"

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.warmup_per_round < 0:
            raise ValueError("warmup counts must be >= 0")
        if self.rounds < 1 or self.reps < 1:
            raise ValueError(f"rounds and reps must be >= 1, got {self.rounds}, {self.reps}")
        if self.until_ci is not None and self.until_ci <= 0:
            raise ValueError(f"until_ci must be a positive relative width, got {self.until_ci}")
        if self.statistic not in ("median", "min"):
            raise ValueError(f"statistic must be median or min, got {self.statistic!r}")
        if self.ci_time_s <= 0:
            raise ValueError(f"ci_time_s must be positive, got {self.ci_time_s}")

    @property
    def samples(self) -> int:
        """Timed samples per model."""
        return self.rounds * self.reps


class Stopwatch:
    """Times one call of a function, synchronising the device around it.

    Args:
        device: ``"cpu"`` or a CUDA device; CUDA uses events on the current stream.
        clock: the host clock in seconds (tests pass a fake one).
    """

    def __init__(
        self, device: str | torch.device = "cpu", clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.device = torch.device(device)
        self.clock = clock

    def time(self, fn: Callable[[], Any]) -> float:
        """Seconds ``fn()`` took, device work included."""
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)  # nothing earlier may leak into this sample
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = self.clock()
        fn()
        return self.clock() - t0


def take_samples(fn: Callable[[], Any], n: int, watch: Stopwatch, warmup: int = 0) -> list[float]:
    """``warmup`` untimed calls of ``fn``, then ``n`` timed ones (seconds each)."""
    for _ in range(warmup):
        fn()
    if watch.device.type == "cuda":
        torch.cuda.synchronize(watch.device)
    return [watch.time(fn) for _ in range(n)]


@dataclass(frozen=True)
class Summary:
    """Statistics of one model/backend/batch, in milliseconds per call.

    Args:
        n: number of samples.
        median_ms, p10_ms, p90_ms, iqr_ms, mean_ms, min_ms: sample statistics.
        throughput: images per second at the median (``batch / median``).
        noisy: IQR / median above 10%: the machine was not quiet; do not trust small differences.
        samples_ms: every sample, in the order taken.
        rounds: the samples are ``rounds`` equal consecutive chunks, one per round-robin pass
            (what ``uvc.bench.stats`` pairs with the baseline's rounds).
        statistic: what summarises a round for the paired ratios (``median`` or ``min``).
    """

    n: int
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    throughput: float
    noisy: bool
    samples_ms: tuple[float, ...]
    rounds: int = 1
    statistic: str = "median"

    @property
    def spread(self) -> float:
        """IQR / median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (samples included)."""
        out = asdict(self)
        out["samples_ms"] = list(self.samples_ms)
        out["spread"] = self.spread
        return out


def summarize(
    samples_s: Sequence[float],
    batch: int,
    label: str = "",
    rounds: int = 1,
    statistic: str = "median",
) -> Summary:
    """Summarise per-call times (seconds) of calls on ``batch`` images.

    Args:
        samples_s: seconds per call, in the order taken.
        batch: images per call.
        label: names the row in the spread warning.
        rounds: the samples split into this many equal consecutive rounds.
        statistic: how a round is summarised for paired ratios (recorded, not used here).

    Raises:
        ValueError: no samples, a negative sample, a batch < 1, or samples that do not split
            into ``rounds`` equal rounds.
    """
    from torch.utils.benchmark.utils.common import Measurement, TaskSpec

    if not samples_s:
        raise ValueError("no timing samples to summarise")
    if min(samples_s) < 0:
        raise ValueError("a timing sample is negative: the clock went backwards")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if rounds < 1 or len(samples_s) % rounds:
        raise ValueError(f"{len(samples_s)} samples do not split into {rounds} equal rounds")
    m = Measurement(
        number_per_run=1,
        raw_times=[float(s) for s in samples_s],
        task_spec=TaskSpec(stmt=label or "infer", setup="", description=label),
    )
    t = torch.tensor(samples_s, dtype=torch.float64)
    p10, p90 = (float(v) for v in t.quantile(torch.tensor([0.1, 0.9], dtype=torch.float64)))
    median = m.median
    noisy = not m.meets_confidence(NOISY_SPREAD)
    if noisy:
        log.warning(
            "%s: IQR is %.0f%% of the median (%.3f ms): the machine is not quiet, "
            "small differences are not meaningful",
            label or "timing",
            100 * m.iqr / median if median > 0 else float("inf"),
            1e3 * median,
        )
    return Summary(
        n=len(samples_s),
        batch=batch,
        median_ms=1e3 * median,
        p10_ms=1e3 * p10,
        p90_ms=1e3 * p90,
        iqr_ms=1e3 * m.iqr,
        mean_ms=1e3 * m.mean,
        min_ms=1e3 * float(t.min()),
        throughput=batch / median if median > 0 else float("inf"),
        noisy=noisy,
        samples_ms=tuple(1e3 * float(s) for s in samples_s),
        rounds=rounds,
        statistic=statistic,
    )


def set_threads(threads: int) -> int:
    """Fix torch's intra-op CPU threads (ORT sessions are given the same number); returns it."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
