"""Learnable structure: continuous prune counts per block -> soft masks now, a keep-set at the end.

Per block (UVC's ``s[l,0]``, ``s[l,1]``, ``r[l,h]``): how many heads, query/key dims, value dims
(shared by all heads, or per head with ``per_head_v``) and MLP units to prune. Each count is stored
as a *fraction of its width* in ``[0, (W-1)/W]``: the same SGD step (lr 0.02, gradient norm clipped
to 1) then moves a 3-head count and a 768-unit count at comparable speed, where raw counts would
leave wide MLPs nearly frozen. ``count = ceil(frac * W)`` with a straight-through ceil, so at least
one unit always survives, and ``align`` rounds the kept width up to a multiple of N.

Which groups are pruned is decided by an importance criterion (``uvc.methods.common.importance``):
the ``count``
lowest-scoring groups. The result at any step is a ``uvc.arch.keep.KeepSet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uvc.arch.keep import BlockKeep, KeepSet
from uvc.arch.spec import ViTSpec
from uvc.arch.structmap import Kind, StructureMap
from uvc.methods.common.importance import BlockScores


def ste_ceil(x: Tensor) -> Tensor:
    """``ceil(x)`` in the forward, identity gradient in the backward (straight-through)."""
    return x + (torch.ceil(x) - x).detach()


def aligned_width(kept: int, width: int, align: int) -> int:
    """Round a kept width up to a multiple of ``align``, within ``[min(align, width), width]``."""
    if align <= 1:
        return max(1, min(kept, width))
    up = -(-max(kept, 1) // align) * align
    return max(min(align, width), min(up, width))


def next_lower_width(kept: int, width: int, align: int) -> int | None:
    """The largest aligned width below ``kept`` (None when ``kept`` is already the minimum)."""
    cand = ((kept - 1) // align) * align if align > 1 else kept - 1
    return cand if cand >= min(align, width) and cand >= 1 else None


def next_higher_width(kept: int, width: int, align: int) -> int | None:
    """The smallest aligned width above ``kept`` (None at the full width)."""
    if kept >= width:
        return None
    return min(width, (kept // align + 1) * align if align > 1 else kept + 1)


def kept_count(frac: Tensor, width: int, align: int) -> Tensor:
    """Kept width as a tensor: aligned integer value in the forward, ``-width`` gradient per frac.

    ``pruned = ceil(frac * width)`` (straight-through), capped at ``width - 1`` so one unit always
    survives; the kept width ``width - pruned`` is then rounded up to the alignment, again
    straight-through, so the count keeps its gradient.
    """
    raw = frac * width
    # Straight-through for the cap too: a clamp would zero the count's gradient at the top.
    pruned = raw + (torch.clamp(torch.ceil(raw), max=width - 1) - raw).detach()
    kept = width - pruned
    target = aligned_width(round(float(kept.detach())), width, align)
    return kept + (target - kept).detach()


def ranks(scores: Tensor) -> Tensor:
    """Position of every group in ascending score order (0 = pruned first); ties by index."""
    order = torch.argsort(scores.detach(), stable=True)
    r = torch.empty_like(order)
    r[order] = torch.arange(len(order), device=order.device)
    return r


def st_mask(scores: Tensor, pruned: Tensor, temperature: float) -> Tensor:
    """Keep-mask of groups: 0 for the ``pruned`` lowest scores, 1 for the rest, differentiable.

    Forward: the hard 0/1 mask. Backward: the gradient of the smooth surrogate
    ``sigmoid((rank + 0.5 - pruned) / T)``, which is 1/2 exactly at the boundary between the last
    pruned and the first kept group. Raising the count therefore lowers the masks of the groups
    next in line, and ``dL/dcount`` measures what removing them would cost the loss — the gradient
    path from the task loss to the integer count that a plain ceil would cut.
    """
    r = ranks(scores).to(pruned.dtype if pruned.is_floating_point() else torch.float32)
    hard = (r >= torch.round(pruned.detach())).to(r.dtype)
    soft = torch.sigmoid((r + 0.5 - pruned) / temperature)
    return hard + (soft - soft.detach())


@dataclass
class SoftBlock:
    """One block's current soft state.

    Args:
        heads/qk/v/mlp: kept widths (integer-valued tensors with count gradients; ``v`` is the
            materialized width, the largest kept count over kept heads when counts are per head).
        qk_mask: (H, qk) mask of q and k; v_mask: (H, v) mask of the heads' outputs; mlp_mask.
        lost: (4,) fraction of each part's squared norm that is pruned (heads, qk, v, mlp), the
            ``LS`` terms of UVC's Lagrangian (scores detached: the proximal step handles weights).
    """

    heads: Tensor
    qk: Tensor
    v: Tensor
    mlp: Tensor
    qk_mask: Tensor | None
    v_mask: Tensor | None
    mlp_mask: Tensor | None
    lost: Tensor


@dataclass(frozen=True)
class HardBlock:
    """One block's decisions as integers: kept widths and whether each part survives.

    ``v`` is an int (aligned) or a tuple of per-head kept counts (one per *original* head).
    """

    heads: int
    qk: int
    v: int | tuple[int, ...]
    mlp: int
    attn_on: bool = True
    mlp_on: bool = True
    block_on: bool = True  # False: the whole-block gate skips it (post-norm: its norms go too)


class Structure(nn.Module):
    """Learnable prune fractions for every block of ``spec``.

    Args:
        spec: the uncompressed architecture.
        per_head_v: UVC's per-head value counts (materialized with zero padding) instead of one
            aligned count per block.
        align: kept qk/v/mlp widths are multiples of this (1: any width).
        temperature: width, in groups, of the mask surrogate's sigmoid.
    """

    def __init__(
        self, spec: ViTSpec, per_head_v: bool = False, align: int = 1, temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.spec, self.per_head_v, self.align, self.temperature = (
            spec,
            per_head_v,
            align,
            temperature,
        )
        self.map = StructureMap(spec)
        n = spec.depth
        h_max = max(b.heads for b in spec.blocks)
        self.heads = nn.Parameter(torch.zeros(n))
        self.qk = nn.Parameter(torch.zeros(n))
        self.v = nn.Parameter(torch.zeros(n, h_max) if per_head_v else torch.zeros(n))
        self.mlp = nn.Parameter(torch.zeros(n))

    def widths(self, i: int) -> tuple[int, int, int, int]:
        """Original (heads, qk, v, mlp) widths of block ``i``."""
        b = self.spec.blocks[i]
        return b.heads, b.qk_dim, b.v_dim, b.mlp_dim

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every fraction into ``[0, (W-1)/W]`` (the projection of projected SGD)."""
        for i in range(self.spec.depth):
            h, q, v, m = self.widths(i)
            for p, w in ((self.heads, h), (self.qk, q), (self.v, v), (self.mlp, m)):
                p[i].clamp_(0.0, (w - 1) / w if w else 0.0)

    def forward(self, scores: list[BlockScores], norms: list[BlockScores]) -> list[SoftBlock]:
        """Soft state of every block: masks chosen by ``scores``, lost norm read from ``norms``."""
        return [self._block(i, scores[i], norms[i]) for i in range(self.spec.depth)]

    def _block(self, i: int, sc: BlockScores, nm: BlockScores) -> SoftBlock:
        h, q, v, m = self.widths(i)
        dev = self.heads.device
        zero = torch.zeros((), device=dev)
        lost = [zero, zero, zero, zero]
        kh = kq = kv = km = zero
        qk_mask = v_mask = mlp_mask = None
        if h:
            kh = kept_count(self.heads[i], h, 1)
            head_m = st_mask(sc.heads.to(dev), h - kh, self.temperature)
            kq = kept_count(self.qk[i], q, self.align)
            qk_m = st_mask(sc.qk_aligned.to(dev), q - kq, self.temperature)
            if self.per_head_v:
                kv_h = torch.stack([kept_count(self.v[i, j], v, self.align) for j in range(h)])
                v_rows = [st_mask(sc.v[j].to(dev), v - kv_h[j], self.temperature) for j in range(h)]
                v_m = torch.stack(v_rows)
                # Materialization pads every kept head to the largest kept count.
                kept_heads = head_m.detach() > 0.5
                kv = kv_h.masked_fill(~kept_heads, float("-inf")).max()
                lost[2] = _lost(nm.v.to(dev), v_m)
            else:
                kv = kept_count(self.v[i], v, self.align)
                v_m = st_mask(sc.v_aligned.to(dev), v - kv, self.temperature)
                lost[2] = _lost(nm.v_aligned.to(dev), v_m)
            v_kind = Kind.V_HEAD if v_m.dim() == 2 else Kind.V
            units = {Kind.HEAD: head_m, Kind.QK: qk_m, v_kind: v_m.reshape(-1)}
            qk_mask, v_mask, _ = self.map.block_masks(i, units)
            lost[0] = _lost(nm.heads.to(dev), head_m)
            lost[1] = _lost(nm.qk_aligned.to(dev), qk_m)
        if m:
            km = kept_count(self.mlp[i], m, self.align)
            unit_m = st_mask(sc.mlp.to(dev), m - km, self.temperature)
            lost[3] = _lost(nm.mlp.to(dev), unit_m)
            mlp_mask = self.map.block_masks(i, {Kind.MLP: unit_m})[2]
        return SoftBlock(kh, kq, kv, km, qk_mask, v_mask, mlp_mask, torch.stack(lost))

    @torch.no_grad()
    def hard(self) -> list[HardBlock]:
        """Integer kept widths of the current fractions (gates not applied)."""
        out = []
        for i in range(self.spec.depth):
            h, q, v, m = self.widths(i)
            if self.per_head_v:
                vk: int | tuple[int, ...] = tuple(
                    int(kept_count(self.v[i, j], v, self.align)) for j in range(h)
                )
            else:
                vk = int(kept_count(self.v[i], v, self.align)) if h else 0
            out.append(
                HardBlock(
                    int(kept_count(self.heads[i], h, 1)) if h else 0,
                    int(kept_count(self.qk[i], q, self.align)) if h else 0,
                    vk,
                    int(kept_count(self.mlp[i], m, self.align)) if m else 0,
                )
            )
        return out

    @torch.no_grad()
    def set_hard_(self, hard: list[HardBlock]) -> None:
        """Set the fractions so that ``hard()`` returns ``hard``'s widths (after a projection)."""
        for i, hb in enumerate(hard):
            h, q, v, m = self.widths(i)
            for p, w, k in ((self.heads, h, hb.heads), (self.qk, q, hb.qk), (self.mlp, m, hb.mlp)):
                if w:
                    p[i] = (w - k) / w
            if h and isinstance(hb.v, tuple):
                self.v[i, :h] = torch.tensor([(v - k) / v for k in hb.v])
            elif h:
                self.v[i] = (v - int(hb.v)) / v


