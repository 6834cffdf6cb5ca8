"""Differentiable resource model R of the search's soft state.

R calls the very functions of ``uvc.arch.cost`` (``block_macs``, ``block_params``: one formula, fed
tensors here and integers there) or the lookup-table latency, as functions of the kept widths
(h heads, q qk dims, v value dims, m MLP units) and the gate values g (whole block), a, b
(attention, MLP) in [0, 1]::

    R = fixed + sum_l  g_l * base + a_l * attn(h, q, v) + b_l * mlp(m)

``base`` is what an empty, unskipped block still costs (a post-norm block's two LayerNorms; 0
pre-norm); ``attn``/``mlp`` are what a branch adds to it.

At hard decisions (integer widths, gates 0/1) it equals ``uvc.arch.cost`` of ``spec_after(spec,
keep)``
exactly; in between it interpolates so the budget term has gradients to counts and gates. UVC's
formula ``g * [(qkv + qk) * head_ratio + ...]`` is the special case of uniform blocks and a block
gate. Everything is computed in float64 so MAC counts (< 2^53) are exact.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import torch
from torch import Tensor

from uvc.arch.cost import LatencyTable, block_macs, block_params, model_cost
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import SpecError

Number = Tensor | float


class Metric(str, Enum):
    """What the budget counts."""

    MACS = "macs"
    PARAMS = "params"
    LATENCY = "latency"


class _Widths(NamedTuple):
    """Duck-typed block widths for ``uvc.arch.cost`` (ints, floats or tensors)."""

    heads: Any
    qk_dim: Any
    v_dim: Any
    mlp_dim: Any


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
        # A LUT times branches only; the formula's base is the post-norm norms (0 pre-norm).
        self.base = 0.0 if self.metric is Metric.LATENCY else float(self._formula(0, 0, 0, 0))
        self.full = self.of_spec(spec)

    def _formula(self, h: Any, q: Any, v: Any, m: Any) -> Any:
        """``uvc.arch.cost``'s block formula (an unskipped block) for the MACs or params metric."""
        w, s = _Widths(h, q, v, m), self.spec
        if self.metric is Metric.PARAMS:
            return block_params(
                w, s.embed_dim, s.qkv_bias, post_norm=s.post_norm, layer_scale=s.layer_scale
            )
        return block_macs(w, s.num_tokens, s.embed_dim, post_norm=s.post_norm).total

    def attn(self, h: Number, q: Number, v: Number) -> Tensor:
        """What an attention branch of h heads, q qk dims and v value dims adds to a block."""
        h, q, v = (_f64(x) for x in (h, q, v))
        if self.metric is Metric.LATENCY:
            return self.lut.attn_ms_at(h, q, v)  # type: ignore[union-attr]
        return self._formula(h, q, v, 0) - self.base

    def mlp(self, m: Number) -> Tensor:
        """What an MLP branch of m hidden units adds to a block."""
        m = _f64(m)
        if self.metric is Metric.LATENCY:
            return self.lut.mlp_ms_at(m)  # type: ignore[union-attr]
        return self._formula(0, 0, 0, m) - self.base

    def block(
        self, h: Number, q: Number, v: Number, m: Number, a: Number, b: Number, g: Number = 1.0
    ) -> Tensor:
        """One block: ``g * base + a * attn + b * mlp``; a zero-width part costs nothing."""
        # Every term on the inputs' device: an empty block's cost must stack with the others
        # under CUDA (it used to be a CPU zero).
        dev = next((x.device for x in (h, q, v, m, a, b, g) if isinstance(x, Tensor)), None)
        a, b, g = _f64(a, dev), _f64(b, dev), _f64(g, dev)
        out = g * self.base
        # Skip the terms of zero-width parts rather than evaluating them at 0: the latency table
        # may extrapolate to a non-zero (even negative) value there. A gate at 0 multiplies an
        # exact finite cost by 0, which keeps the budget's gradient on that gate.
        if float(_f64(h).detach()) > 0:
            out = out + a * self.attn(h, q, v)
        if float(_f64(m).detach()) > 0:
            out = out + b * self.mlp(m)
        return out

    def block_float(self, h: int, q: int, v: int, m: int, skip: bool = False) -> float:
        """Exact cost of one hard block from integer widths (integer arithmetic: fast, exact)."""
        if skip:
            return 0.0
        if self.metric is Metric.LATENCY:
            return float(self.block(h, q, v, m, 1.0, 1.0))
        return float(self._formula(h, q if h else 0, v if h else 0, m))

    def block_spec(self, b: BlockSpec) -> float:
        """Exact cost of one hard block."""
        return self.block_float(b.heads, b.qk_dim, b.v_dim, b.mlp_dim, b.skip)

    def total(self, blocks: list[Tensor]) -> Tensor:
        """R from per-block costs."""
        return self.fixed + torch.stack(blocks).sum()

    def of_spec(self, spec: ViTSpec) -> float:
        """Exact cost of a hard spec with the same embed width and tokens (== ``uvc.arch.cost``)."""
        return self.fixed + sum(self.block_spec(b) for b in spec.blocks)


def _f64(x: Number, device: torch.device | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(torch.float64)
    return torch.tensor(float(x), dtype=torch.float64, device=device)
