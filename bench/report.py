"""Benchmark results and their comparison: rows, speedup vs MACs, the --check verdict, tables.

Kept apart from running (``uvc.bench.harness``): a saved result can be re-checked or re-printed
without timing anything again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

    @property
    def ok(self) -> bool:
        """Whether the row was measured."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out = asdict(self)
        out["summary"] = None if self.summary is None else self.summary.to_dict()
        return out


@dataclass
class BenchResult:
    """Everything measured, with the environment it was measured in."""

    environment: dict[str, Any]
    models: list[dict[str, Any]]
    baseline: str
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "environment": self.environment,
            "models": self.models,
            "baseline": self.baseline,
            "rows": [r.to_dict() for r in self.rows],
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON record (atomically)."""
        import json

        from uvc.checkpoint import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


def fill_efficiency(rows: Sequence[Row], baseline: str) -> None:
    """Set speedup, MACs reduction and efficiency of every measured row against ``baseline``.

    speedup = baseline median / row median (same backend and batch); MACs reduction = baseline
    MACs / row MACs; efficiency = speedup / MACs reduction.
    """
    ref = {(r.backend, r.batch): r for r in rows if r.model == baseline}
    for r in rows:
        b = ref.get((r.backend, r.batch))
        if b is None or r.summary is None or b.summary is None or not r.ok or not b.ok:
            continue
        r.speedup = b.summary.median_ms / r.summary.median_ms
        r.macs_reduction = b.macs / r.macs
        r.efficiency = r.speedup / r.macs_reduction


def failing_rows(result: BenchResult, min_efficiency: float) -> list[Row]:
    """Measured non-baseline rows whose efficiency is below ``min_efficiency``."""
    return [
        r
        for r in result.rows
        if r.model != result.baseline and r.efficiency is not None and r.efficiency < min_efficiency
    ]


def check_problems(result: BenchResult, min_efficiency: float) -> list[str]:
    """What ``--check`` fails on: rows below ``min_efficiency``, or nothing to compare at all."""
    problems = [
        f"efficiency {r.efficiency:.2f} < {min_efficiency}: "
        f"{r.model} / {r.backend} / batch {r.batch}"
        for r in failing_rows(result, min_efficiency)
    ]
    compared = [r for r in result.rows if r.model != result.baseline and r.efficiency is not None]
    if not compared:
        problems.append("no row could be compared with the baseline (nothing measured to check)")
    return problems


def format_table(result: BenchResult, markdown: bool = False) -> str:
    """The results as an aligned text table (or a markdown table)."""
    head = [
        "model", "backend", "batch", "median ms", "p90 ms", "img/s", "MMACs",
        "speedup", "MACs red.", "efficiency", "status",
    ]  # fmt: skip
    lines = []
    for r in result.rows:
        s = r.summary
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        noisy = "*" if s is not None and s.noisy else ""
        lines.append(
            [
                r.model + (" (baseline)" if r.model == result.baseline else ""),
                r.backend,
                str(r.batch),
                "-" if s is None else f"{s.median_ms:.2f}{noisy}",
                "-" if s is None else f"{s.p90_ms:.2f}",
                "-" if s is None else f"{s.throughput:.1f}",
                f"{r.macs / 1e6:.1f}",
                f(r.speedup, ".2f"),
                f(r.macs_reduction, ".2f"),
                f(r.efficiency, ".2f"),
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
    return "\n".join(out)