def _lost(norms: Tensor, mask: Tensor) -> Tensor:
    """Fraction of a part's squared norm sitting in pruned groups (scores detached)."""
    n = norms.detach().to(mask.dtype)
    return (n * (1 - mask)).sum() / n.sum().clamp_min(1e-12)


def keep_from_hard(spec: ViTSpec, scores: list[BlockScores], hard: list[HardBlock]) -> KeepSet:
    """The keep-set of integer decisions: the highest-scoring groups of each kept width."""
    out = []
    for b, sc, hb in zip(spec.blocks, scores, hard, strict=True):
        if not hb.block_on and spec.post_norm:
            out.append(BlockKeep((), (), (), (), skip=True))
            continue
        mlp = _top(sc.mlp, hb.mlp) if (b.mlp_dim and hb.mlp_on) else ()
        if not (b.heads and hb.attn_on):
            out.append(BlockKeep((), (), (), mlp))
            continue
        heads = _top(sc.heads, hb.heads)
        qk = _top(sc.qk_aligned, hb.qk)
        if isinstance(hb.v, tuple):
            per = tuple(_top(sc.v[h], hb.v[h]) for h in heads)
            out.append(BlockKeep(heads, qk, per[0], mlp, v_per_head=per))
        else:
            out.append(BlockKeep(heads, qk, _top(sc.v_aligned, hb.v), mlp))
    return KeepSet(out)


def _top(scores: Tensor, k: int) -> tuple[int, ...]:
    """Indices of the ``k`` groups that survive, sorted (consistent with ``st_mask``'s ranks)."""
    r = ranks(scores)
    return tuple(int(i) for i in torch.nonzero(r >= len(r) - k).flatten().tolist())
