"""Benchmark results and their comparison: rows, speedup vs MACs, the --check verdict, tables.

Kept apart from running (``uvc.bench.harness``): a saved result can be re-checked or re-printed
without timing anything again. Speedup and efficiency are paired statistics (``uvc.bench.stats``):
the median over rounds of baseline/model round medians, with a bootstrap 95% interval; ``--check``
fails a row only when the whole interval is below the bar and calls it inconclusive when the
interval straddles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from uvc.bench.stats import MIN_ROUNDS, Interval, Verdict, paired_speedup, verdict
from uvc.bench.timer import Summary


@dataclass
class Row:
    """One model x backend x batch result."""

    model: str
    backend: str
    batch: int
    status: str  # "ok", "skipped: <reason>" or "failed: <reason>"
    macs: int
    params: int
    summary: Summary | None = None
    build_s: float | None = None
    prepare_s: float | None = None
    max_abs_diff: float | None = None
    copies_included: bool = False
    speedup: float | None = None
    macs_reduction: float | None = None
    efficiency: float | None = None
    speedup_ci: Interval | None = None
    efficiency_ci: Interval | None = None

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out = asdict(self)
        out["summary"] = None if self.summary is None else self.summary.to_dict()
        for key in ("speedup_ci", "efficiency_ci"):
            ci = getattr(self, key)
            out[key] = None if ci is None else ci.to_dict()
        return out


@dataclass
class BenchResult:
    """Everything measured, with the environment it was measured in."""

    environment: dict[str, Any]
    models: list[dict[str, Any]]
    baseline: str
    rows: list[Row]
    check: dict[str, Any] | None = None  # the --check verdicts, when one was asked for

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out = {
            "environment": self.environment,
            "models": self.models,
            "baseline": self.baseline,
            "rows": [r.to_dict() for r in self.rows],
        }
        if self.check is not None:
            out["check"] = self.check
        return out

    def save(self, path: str | Path) -> Path:
        """Write the JSON record (atomically)."""
        import json

        from uvc._fs import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def fill_efficiency(rows: Sequence[Row], baseline: str) -> None:
    """Set speedup, MACs reduction and efficiency of every measured row against ``baseline``.

    speedup = median over rounds of (baseline round median / row round median), same backend and
    batch, with its bootstrap 95% interval; MACs reduction = baseline MACs / row MACs;
    efficiency = speedup / MACs reduction (its interval scaled alike). An INT8 row
    (``ort+int8``) is paired with the baseline's FP32 row of its backend (``ort``, or
    ``ort+opt`` where the baseline ran its fused graph): its speedup is what INT8 gains over the
    FP32 baseline, the baseline's own INT8 row included.
    """
    ref = {(r.backend, r.batch): r for r in rows if r.model == baseline}
    for r in rows:
        b = ref.get((reference_backend(r.backend, ref, r.batch), r.batch))
        if b is None or r.summary is None or b.summary is None or not r.ok or not b.ok:
            continue
        bs, rs = b.summary, r.summary
        ci = paired_speedup(bs.samples_ms, bs.rounds, rs.samples_ms, rs.rounds, rs.statistic)
        r.macs_reduction = b.macs / r.macs
        r.speedup_ci = ci
        r.efficiency_ci = ci.scaled(1 / r.macs_reduction)
        r.speedup = ci.value
        r.efficiency = r.efficiency_ci.value


def reference_backend(backend: str, ref: dict[tuple[str, int], Row], batch: int) -> str:
    """The baseline backend label a row of ``backend`` is paired with (see ``fill_efficiency``)."""
    if not backend.endswith("+int8"):
        return backend
    fp32 = backend.removesuffix("+int8")
    return fp32 if (fp32, batch) in ref else f"{fp32}+opt"


def _compared(result: BenchResult) -> list[Row]:
    return [
        r
        for r in result.rows
        if (r.model != result.baseline or r.backend.endswith("+int8"))
        and r.efficiency_ci is not None
    ]


def row_verdict(row: Row, min_efficiency: float) -> Verdict:
    """The --check verdict of one compared row (see ``uvc.bench.stats.verdict``)."""
    if row.efficiency_ci is None:
        raise ValueError(f"{row.model} / {row.backend} / batch {row.batch} was not compared")
    return verdict(row.efficiency_ci, min_efficiency)


def failing_rows(result: BenchResult, min_efficiency: float) -> list[Row]:
    """Non-baseline rows whose whole efficiency interval is below ``min_efficiency``."""
    return [r for r in _compared(result) if row_verdict(r, min_efficiency) is Verdict.FAIL]


@dataclass(frozen=True)
class Check:
    """The --check outcome: one line per failing and per inconclusive row.

    ``exit_code``: 0 every row passed, 1 some row failed (or nothing could be compared),
    3 nothing failed but some row is inconclusive (not a pass: run more rounds).
    """

    failed: tuple[str, ...]
    inconclusive: tuple[str, ...]
    passed: tuple[str, ...]

    @property
    def exit_code(self) -> int:
        """Process exit status for ``uvc bench --check``."""
        if self.failed:
            return 1
        return 3 if self.inconclusive else 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "failed": list(self.failed),
            "inconclusive": list(self.inconclusive),
            "passed": list(self.passed),
            "exit_code": self.exit_code,
        }


def check_result(result: BenchResult, min_efficiency: float) -> Check:
    """Judge every compared row against ``min_efficiency`` with its interval."""
    failed, unsure, passed = [], [], []
    for r in _compared(result):
        ci = r.efficiency_ci
        assert ci is not None  # _compared keeps only compared rows
        where = f"{r.model} / {r.backend} / batch {r.batch}"
        v = row_verdict(r, min_efficiency)
        if v is Verdict.FAIL:
            failed.append(f"efficiency {ci} < {min_efficiency} (whole 95% interval): {where}")
        elif v is Verdict.PASS:
            passed.append(f"efficiency {ci} >= {min_efficiency}: {where}")
        elif ci.n < MIN_ROUNDS:
            unsure.append(
                f"inconclusive: {ci.n} rounds < {MIN_ROUNDS} give no verdict "
                f"(efficiency {ci}; raise --rounds): {where}"
            )
        else:
            unsure.append(
                f"inconclusive: efficiency {ci} straddles {min_efficiency} "
                f"(raise --rounds or use --until-ci): {where}"
            )
    if not _compared(result):
        failed.append("no row could be compared with the baseline (nothing measured to check)")
    return Check(tuple(failed), tuple(unsure), tuple(passed))


def check_problems(result: BenchResult, min_efficiency: float) -> list[str]:
    """What ``--check`` fails on: rows whose whole interval is below the bar, or nothing to
    compare at all (inconclusive rows are in ``check_result``)."""
    return list(check_result(result, min_efficiency).failed)


def format_table(result: BenchResult, markdown: bool = False) -> str:
    """The results as an aligned text table (or a markdown table)."""
    head = [
        "model", "backend", "batch", "median ms", "p90 ms", "img/s", "MMACs",
        "speedup [95% CI]", "MACs red.", "efficiency [95% CI]", "status",
    ]  # fmt: skip
    lines = []
    for r in result.rows:
        s = r.summary
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        noisy = "*" if s is not None and s.noisy else ""
        lines.append(
            [
                r.model + (" (baseline)" if _is_baseline_row(r, result.baseline) else ""),
                r.backend,
                str(r.batch),
                "-" if s is None else f"{s.median_ms:.2f}{noisy}",
                "-" if s is None else f"{s.p90_ms:.2f}",
                "-" if s is None else f"{s.throughput:.1f}",
                f"{r.macs / 1e6:.1f}",
                _ci(r.speedup, r.speedup_ci),
                f(r.macs_reduction, ".2f"),
                _ci(r.efficiency, r.efficiency_ci),
                r.status,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in ln) + " |" for ln in lines]
    else:
        widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        out += ["  ".join(c.ljust(w) for c, w in zip(ln, widths, strict=True)) for ln in lines]
    if any(r.summary is not None and r.summary.noisy for r in result.rows):
        out.append("* IQR > 10% of the median: the machine was not quiet.")
    stat = next((r.summary.statistic for r in result.rows if r.summary is not None), "median")
    out.append(
        f"speedup, efficiency: median over rounds of paired (baseline / model) ratios of round "
        f"{stat}s, [bootstrap 95% interval]."
    )
    warning = oversubscribed(result.environment)
    if warning:
        out.append(warning)
    return "\n".join(out)


def oversubscribed(environment: dict[str, Any]) -> str | None:
    """A warning when the run's load average exceeded the CPU count, else None."""
    load, cpus = environment.get("load_average"), environment.get("cpu_count")
    if not load or not cpus or load[0] <= cpus:
        return None
    return (
        f"! load average {load[0]:.1f} on {cpus} CPUs: other processes competed for the cores; "
        "long calls are preempted more often than short ones, which biases ratios of medians "
        "(re-run on a quiet machine, or with --statistic min)."
    )


def _is_baseline_row(row: Row, baseline: str) -> bool:
    return row.model == baseline and not row.backend.endswith("+int8")


def _ci(value: float | None, ci: Interval | None) -> str:
    if value is None:
        return "-"
    if ci is None or ci.n < 2:
        return f"{value:.2f}"
    return f"{value:.2f} [{ci.lo:.2f}, {ci.hi:.2f}]"
