"""The run log (``log.jsonl``: one JSON object per step/epoch/event) and the closing summary."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

log = logging.getLogger("uvc.runlog")  # the name logs have always shown


def _plain(value: Any) -> Any:
    """JSON-ready copy: tensors become numbers/lists, NaN/inf become strings, enums their value."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "value") and not isinstance(value, int | float | str | bool):
        return value.value
    return value


class RunLog:
    """Append-only JSON-lines log; a resumed run keeps appending to the same file.

    Args:
        path: the ``log.jsonl`` file, or None to log nothing (non-zero ranks).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        """Write one record, stamped with the wall-clock time."""
        if self.path is None:
            return
        line = json.dumps({"time": round(time.time(), 3), **_plain(record)})
        # Open per record: a run killed with -9 loses at most the record being written.
        with open(self.path, "a") as fh:
            fh.write(line + "\n")

    def stage(self, name: str) -> RunLog:
        """A logger that adds ``stage=name`` to records that do not name one."""
        return _StageLog(self.path, name)


class _StageLog(RunLog):
    def __init__(self, path: Path | None, name: str) -> None:
        super().__init__(path)
        self.name = name

    def __call__(self, record: dict[str, Any]) -> None:
        super().__call__({"stage": self.name, **record})


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (a truncated last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@dataclass(frozen=True)
class SummaryRow:
    """One model in the closing table."""

    name: str
    accuracy: float | None
    macs: int
    params: int


def summary_table(rows: list[SummaryRow]) -> str:
    """A plain-text table: accuracy, MACs and params, each with its ratio to the first row."""
    base = rows[0]
    head = f"{'model':<14} {'top-1 %':>8} {'MACs':>12} {'ratio':>6} {'params':>11} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = "-" if r.accuracy is None else f"{r.accuracy:.2f}"
        lines.append(
            f"{r.name:<14} {acc:>8} {r.macs / 1e6:>10.2f} M {r.macs / base.macs:>6.3f} "
            f"{r.params / 1e6:>9.3f} M {r.params / base.params:>6.3f}"
        )
    return "\n".join(lines)
