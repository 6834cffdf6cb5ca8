"""Token-merging schedules: how many tokens each block merges (``ViTSpec.merge_r``), checked.

Torch-free (the spec validates with it). The merge itself is ``uvc.arch.merge``. Block ``i``
receives
``spec.tokens_in(i)`` tokens: the prefix tokens (class, distillation, registers), never merged, and
``P`` patch tokens, split alternately into sets A (``ceil(P/2)``) and B (``floor(P/2)``); it may
merge at most ``P // 2`` of them (ToMe's bound: every merge needs a B partner), leaving
``tokens_in(i) - r`` tokens. Every count is static, fixed by the schedule, not by the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from uvc.errors import SpecError


def merge_schedule(value: int | str | Sequence[int], depth: int) -> tuple[int, ...]:
    """Per-block merge counts from a constant ``r`` or one count per block.

    Args:
        value: an int (every block merges that many), a string ``"8"`` or ``"8,8,4,0,0,0"``
            (``--merge``), or a sequence of ints, one per block.
        depth: the model's number of blocks.

    Raises:
        SpecError: not integers, negative, or a list of another length than ``depth``.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            counts = [int(p) for p in parts]
        except ValueError:
            raise SpecError(
                f"--merge takes one integer r or one per block (e.g. 8 or 8,8,4,0), got {value!r}"
            ) from None
        value = counts[0] if len(counts) == 1 else counts
    if isinstance(value, bool):
        raise SpecError(f"merge must be an integer or a list of integers, got {value!r}")
    if isinstance(value, int):
        counts = [value] * depth
    else:
        counts = list(value)
        if len(counts) != depth:
            raise SpecError(
                f"merge lists {len(counts)} counts for a model of {depth} blocks: give one r "
                "per block, or a single r for all"
            )
    for r in counts:
        if not isinstance(r, int) or isinstance(r, bool):
            raise SpecError(f"merge counts must be integers, got {r!r}")
        if r < 0:
            raise SpecError(f"merge counts must be >= 0, got {r}")
    return tuple(counts)


def check_merge_r(spec: Any) -> tuple[int, ...]:
    """``spec.merge_r`` validated against the tokens each block receives; () when all zero.

    Raises:
        SpecError: wrong length, negative, or more merges than a block's tokens allow.
    """
    raw = spec.merge_r
    if isinstance(raw, list):
        raw = tuple(raw)
    if not isinstance(raw, tuple):
        raise SpecError(f"merge_r must be a list of integers, got {raw!r}")
    if not raw:
        return ()
    counts = merge_schedule(raw, spec.depth)
    if not any(counts):
        return ()
    patches = spec.num_patches
    for i, r in enumerate(counts):
        if r > patches // 2:
            raise SpecError(
                f"block {i} would merge {r} tokens but receives {patches} patch tokens: at most "
                f"{patches // 2} can merge there (half of them; prefix tokens never merge)"
            )
        patches -= r
    return counts


def merged_fraction(spec: Any) -> float:
    """Patch tokens left after the last block, as a fraction of the input's (1.0: no merging)."""
    return (spec.num_patches - sum(spec.merge_r)) / spec.num_patches


def with_merge(spec: Any, value: int | str | Sequence[int] | None) -> Any:
    """``spec`` with the merge schedule ``value`` (None or 0: no merging), validated."""
    if value is None:
        return spec.replace(merge_r=())
    return spec.replace(merge_r=merge_schedule(value, spec.depth))


def unmerged(spec: Any) -> Any:
    """``spec`` without token merging: the reference a budget is a fraction of."""
    return spec.replace(merge_r=()) if spec.merge_r else spec
