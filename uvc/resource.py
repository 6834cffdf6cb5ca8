"""Differentiable resource model R of the search's soft state.

R is written with the same formulas as ``uvc.cost`` (MACs, parameters, or lookup-table latency), as
functions of the kept widths (h heads, q qk dims, v value dims, m MLP units) and the attention/MLP
gate values a, b in [0, 1]::

    R = fixed + sum_l  a_l * attn(h, q, v) + b_l * mlp(m)

At hard decisions (integer widths, gates 0/1) it equals ``uvc.cost`` of ``spec_after(spec, keep)``
exactly; in between it interpolates so the budget term has gradients to counts and gates. UVC's
formula ``g * [(qkv + qk) * head_ratio + ...]`` is the special case of uniform blocks and a block
gate. Everything is computed in float64 so MAC counts (< 2^53) are exact.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from uvc.cost import NORM_MACS_PER_ELEMENT, LatencyTable, model_cost
from uvc.errors import SpecError
from uvc.spec import BlockSpec, ViTSpec

Number = Tensor | float


class Metric(str, Enum):
    """What the budget counts."""

    MACS = "macs"
    PARAMS = "params"
    LATENCY = "latency"


class ResourceModel:
    """R for one uncompressed spec and metric.

    Args:
        spec: the uncompressed architecture (token count and embed width are fixed by it).
        metric: macs, params or latency.
        lut: the latency table, required for (and only used by) the latency metric.
    """

    def __init__(
        self, spec: ViTSpec, metric: Metric | str = Metric.MACS, lut: LatencyTable | None = None
    ) -> None:
        self.spec, self.metric, self.lut = spec, Metric(metric), lut
        if self.metric is Metric.LATENCY:
            if lut is None:
                raise SpecError("the latency metric needs a latency lookup table (--lut)")
            lut.check_spec(spec)
        cost = model_cost(spec)
        if self.metric is Metric.MACS:
            self.fixed = float(cost.embed_macs + cost.head_macs)
        elif self.metric is Metric.PARAMS:
            self.fixed = float(cost.embed_params + cost.head_params)
        else:
            self.fixed = float(lut.fixed_ms)  # type: ignore[union-attr]
        self.full = self.of_spec(spec)

    def attn(self, h: Number, q: Number, v: Number) -> Tensor:
        """Cost of an attention branch (with its norm) of h heads, q qk dims and v value dims."""
        h, q, v = (_f64(x) for x in (h, q, v))
        n, d = self.spec.num_tokens, self.spec.embed_dim
        if self.metric is Metric.LATENCY:
            return self.lut.attn_ms_at(h, q, v)  # type: ignore[union-attr]
        if self.metric is Metric.PARAMS:
            width = h * (2 * q + v)
            bias = width if self.spec.qkv_bias else 0.0
            return 2 * d + d * width + bias + h * v * d + d
        norm = NORM_MACS_PER_ELEMENT * n * d
        return norm + n * d * h * (2 * q + v) + h * n * n * q + h * n * n * v + n * h * v * d

    def mlp(self, m: Number) -> Tensor:
        """Cost of an MLP branch (with its norm) of m hidden units."""
        m = _f64(m)
        n, d = self.spec.num_tokens, self.spec.embed_dim
        if self.metric is Metric.LATENCY:
            return self.lut.mlp_ms_at(m)  # type: ignore[union-attr]
        if self.metric is Metric.PARAMS:
            return 2 * d + d * m + m + m * d + d
        return NORM_MACS_PER_ELEMENT * n * d + 2 * n * d * m

    def block(self, h: Number, q: Number, v: Number, m: Number, a: Number, b: Number) -> Tensor:
        """One block: ``a * attn + b * mlp``; a part with zero width or gate costs nothing."""
        a, b = _f64(a), _f64(b)
        out = torch.zeros((), dtype=torch.float64)
        # Skip the terms of zero-width parts rather than evaluating them at 0: the latency table
        # may extrapolate to a non-zero (even negative) value there. A gate at 0 multiplies an
        # exact finite cost by 0, which keeps the budget's gradient on that gate.
        if float(_f64(h).detach()) > 0:
            out = out + a * self.attn(h, q, v)
        if float(_f64(m).detach()) > 0:
            out = out + b * self.mlp(m)
        return out

    def block_float(self, h: int, q: int, v: int, m: int) -> float:
        """Exact cost of one hard block from integer widths (a fast path for projections)."""
        if self.metric is Metric.LATENCY:
            return float(self.block(h, q, v, m, 1.0, 1.0))
        n, d = self.spec.num_tokens, self.spec.embed_dim
        out = 0
        if h > 0:
            width = h * (2 * q + v)
            if self.metric is Metric.PARAMS:
                out += 3 * d + d * width + (width if self.spec.qkv_bias else 0) + h * v * d
            else:
                out += NORM_MACS_PER_ELEMENT * n * d + n * d * width + h * n * n * (q + v)
                out += n * h * v * d
        if m > 0:
            if self.metric is Metric.PARAMS:
                out += 3 * d + 2 * d * m + m
            else:
                out += NORM_MACS_PER_ELEMENT * n * d + 2 * n * d * m
        return float(out)

    def block_spec(self, b: BlockSpec) -> float:
        """Exact cost of one hard block."""
        return float(self.block(b.heads, b.qk_dim, b.v_dim, b.mlp_dim, 1.0, 1.0))

    def total(self, blocks: list[Tensor]) -> Tensor:
        """R from per-block costs."""
        return self.fixed + torch.stack(blocks).sum()

    def of_spec(self, spec: ViTSpec) -> float:
        """Exact cost of a hard spec with the same embed width and tokens (== ``uvc.cost``)."""
        return self.fixed + sum(self.block_spec(b) for b in spec.blocks)


def _f64(x: Number) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(torch.float64)
    return torch.tensor(float(x), dtype=torch.float64)
