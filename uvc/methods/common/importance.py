"""Importance of prunable groups: which heads, dims and MLP units go first.

UVC prunes through *proxy* weights (UVC, ICLR 2022): a head or a value dim through its ``attn.proj``
input columns, a query/key dim through its q and k rows of ``attn.qkv``, an MLP unit through its
``mlp.fc2`` input column. A criterion turns those weights (and, for Taylor/Fisher, their gradients)
into one score per group; lower scores are pruned first.

- magnitude (UVC's default): squared L2 norm of the group's proxy weights.
- taylor: ``sum |w * dL/dw|`` over the group (first-order estimate of the loss change).
- fisher: ``(sum w * dL/dw)^2`` over the group (NViT's group-level empirical-Fisher saliency).

Gradient criteria are averaged over steps with an exponential moving average fed by ``observe``
(called after each backward), because a single mini-batch's gradient is too noisy to rank by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch
from torch import Tensor

from uvc.arch.model import ViT
from uvc.arch.structmap import Kind, StructureMap
from uvc.errors import UvcError


class Criterion(str, Enum):
    """How a group's score is computed."""

    MAGNITUDE = "magnitude"
    TAYLOR = "taylor"
    FISHER = "fisher"


@dataclass
class BlockScores:
    """Scores of one block's groups (empty tensors for a part the block does not have).

    Args:
        heads: (H,) one score per head.
        qk: (H, qk_dim) per head and query/key dim (UVC's per-head dims).
        v: (H, v_dim) per head and value dim.
        mlp: (mlp_dim,) per hidden unit.
        qk_aligned: (qk_dim,) a qk dim removed from every head at once (head alignment).
        v_aligned: (v_dim,) a value dim removed from every head at once.
    """

    heads: Tensor
    qk: Tensor
    v: Tensor
    mlp: Tensor
    qk_aligned: Tensor
    v_aligned: Tensor

    def tensors(self) -> dict[str, Tensor]:
        """The fields by name (for averaging and checkpoints)."""
        return {k: getattr(self, k) for k in _FIELDS}


_FIELDS = ("heads", "qk", "v", "mlp", "qk_aligned", "v_aligned")


class Importance(Protocol):
    """The pluggable criterion: scores for every block of a model; ``observe`` after backward."""

    def __call__(self, model: ViT) -> list[BlockScores]: ...

    def observe(self, model: ViT) -> None: ...


# Per-element transform (weight, grad) -> contribution, and the final per-group transform.
_ELEMENT: dict[Criterion, Callable[[Tensor, Tensor | None], Tensor]] = {
    Criterion.MAGNITUDE: lambda w, g: w.square(),
    Criterion.TAYLOR: lambda w, g: (w * g).abs(),  # type: ignore[operator]
    Criterion.FISHER: lambda w, g: w * g,  # type: ignore[operator]
}


def _group_scores(model: ViT, criterion: Criterion) -> list[BlockScores]:
    """Scores of every group from the current weights (and ``.grad`` for gradient criteria).

    Which rows/columns a group owns comes from ``uvc.arch.structmap`` (UVC's proxy weights).
    """
    elem = _ELEMENT[criterion]
    # Fisher squares the *group* sum, so every granularity (head, dim) is summed before squaring.
    final: Callable[[Tensor], Tensor] = (
        (lambda t: t.square()) if criterion is Criterion.FISHER else (lambda t: t)
    )
    smap = map_of(model)
    params = dict(model.named_parameters())
    cache: dict[tuple[str, int], Tensor] = {}

    def per_position(name: str, dim: int) -> Tensor:
        if (name, dim) not in cache:
            w = params[name]
            e = elem(w.detach().float(), _grads(w, criterion))
            others = [d for d in range(e.dim()) if d != dim]
            cache[(name, dim)] = e.sum(others) if others else e
        return cache[(name, dim)]

    out = []
    for i, b in enumerate(model.spec.blocks):
        empty = torch.zeros(0)

        def score(kind: Kind, i: int = i) -> Tensor:
            return final(smap.reduce(i, kind, per_position, proxy=True))

        heads = qk = v = qk_al = v_al = mlp = empty
        if b.has_attn:
            heads, qk_al, v_al = score(Kind.HEAD), score(Kind.QK), score(Kind.V)
            qk = score(Kind.QK_HEAD).view(b.heads, b.qk_dim)
            v = score(Kind.V_HEAD).view(b.heads, b.v_dim)
        if b.has_mlp:
            mlp = score(Kind.MLP)
        out.append(BlockScores(heads, qk, v, mlp, qk_al, v_al))
    return out


