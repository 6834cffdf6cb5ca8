"""NViT's Hessian-aware saliency of structural units, accumulated over batches.

For a unit s (embedding channel, head, aligned query/key dim, aligned value dim, MLP unit) the
saliency of one batch is ``(sum_{w in s} w * dL/dw / reach(s))^2``: the empirical-Fisher form of the
second-order term of the loss change when s is removed. The sum runs over *every* tensor slice the
unit owns (``uvc.arch.structmap``, ``proxy=False``; for an embedding channel ``reduce_embed``), and
the
batches between two pruning steps are averaged (the Fisher expectation).

Normalisation (``reach``): the sum is divided by the number of blocks the unit's slices lie in
before squaring: ``depth`` for an embedding channel, 1 for every unit of one block. An embedding
channel's sum adds up one contribution per block it feeds, so undivided it would outrank every
block unit just for spanning more blocks; divided, every kind is "per block" and ranks on one
scale. For DeiT-B this is the official code's embedding constant (12 = its depth); the official
per-block constants (head 12, QK 2, V 2, MLP 1) have no structural derivation and are not used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.arch.structmap import Kind, StructureMap

# The prunable kinds of one block (head alignment: QK and V dims are shared by all heads).
BLOCK_UNITS = (Kind.HEAD, Kind.QK, Kind.V, Kind.MLP)


def group_key(block: int, kind: Kind) -> str:
    """Key of one group of units: ``"2.mlp"``, or ``"embed"`` for the embedding channels."""
    return "embed" if kind is Kind.EMBED else f"{block}.{kind.value}"


def groups(spec: ViTSpec) -> list[tuple[int, Kind]]:
    """Every (block, kind) with units, then (-1, EMBED)."""
    out = []
    for i, b in enumerate(spec.blocks):
        if b.has_attn:
            out += [(i, Kind.HEAD), (i, Kind.QK), (i, Kind.V)]
        if b.has_mlp:
            out.append((i, Kind.MLP))
    return [*out, (-1, Kind.EMBED)]


def reach(spec: ViTSpec, kind: Kind) -> int:
    """How many blocks a unit of ``kind`` spans (the divisor before squaring)."""
    return max(1, spec.depth) if kind is Kind.EMBED else 1


def unit_sums(model: ViT, smap: StructureMap | None = None) -> dict[str, Tensor]:
    """``sum w * dL/dw`` per unit of every group, from the model's current ``.grad`` (float64).

    Parameters without a gradient contribute nothing.
    """
    smap = StructureMap(model.spec) if smap is None else smap
    params = dict(model.named_parameters())
    cache: dict[tuple[str, int], Tensor | None] = {}

    def per_position(name: str, dim: int) -> Tensor | None:
        if (name, dim) not in cache:
            w = params.get(name)
            if w is None or w.grad is None:
                cache[(name, dim)] = None
            else:
                e = w.detach().double() * w.grad.detach().double()
                others = [d for d in range(e.dim()) if d != dim]
                cache[(name, dim)] = e.sum(others) if others else e
        return cache[(name, dim)]

    out = {}
    for block, kind in groups(model.spec):
        if kind is Kind.EMBED:
            out[group_key(block, kind)] = smap.reduce_embed(params, per_position).double()
        else:
            out[group_key(block, kind)] = smap.reduce(block, kind, per_position, False).double()
    return out


class Saliency:
    """Running mean of per-batch saliencies of every unit (see module docstring).

    Call ``observe(model)`` after each backward (gradients already averaged over ranks, so every
    rank holds the same numbers), ``scores()`` at a pruning step, then ``reset()``.
    """

    def __init__(self, spec: ViTSpec) -> None:
        self.spec = spec
        self.smap = StructureMap(spec)
        self.total: dict[str, Tensor] = {}
        self.batches = 0

    def observe(self, model: ViT) -> None:
        """Add the saliency of the last backward's gradients."""
        sums = unit_sums(model, self.smap)
        for block, kind in groups(self.spec):
            key = group_key(block, kind)
            s = (sums[key].cpu() / reach(self.spec, kind)).square()
            self.total[key] = self.total[key] + s if key in self.total else s
        self.batches += 1

    def scores(self) -> dict[str, Tensor]:
        """Mean saliency per unit over the batches observed since the last ``reset`` (zeros
        before any)."""
        out = {}
        for block, kind in groups(self.spec):
            key = group_key(block, kind)
            t = self.total.get(key)
            out[key] = t / self.batches if t is not None else torch.zeros(self._units(block, kind))
        return out

    def _units(self, block: int, kind: Kind) -> int:
        return self.spec.embed_dim if kind is Kind.EMBED else self.smap.units(block, kind)

    def reset(self) -> None:
        """Start a new accumulation window."""
        self.total, self.batches = {}, 0

    def state_dict(self) -> dict[str, Any]:
        """The accumulators, for checkpoints."""
        return {"total": {k: v.clone() for k, v in self.total.items()}, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.total = {k: v.double().cpu() for k, v in state["total"].items()}
        self.batches = int(state["batches"])
