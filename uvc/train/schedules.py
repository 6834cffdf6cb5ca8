"""Schedules: pure functions of the step, shared by every training loop (search, fine-tune)."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, base: float, warmup: int = 0, final: float = 0.0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``base`` to ``final``."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))


def geometric(step: int, total: int, start: float, end: float) -> float:
    """Geometric interpolation from ``start`` (step 0) to ``end`` (last step)."""
    t = min(1.0, step / max(1, total - 1))
    return start * (end / start) ** t


def linear(step: int, total: int, start: float, end: float) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (last step)."""
    t = min(1.0, step / max(1, total - 1))
    return start + (end - start) * t