def map_of(model: ViT) -> StructureMap:
    """The structural map of ``model.spec``, built once per spec."""
    cached = getattr(model, "_uvc_structure_map", None)
    if cached is None or cached.spec != model.spec:
        cached = StructureMap(model.spec)
        object.__setattr__(model, "_uvc_structure_map", cached)
    return cached


def _grads(w: Tensor, criterion: Criterion) -> Tensor | None:
    if criterion is Criterion.MAGNITUDE:
        return None
    if w.grad is None:
        raise UvcError(f"the {criterion.value} criterion needs gradients; call it after backward")
    return w.grad.detach().float()


class GroupImportance:
    """A criterion over the proxy weights (see module docstring).

    Args:
        criterion: magnitude, taylor or fisher.
        ema: decay of the moving average of gradient-based scores (ignored for magnitude).
    """

    def __init__(self, criterion: Criterion | str = Criterion.MAGNITUDE, ema: float = 0.9) -> None:
        try:
            self.criterion = Criterion(criterion)
        except ValueError:
            names = ", ".join(c.value for c in Criterion)
            raise UvcError(f"unknown importance criterion {criterion!r} (choose {names})") from None
        if not 0.0 <= ema < 1.0:
            raise UvcError(f"importance EMA decay must be in [0, 1), got {ema}")
        self.ema = ema
        self._avg: list[BlockScores] | None = None

    def __call__(self, model: ViT) -> list[BlockScores]:
        """Scores of every block; gradient criteria return their running average (zeros before
        the first ``observe``: ties are broken by index, so the order is still deterministic)."""
        if self.criterion is Criterion.MAGNITUDE:
            return _group_scores(model, Criterion.MAGNITUDE)
        if self._avg is None:
            return [_zeros_like(s) for s in _group_scores(model, Criterion.MAGNITUDE)]
        return self._avg

    def observe(self, model: ViT) -> None:
        """Fold the gradients of the last backward into the running scores."""
        if self.criterion is Criterion.MAGNITUDE:
            return
        new = _group_scores(model, self.criterion)
        if self._avg is None:
            self._avg = new
            return
        d = self.ema
        self._avg = [_lerp(old, cur, d) for old, cur in zip(self._avg, new, strict=True)]

    def state_dict(self) -> dict[str, object]:
        """Running scores, for checkpoints."""
        if self._avg is None:
            return {}
        return {str(i): _to_dict(s) for i, s in enumerate(self._avg)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of ``state_dict``."""
        if not state:
            self._avg = None
            return
        self._avg = [_from_dict(state[str(i)], self.criterion) for i in range(len(state))]  # type: ignore[arg-type]


def _zeros_like(s: BlockScores) -> BlockScores:
    return BlockScores(**{k: torch.zeros_like(t) for k, t in s.tensors().items()})


def _to_dict(s: BlockScores) -> dict[str, Tensor]:
    return s.tensors()


def _from_dict(d: dict[str, Tensor], criterion: Criterion) -> BlockScores:
    return BlockScores(**{k: d[k] for k in _FIELDS})


def _lerp(old: BlockScores, new: BlockScores, decay: float) -> BlockScores:
    a, b = old.tensors(), new.tensors()
    return BlockScores(**{k: decay * a[k] + (1 - decay) * b[k] for k in _FIELDS})


def magnitude(model: ViT) -> list[BlockScores]:
    """Squared norms of every group's proxy weights (UVC's criterion and its sparsity measure)."""
    return _group_scores(model, Criterion.MAGNITUDE)
