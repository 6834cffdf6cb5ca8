"""The fusion table (README): plain vs ``--optimize cpu`` graphs from one ``uvc bench --json`` run.

``uvc bench`` pairs every row with the baseline's; the fusion speedup pairs each model's plain and
fused rows instead, round by round, with the same statistics::

    python -m uvc.bench.fusion_table r.json tiny [median|min]
"""

from __future__ import annotations

import json
import sys
from typing import Any

from uvc.bench.stats import paired_speedup


def table(result: dict[str, Any], family: str, statistic: str = "median") -> list[str]:
    """Markdown rows: per batch, latencies, fusion speedups and efficiencies (plain, fused)."""

    def short(label: str) -> str:
        return label.rstrip("/").rsplit("/", 1)[-1]

    macs = {short(m["label"]): m["macs"] for m in result["models"]}
    rows = {(short(r["model"]), r["batch"]): r for r in result["rows"]}

    def speedup(base: str, other: str, batch: int) -> Any:
        s, t = rows[(base, batch)]["summary"], rows[(other, batch)]["summary"]
        return paired_speedup(s["samples_ms"], s["rounds"], t["samples_ms"], t["rounds"], statistic)

    d, c = f"{family}_dense", f"{family}_comp"
    do, co = f"{d}_opt", f"{c}_opt"
    red = macs[d] / macs[c]
    lines = []
    for b in sorted({k[1] for k in rows}):
        ms = {k: rows[(k, b)]["summary"]["median_ms"] for k in (d, c, do, co)}
        fd, fc = speedup(d, do, b), speedup(c, co, b)
        ep, eo = speedup(d, c, b).scaled(1 / red), speedup(do, co, b).scaled(1 / red)
        lines.append(
            f"| {family} | {b} | {ms[d]:.2f} | {ms[do]:.2f} | {fd} | {ms[c]:.2f} | {ms[co]:.2f} "
            f"| {fc} | {red:.2f}x | {ep} | {eo} |"
        )
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        data = json.load(f)
    print("\n".join(table(data, sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "median")))
