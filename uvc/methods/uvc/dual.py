"""Primal-dual pieces of the UVC search: duals, their ascent, the proximal step, schedules, and the
final projection onto the budget.

UVC's Lagrangian is minimised over weights, counts and gates and maximised over duals::

    L = KD + sum_l y_l . LS_l(heads, mlp) + sum_l p_l . LS_l(qk, v) + z * (R / R_full - budget)

``LS`` is the share of a part's squared norm sitting in the groups currently pruned: the
constraint "pruned groups are zero" is ``LS == 0``. Since LS >= 0 and R - budget may have either
sign, every dual is an inequality multiplier and is clamped at 0 after each ascent step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from uvc.arch.keep import BlockKeep, KeepSet
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec
from uvc.arch.structmap import PROXY, Kind
from uvc.methods.common.importance import BlockScores, magnitude, map_of
from uvc.methods.common.resource import ResourceModel
from uvc.methods.common.structure import HardBlock, next_higher_width, next_lower_width, ranks

# --- duals ----------------------------------------------------------------------------------


@dataclass
class Duals:
    """Duals: ``z`` (budget), ``y`` (L, 2) for heads/MLP units, ``p`` (L, 2) for qk/v dims."""

    z: Tensor
    y: Tensor
    p: Tensor

    @classmethod
    def zeros(cls, depth: int) -> Duals:
        """All duals at 0 (no pressure yet)."""
        return cls(
            torch.zeros((), dtype=torch.float64), torch.zeros(depth, 2), torch.zeros(depth, 2)
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for checkpoints."""
        return {"z": self.z.clone(), "y": self.y.clone(), "p": self.p.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of ``state_dict``."""
        self.z, self.y, self.p = state["z"].clone(), state["y"].clone(), state["p"].clone()

    def per_part(self) -> Tensor:
        """(L, 4) duals in part order heads, qk, v, mlp."""
        return torch.stack([self.y[:, 0], self.p[:, 0], self.p[:, 1], self.y[:, 1]], dim=1)


def ascend_z(z: Tensor, r: float, budget: float, lr: float) -> Tensor:
    """``z <- max(0, z + lr * (R - budget))`` (R and budget as fractions of the full cost).

    Over budget (R > budget) z grows and the primal step pushes R down harder; under budget z
    shrinks, and the clamp stops it at 0 (an inequality multiplier is never negative: a negative z
    would *reward* spending). ``R - budget`` is deliberately not clipped: UVC's clip to +-0.5 made
    the ascent blind to how far from the target it is.
    """
    return torch.clamp(z + lr * (r - budget), min=0.0)


def ascend_groups(duals: Duals, pruned_share: Tensor, lr: float) -> None:
    """``y, p += lr * (norm share of pruned groups)``, clamped at 0; ``pruned_share`` is (L, 4).

    The constraint is "pruned groups are zero"; while they are not, their duals grow and the
    proximal step shrinks them harder (and the count's gradient sees the growing price).
    """
    s = pruned_share.to(duals.y)
    duals.y = torch.clamp(duals.y + lr * s[:, [0, 3]], min=0.0)
    duals.p = torch.clamp(duals.p + lr * s[:, [1, 2]], min=0.0)


def shrink_factor(lr: float, dual: float) -> float:
    """Proximal factor ``1 / (1 + 2 lr dual)``: the closed-form prox of ``dual * ||w||^2``."""
    return 1.0 / (1.0 + 2.0 * lr * dual)


@torch.no_grad()
def proximal_shrink_(model: ViT, keep: KeepSet, duals: Duals, lr: float) -> Tensor:
    """Shrink the proxy weights of every currently pruned group; return their norm shares.

    ``keep`` is the structure's keep-set *before* gates (a gated-off part is not a pruned group).
    Returns (L, 4): per block and part (heads, qk, v, mlp), the L2 norm of the pruned groups'
    proxy weights after the shrink, divided by the norm of the whole part. Which slices a group
    owns comes from ``uvc.arch.structmap``; a value dim of a pruned head is the head dual's
    business.
    """
    d = duals.per_part()
    smap = map_of(model)
    params = dict(model.named_parameters())
    out = torch.zeros(len(keep), 4)
    pruned = [_pruned_units(b, k) for b, k in zip(model.spec.blocks, keep, strict=True)]
    for i, units in enumerate(pruned):
        factor = {
            kind: _factor(smap.units(i, kind), idx, shrink_factor(lr, float(d[i, col])))
            for kind, (col, idx) in units.items()
        }
        for axis in smap.block_axes(i) if factor else []:
            suffix = axis.param.split(".", 2)[2]
            own = {kd: f for kd, f in factor.items() if suffix in PROXY[kd]}
            if own:
                w = params[axis.param]
                shape = [1] * w.dim()
                shape[axis.dim] = -1
                w.mul_(smap.position_factors(axis, own).to(w).view(shape))
    squares = magnitude(model)  # after the shrink: what is left in the pruned groups
    for i, units in enumerate(pruned):
        sq = squares[i]
        norms = {Kind.HEAD: sq.heads, Kind.QK: sq.qk_aligned, Kind.V_HEAD: sq.v.flatten()}
        norms[Kind.MLP] = sq.mlp
        for kind, (col, idx) in units.items():
            n = norms[kind].double()
            lost = n[list(idx)].sum() if len(idx) else n.new_zeros(())
            out[i, col] = (lost / n.sum().clamp_min(1e-30)).sqrt()
    return out


def _pruned_units(b: BlockSpec, k: BlockKeep) -> dict[Kind, tuple[int, list[int]]]:
    """Per kind: (column of the (L, 4) shares, pruned unit indices) of one block."""
    out: dict[Kind, tuple[int, list[int]]] = {}
    if b.has_attn and k.heads:
        out[Kind.HEAD] = (0, [h for h in range(b.heads) if h not in k.heads])
        out[Kind.QK] = (1, [j for j in range(b.qk_dim) if j not in k.qk])
        per = k.v_per_head or (k.v,) * len(k.heads)
        out[Kind.V_HEAD] = (
            2,
            [
                h * b.v_dim + j
                for h, dims in zip(k.heads, per, strict=True)
                for j in range(b.v_dim)
                if j not in dims
            ],
        )
    if b.has_mlp and k.mlp:
        out[Kind.MLP] = (3, [j for j in range(b.mlp_dim) if j not in k.mlp])
    return out


def _factor(n: int, pruned: list[int], f: float) -> Tensor:
    t = torch.ones(n)
    if pruned:
        t[pruned] = f
    return t


# --- final projection onto the budget -------------------------------------------------------


def hard_block_cost(res: ResourceModel, i: int, hb: HardBlock, sc: BlockScores) -> float:
    """Exact cost of block ``i`` under integer decisions ``hb``."""
    return _cost(res, hb, _kept_idx(sc.heads, hb.heads) if isinstance(hb.v, tuple) else [], i)


def _cost(res: ResourceModel, hb: HardBlock, kept_heads: list[int], i: int) -> float:
    v = hb.v
    if isinstance(v, tuple):
        v = max(v[j] for j in kept_heads) if kept_heads else 0
    h = hb.heads if hb.attn_on else 0
    m = hb.mlp if hb.mlp_on else 0
    return res.block_float(h, hb.qk if h else 0, v if h else 0, m, skip=not hb.block_on, i=i)


def _kept_idx(scores: Tensor, k: int) -> list[int]:
    r = ranks(scores)
    return [int(j) for j in torch.nonzero(r >= len(r) - k).flatten()]


class _Part:
    """A part's scores sorted ascending, with prefix sums: the share lost between two widths."""

    def __init__(self, scores: Tensor) -> None:
        s = torch.sort(scores.detach().double()).values.tolist()
        self.w, self.total = len(s), (sum(s) or 1.0)
        self.prefix = [0.0]
        for x in s:
            self.prefix.append(self.prefix[-1] + x)

    def share(self, k_from: int, k_to: int) -> float:
        lo, hi = sorted((self.w - k_from, self.w - k_to))
        return (self.prefix[hi] - self.prefix[lo]) / self.total


class _Prepared:
    """Per-block sorted scores and head order, computed once per projection."""

    def __init__(self, sc: BlockScores) -> None:
        self.heads, self.qk, self.v = _Part(sc.heads), _Part(sc.qk_aligned), _Part(sc.v_aligned)
        self.mlp = _Part(sc.mlp)
        self.v_head = [_Part(row) for row in sc.v] if sc.v.numel() else []
        self.head_order = torch.argsort(sc.heads.detach(), stable=True).tolist()

    def kept_heads(self, k: int) -> list[int]:
        return sorted(self.head_order[len(self.head_order) - k :]) if k else []


def _moves(
    hb: HardBlock, pr: _Prepared, widths: tuple[int, int, int, int], align: int, up: bool
) -> list[tuple[HardBlock, float]]:
    """One-step changes of a block (prune one more / restore one group) with their score share."""
    H, Q, V, M = widths
    step = next_higher_width if up else next_lower_width
    out: list[tuple[HardBlock, float]] = []
    if H and hb.attn_on:
        if (hn := step(hb.heads, H, 1)) is not None:
            out.append((_with(hb, heads=hn), pr.heads.share(hb.heads, hn)))
        if (qn := step(hb.qk, Q, align)) is not None:
            out.append((_with(hb, qk=qn), pr.qk.share(hb.qk, qn)))
        if isinstance(hb.v, tuple):
            if not up:  # lower the heads at the padded width; restoring is left to heads/qk/mlp
                kept = pr.kept_heads(hb.heads)
                top = max(hb.v[j] for j in kept)
                new, share = list(hb.v), 0.0
                for j in kept:
                    if hb.v[j] == top:
                        nv = step(top, V, align)
                        if nv is None:
                            break
                        new[j], share = nv, share + pr.v_head[j].share(top, nv)
                else:
                    out.append((_with(hb, v=tuple(new)), share))
        elif (vn := step(hb.v, V, align)) is not None:
            out.append((_with(hb, v=vn), pr.v.share(hb.v, vn)))
    if M and hb.mlp_on and (mn := step(hb.mlp, M, align)) is not None:
        out.append((_with(hb, mlp=mn), pr.mlp.share(hb.mlp, mn)))
    return out


def _with(hb: HardBlock, **kw: object) -> HardBlock:
    return HardBlock(**{**hb.__dict__, **kw})  # type: ignore[arg-type]


def project_to_budget(
    hard: list[HardBlock],
    scores: list[BlockScores],
    res: ResourceModel,
    budget: float,
    align: int = 1,
    tol: float = 0.01,
) -> list[HardBlock]:
    """Deterministically bring the hard decisions to within ``[budget*(1-tol), budget]`` of R_full.

    Over budget: repeatedly prune the group with the least score share per unit of cost saved
    (cost-per-unit aware), preferring moves that do not overshoot below ``budget*(1-tol)``.
    Under ``budget*(1-tol)``: restore the groups with the most score per unit of cost, those that
    fit first; when only coarse ones are left (a whole head), restore one anyway and prune back
    down with finer moves. Gate decisions are never changed.
    """
    hard = list(hard)
    widths = [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in res.spec.blocks]
    target, floor = budget * res.full, budget * (1 - tol) * res.full
    prep = [_Prepared(sc) for sc in scores]

    def cost(i: int, hb: HardBlock) -> float:
        return _cost(res, hb, prep[i].kept_heads(hb.heads) if isinstance(hb.v, tuple) else [], i)

    costs = [cost(i, hb) for i, hb in enumerate(hard)]
    state = {"r": res.fixed + sum(costs)}

    def moves(up: bool) -> list[tuple[int, HardBlock, float, float]]:
        return [
            (i, nb, share, cost(i, nb) - costs[i])
            for i in range(len(hard))
            for nb, share in _moves(hard[i], prep[i], widths[i], align, up)
        ]

    def apply(i: int, nb: HardBlock, dc: float) -> None:
        hard[i], costs[i] = nb, costs[i] + dc
        state["r"] += dc

    def down() -> None:
        while state["r"] > target:
            flat = [f for f in moves(False) if f[3] < 0]
            if not flat:
                return  # nothing left to prune: the budget is below the smallest model
            fits = [f for f in flat if state["r"] + f[3] >= floor]
            if fits:
                i, nb, _, dc = min(fits, key=lambda f: f[2] / -f[3])
            else:  # every move overshoots: take the smallest step
                i, nb, _, dc = max(flat, key=lambda f: f[3])
            apply(i, nb, dc)

    down()
    for _ in range(4):  # restore, then trim what a coarse restore overshot; rarely needs two
        if state["r"] >= floor:
            break
        while state["r"] < floor:
            flat = [f for f in moves(True) if f[3] > 0]
            if not flat:
                break
            fits = [f for f in flat if state["r"] + f[3] <= target]
            i, nb, _, dc = max(fits or flat, key=lambda f: f[2] / f[3])
            apply(i, nb, dc)
        down()
    return hard
