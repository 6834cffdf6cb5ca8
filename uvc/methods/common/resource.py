"""Differentiable resource model R of the search's soft state.

R calls the very functions of ``uvc.arch.cost`` (``block_macs``, ``block_params``: one formula, fed
tensors here and integers there) or the lookup-table latency, as functions of the kept widths
(h heads, q qk dims, v value dims, m MLP units) and the gate values g (whole block), a, b
(attention, MLP) in [0, 1]::

    R = fixed + sum_l  g_l * base + a_l * attn(h, q, v) + b_l * mlp(m) + merge_l

``base`` is what an empty, unskipped block still costs (a post-norm block's two LayerNorms; 0
pre-norm); ``attn``/``mlp`` are what a branch adds to it.

Token merging (``spec.merge_r``, fixed by the user, never searched) makes every term per block:
block l's attention runs on ``spec.tokens_in(l)`` tokens, its MLP on ``r_l`` fewer, and ``merge_l``
is the matching's similarity matmul (over the keys' width while the attention is kept, the
embedding width once it is not; a skipped block still merges). ``full``, what the budget is a
fraction of, is the cost of the same model *without* merging, so the tokens merging saves count
toward the budget and the search prunes less width for the same ``--budget``. With a latency table
(measured at one token count), the attention and MLP latencies are scaled linearly by the tokens
each sees (exact for the linear layers, an approximation for the N^2 attention matmuls); the merge
op's own latency is not in the table and counts 0.

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
from uvc.arch.merge_schedule import unmerged
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
        n0 = spec.num_tokens
        # Per block: tokens its attention / MLP see (the latency table's linear token scaling).
        self._scale = [
            (spec.tokens_in(i) / n0, (spec.tokens_in(i) - spec.block_merge(i)) / n0)
            for i in range(spec.depth)
        ]
        if self.metric is Metric.MACS:
            self.fixed = float(cost.embed_macs + cost.head_macs)
        elif self.metric is Metric.PARAMS:
            self.fixed = float(cost.embed_params + cost.head_params)
        else:
            self.fixed = float(lut.fixed_ms)  # type: ignore[union-attr]
        # A LUT times branches only; the formula's base is the post-norm norms (0 pre-norm).
        self.bases = [
            0.0 if self.metric is Metric.LATENCY else float(self._formula(0, 0, 0, 0, i))
            for i in range(spec.depth)
        ]
        self.base = self.bases[0]
        self.full = (
            ResourceModel(unmerged(spec), metric, lut).full if spec.merge_r else self.of_spec(spec)
        )

    def _formula(self, h: Any, q: Any, v: Any, m: Any, i: int = 0) -> Any:
        """``uvc.arch.cost``'s block formula (an unskipped block ``i``, its merge matmul excluded)
        for the MACs or params metric."""
        w, s = _Widths(h, q, v, m), self.spec
        if self.metric is Metric.PARAMS:
            return block_params(
                w, s.embed_dim, s.qkv_bias, post_norm=s.post_norm, layer_scale=s.layer_scale
            )
        c = block_macs(
            w, s.tokens_in(i), s.embed_dim, post_norm=s.post_norm, merge_r=s.block_merge(i)
        )
        return c.total - c.merge

    def merge(self, i: int, width: Number | None = None) -> Any:
        """Block ``i``'s matching matmul (MACs) over features of ``width``: the keys' qk width
        while its attention is kept, the embedding width (None) once it is not."""
        s = self.spec
        if self.metric is not Metric.MACS or not s.block_merge(i):
            return 0.0
        patches = s.tokens_in(i) - s.num_prefix_tokens
        return ((patches + 1) // 2) * (patches // 2) * (s.embed_dim if width is None else width)

    def attn(self, h: Number, q: Number, v: Number, i: int = 0) -> Tensor:
        """What an attention branch of h heads, q qk dims and v value dims adds to block ``i``."""
        h, q, v = (_f64(x) for x in (h, q, v))
        if self.metric is Metric.LATENCY:
            return self.lut.attn_ms_at(h, q, v) * self._scale[i][0]  # type: ignore[union-attr]
        return self._formula(h, q, v, 0, i) - self.bases[i]

    def mlp(self, m: Number, i: int = 0) -> Tensor:
        """What an MLP branch of m hidden units adds to block ``i``."""
        m = _f64(m)
        if self.metric is Metric.LATENCY:
            return self.lut.mlp_ms_at(m) * self._scale[i][1]  # type: ignore[union-attr]
        return self._formula(0, 0, 0, m, i) - self.bases[i]

    def block(
        self,
        h: Number,
        q: Number,
        v: Number,
        m: Number,
        a: Number,
        b: Number,
        g: Number = 1.0,
        i: int = 0,
    ) -> Tensor:
        """Block ``i``: ``g * base + a * attn + b * mlp (+ merge)``; a zero-width part costs
        nothing."""
        # Every term on the inputs' device: an empty block's cost must stack with the others
        # under CUDA (it used to be a CPU zero).
        dev = next((x.device for x in (h, q, v, m, a, b, g) if isinstance(x, Tensor)), None)
        a, b, g = _f64(a, dev), _f64(b, dev), _f64(g, dev)
        out = g * self.bases[i]
        # Skip the terms of zero-width parts rather than evaluating them at 0: the latency table
        # may extrapolate to a non-zero (even negative) value there. A gate at 0 multiplies an
        # exact finite cost by 0, which keeps the budget's gradient on that gate.
        keys = float(_f64(h).detach()) > 0
        if keys:
            out = out + a * self.attn(h, q, v, i)
        if float(_f64(m).detach()) > 0:
            out = out + b * self.mlp(m, i)
        if self.spec.merge_r:  # exact at hard gates: keys while the attention stays, else tokens
            with_keys = self.merge(i, _f64(q, dev)) if keys else self.merge(i)
            out = out + a * with_keys + (1 - a) * self.merge(i)
        return out

    def block_float(self, h: int, q: int, v: int, m: int, skip: bool = False, i: int = 0) -> float:
        """Exact cost of one hard block ``i`` from integer widths (integer arithmetic)."""
        if skip:
            return float(self.merge(i))
        if self.metric is Metric.LATENCY:
            return float(self.block(h, q, v, m, 1.0, 1.0, i=i))
        merge = self.merge(i, q if h else None)
        return float(self._formula(h, q if h else 0, v if h else 0, m, i)) + float(merge)

    def block_spec(self, b: BlockSpec, i: int = 0) -> float:
        """Exact cost of one hard block ``i``."""
        return self.block_float(b.heads, b.qk_dim, b.v_dim, b.mlp_dim, b.skip, i)

    def total(self, blocks: list[Tensor]) -> Tensor:
        """R from per-block costs."""
        return self.fixed + torch.stack(blocks).sum()

    def of_spec(self, spec: ViTSpec) -> float:
        """Exact cost of a hard spec with the same embed width, tokens and merging (==
        ``uvc.arch.cost``)."""
        return self.fixed + sum(self.block_spec(b, i) for i, b in enumerate(spec.blocks))


def _f64(x: Number, device: torch.device | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(torch.float64)
    return torch.tensor(float(x), dtype=torch.float64, device=device)
