"""Latency-vs-batch plot of a benchmark result (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from uvc.bench.report import BenchResult


def plot_result(result: BenchResult, path: str | Path) -> Path:
    """Median latency (p10-p90 band) against batch size, one line per model and backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display: benchmarks run on servers
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
    for r in result.rows:
        if r.summary is not None:
            s = r.summary
            series[(r.model, r.backend)].append((r.batch, s.median_ms, s.p10_ms, s.p90_ms))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (model, backend), pts in sorted(series.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        line = ax.plot(xs, [p[1] for p in pts], marker="o", label=f"{model} / {backend}")[0]
        ax.fill_between(
            xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.2, color=line.get_color()
        )
    env = result.environment
    ax.set(
        xlabel="batch size",
        ylabel="latency per call, ms (median, p10-p90)",
        title=f"{env.get('device_name', env.get('device'))}, {env.get('threads')} threads, "
        f"{env.get('precision')}",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
