"""The structural map: every prunable unit of a spec and the tensor slices it owns, in one place.

Pruning is a few facts used in many places (importance, the proximal step, soft and hard masks,
materialization, NViT's saliency). They all read this map; none keeps index arithmetic of its own.

The map is built from *spaces*: one axis of positions that several tensors share.

- per block ``i``: ``i.qk`` (heads x qk_dim positions: the q rows of ``attn.qkv``, again its k rows,
  and the query/key mask), ``i.v`` (heads x v_dim: the v rows of ``attn.qkv``, the input columns of
  ``attn.proj`` and the value mask), ``i.mlp`` (hidden units: ``fc1`` rows, ``fc2`` columns, the
  MLP mask);
- model-wide: ``embed`` (the residual-stream channels: patch embedding, tokens, position embedding,
  every norm, qkv/fc1 input columns, proj/fc2 output rows, the head's input columns).

A unit *kind* (head, qk dim, v dim, MLP unit, embedding channel, ...) owns positions in some
spaces: ``owners(kind)`` gives, per position, the unit that owns it (-1: none). A position survives
iff every unit owning it survives; a soft mask of a position is the product of its owners' masks.
That one rule gives hard masks, soft masks and the slices materialization keeps. A parameter axis
is a concatenation of spaces (``qkv`` rows = qk, qk, v), so reading a unit's slices of a tensor is a
gather along that axis. Adding a unit kind means adding its owner tensors here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from uvc.arch.spec import BlockSpec, ViTSpec


class Kind(str, Enum):
    """A kind of prunable unit."""

    HEAD = "head"  # one attention head (all its q, k, v rows and proj columns)
    QK = "qk"  # one query/key dim, removed from every head of its block (head alignment)
    V = "v"  # one value dim, removed from every head of its block
    QK_HEAD = "qk_head"  # one query/key dim of one head (UVC's per-head counts)
    V_HEAD = "v_head"  # one value dim of one head
    MLP = "mlp"  # one MLP hidden unit
    ATTN = "attn"  # the whole attention branch of a block (one unit)
    MLP_PART = "mlp_part"  # the whole MLP branch of a block (one unit)
    BLOCK = "block"  # the whole block (one unit)
    EMBED = "embed"  # one residual-stream channel, across the whole model


BLOCK_KINDS = (Kind.HEAD, Kind.QK, Kind.V, Kind.QK_HEAD, Kind.V_HEAD, Kind.MLP)
PART_KINDS = (Kind.ATTN, Kind.MLP_PART, Kind.BLOCK)

# Whole parts own whole tensors: the parameters of block ``i`` whose names start with these.
PART_PARAMS: dict[Kind, tuple[str, ...]] = {
    Kind.ATTN: ("norm1.", "attn.", "ls1."),
    Kind.MLP_PART: ("norm2.", "mlp.", "ls2."),
    Kind.BLOCK: ("norm1.", "attn.", "ls1.", "norm2.", "mlp.", "ls2."),
}

# UVC prunes through proxy weights (UVC, ICLR 2022): a head and a value dim through their proj input
# columns, a query/key dim through its q and k rows of qkv, an MLP unit through its fc2 column.
PROXY: dict[Kind, tuple[str, ...]] = {
    Kind.HEAD: ("attn.proj.weight",),
    Kind.QK: ("attn.qkv.weight",),
    Kind.V: ("attn.proj.weight",),
    Kind.QK_HEAD: ("attn.qkv.weight",),
    Kind.V_HEAD: ("attn.proj.weight",),
    Kind.MLP: ("mlp.fc2.weight",),
}


@dataclass(frozen=True)
class Space:
    """Positions shared by several tensors' axes.

    Args:
        name: ``"{block}.qk"``, ``"{block}.v"``, ``"{block}.mlp"`` or ``"embed"``.
        size: number of positions.
        heads: positions are head-major groups of ``size // heads`` (0: not head-structured).
        owners: per kind, the unit owning each position (-1: not owned by that kind).
    """

    name: str
    size: int
    heads: int
    owners: dict[Kind, Tensor]

    def mask(self, unit_masks: dict[Kind, Tensor]) -> Tensor:
        """Per-position mask: the product of the owning units' masks (1 where a kind owns none).

        Soft masks give a differentiable product; 0/1 masks give the hard keep rule.
        """
        out: Tensor | None = None
        for kind, owner in self.owners.items():
            m = unit_masks.get(kind)
            if m is None:
                continue
            ext = torch.cat([m.reshape(-1), m.new_ones(1)])  # index -1 -> the trailing 1
            g = ext[owner.to(m.device)]
            out = g if out is None else out * g
        if out is None:
            return torch.ones(self.size)
        return out

    def layout(self, keep: dict[Kind, Sequence[int]]) -> Tensor:
        """Source positions of the materialized space, in order; -1 marks a zero-filled position.

        A position is kept iff every owning unit is kept. In a head-structured space every kept
        head is padded to the widest kept head (UVC's per-head value counts): the padding holds
        zeros, so the dense model computes exactly what the masked one does.
        """
        ind = {k: _indicator(self.units(k), v) for k, v in keep.items() if k in self.owners}
        kept = self.mask(ind) > 0.5
        if not self.heads:
            return torch.nonzero(kept).flatten()
        per = kept.view(self.heads, -1)
        rows = [torch.nonzero(r).flatten() + h * per.shape[1] for h, r in enumerate(per) if r.any()]
        width = max((len(r) for r in rows), default=0)
        pad = [torch.cat([r, r.new_full((width - len(r),), -1)]) for r in rows]
        return torch.cat(pad) if pad else torch.zeros(0, dtype=torch.long)

    def units(self, kind: Kind) -> int:
        """Number of units of ``kind`` in this space."""
        owner = self.owners[kind]
        return int(owner.max()) + 1 if owner.numel() else 0


@dataclass(frozen=True)
class Axis:
    """One axis of one parameter: a concatenation of spaces (``qkv`` rows are qk, qk, v)."""

    param: str
    dim: int
    spaces: tuple[str, ...]


def _indicator(n: int, idx: Sequence[int]) -> Tensor:
    t = torch.zeros(n)
    if len(idx):
        t[torch.as_tensor(list(idx), dtype=torch.long)] = 1.0
    return t


def _head_space(name: str, heads: int, dim: int, kinds: tuple[Kind, Kind, Kind]) -> Space:
    """A (heads x dim) space owned by heads, aligned dims and per-head dims."""
    h = torch.arange(heads).repeat_interleave(dim)
    j = torch.arange(dim).repeat(heads)
    head_kind, aligned, per_head = kinds
    owners = {head_kind: h, aligned: j, per_head: h * dim + j}
    owners[Kind.ATTN] = torch.zeros(heads * dim, dtype=torch.long)
    owners[Kind.BLOCK] = torch.zeros(heads * dim, dtype=torch.long)
    return Space(name, heads * dim, heads, owners)


class StructureMap:
    """The map of one spec (see module docstring). Cheap to build; owner tensors live on the CPU."""

    def __init__(self, spec: ViTSpec) -> None:
        self.spec = spec
        self.spaces: dict[str, Space] = {}
        self.axes: dict[str, list[Axis]] = {}
        self._by_block: dict[int, list[Axis]] = {}
        for i, b in enumerate(spec.blocks):
            self._add_block(i, b)
        d = spec.embed_dim
        self.spaces["embed"] = Space("embed", d, 0, {Kind.EMBED: torch.arange(d)})

    def _add_block(self, i: int, b: BlockSpec) -> None:
        pre = f"blocks.{i}."
        if b.has_attn:
            qk = _head_space(f"{i}.qk", b.heads, b.qk_dim, (Kind.HEAD, Kind.QK, Kind.QK_HEAD))
            v = _head_space(f"{i}.v", b.heads, b.v_dim, (Kind.HEAD, Kind.V, Kind.V_HEAD))
            self.spaces[qk.name], self.spaces[v.name] = qk, v
            rows = (qk.name, qk.name, v.name)
            self._axis(Axis(pre + "attn.qkv.weight", 0, rows))
            self._axis(Axis(pre + "attn.qkv.bias", 0, rows))
            self._axis(Axis(pre + "attn.proj.weight", 1, (v.name,)))
        if b.has_mlp:
            zeros = torch.zeros(b.mlp_dim, dtype=torch.long)
            owners = {Kind.MLP: torch.arange(b.mlp_dim), Kind.MLP_PART: zeros, Kind.BLOCK: zeros}
            mlp = Space(f"{i}.mlp", b.mlp_dim, 0, owners)
            self.spaces[mlp.name] = mlp
            self._axis(Axis(pre + "mlp.fc1.weight", 0, (mlp.name,)))
            self._axis(Axis(pre + "mlp.fc1.bias", 0, (mlp.name,)))
            self._axis(Axis(pre + "mlp.fc2.weight", 1, (mlp.name,)))

    def _axis(self, axis: Axis) -> None:
        self.axes.setdefault(axis.param, []).append(axis)
        self._by_block.setdefault(int(axis.param.split(".")[1]), []).append(axis)

    # --- embedding channels: every residual-stream tensor, recognised by name and shape -------

    def embed_axes(self, state: dict[str, Tensor]) -> list[Axis]:
        """Axes of ``state`` (a model's state dict) that run over the embedding channels."""
        d, out = self.spec.embed_dim, []
        for name, t in state.items():
            for dim in _embed_dims(name, t, d):
                out.append(Axis(name, dim, ("embed",)))
        return out

    def reduce_embed(
        self, state: dict[str, Tensor], per_param: Callable[[str, int], Tensor | None]
    ) -> Tensor:
        """Sum a per-position quantity onto the embedding channels, over every tensor of
        ``state`` (a state dict, for names and shapes) that runs over them (``embed_axes``).

        ``per_param`` is as for ``reduce``.
        """
        out = torch.zeros(self.spec.embed_dim)
        for axis in self.embed_axes(state):
            vals = per_param(axis.param, axis.dim)
            if vals is not None:
                out = out.to(vals.device, vals.dtype) + vals.detach()
        return out

    # --- queries -------------------------------------------------------------------------------

    def space(self, block: int, part: str) -> Space | None:
        """Block ``block``'s ``qk``, ``v`` or ``mlp`` space (None where the part is absent)."""
        return self.spaces.get(f"{block}.{part}")

    def block_masks(
        self, block: int, unit_masks: dict[Kind, Tensor]
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(qk (H, qk_dim), v (H, v_dim), mlp (m,)) activation masks of one block."""
        out: list[Tensor | None] = []
        for part in ("qk", "v", "mlp"):
            sp = self.space(block, part)
            if sp is None:
                out.append(None)
                continue
            m = sp.mask(unit_masks)
            out.append(m.view(sp.heads, -1) if sp.heads else m)
        return out[0], out[1], out[2]

    def reduce(
        self, block: int, kind: Kind, per_param: Callable[[str, int], Tensor | None], proxy: bool
    ) -> Tensor:
        """Sum a per-position quantity onto the units of ``kind`` in block ``block``.

        ``per_param(name, dim)`` returns a parameter's per-position values along ``dim`` (already
        summed over its other axes), or None to skip it. With ``proxy`` only UVC's proxy weights of
        ``kind`` contribute, otherwise every tensor the unit owns.
        """
        out: Tensor | None = None
        pre = f"blocks.{block}."
        for axis in self._by_block.get(block, []):
            if proxy and axis.param[len(pre) :] not in PROXY[kind]:
                continue
            owner = self.owner(axis, kind)
            if owner is None or not (owner >= 0).any():
                continue
            vals = per_param(axis.param, axis.dim)
            if vals is None:
                continue
            vals = vals.detach()
            if out is None:
                out = torch.zeros(self.units(block, kind), dtype=vals.dtype, device=vals.device)
            sel = (owner >= 0).to(vals.device)
            out.index_add_(0, owner.to(vals.device)[sel], vals[sel])
        return out if out is not None else torch.zeros(self.units(block, kind))

    def units(self, block: int, kind: Kind) -> int:
        """How many units of ``kind`` block ``block`` has."""
        for sp in self._block_spaces(block):
            if kind in sp.owners:
                return sp.units(kind)
        return 0

    def position_factors(self, axis: Axis, factors: dict[Kind, Tensor]) -> Tensor:
        """Per-position multiplier along ``axis``: the product of the owning units' factors."""
        parts = [self.spaces[s].mask(factors) for s in axis.spaces]
        return torch.cat(parts)

    def owner(self, axis: Axis, kind: Kind) -> Tensor | None:
        """The unit of ``kind`` owning each position of ``axis`` (-1: none); None if no position."""
        parts, found = [], False
        for s in axis.spaces:
            sp = self.spaces[s]
            o = sp.owners.get(kind)
            found |= o is not None
            parts.append(o if o is not None else torch.full((sp.size,), -1, dtype=torch.long))
        return torch.cat(parts) if found else None

    def _block_spaces(self, block: int) -> list[Space]:
        return [sp for p in ("qk", "v", "mlp") if (sp := self.space(block, p)) is not None]

    def layout(self, axis: Axis, keep: dict[str, dict[Kind, Sequence[int]]]) -> Tensor:
        """Source positions of ``axis`` in the materialized tensor (-1: zero fill)."""
        index, offset = [], 0
        for s in axis.spaces:
            sp = self.spaces[s]
            lay = sp.layout(keep.get(s, {}))
            index.append(torch.where(lay >= 0, lay + offset, lay))
            offset += sp.size
        return torch.cat(index)

    def part_params(self, block: int, kind: Kind, names: Sequence[str]) -> list[str]:
        """Of ``names`` (parameter names), those the whole part ``kind`` of ``block`` owns."""
        pre = f"blocks.{block}."
        owned = PART_PARAMS[kind]
        if self.spec.post_norm and kind is not Kind.BLOCK:  # a removed branch leaves its norm
            owned = tuple(p for p in owned if not p.startswith("norm"))
        return [n for n in names if n.startswith(pre) and n[len(pre) :].startswith(owned)]

    def block_axes(self, block: int) -> list[Axis]:
        """The block-structured axes of block ``block``'s parameters."""
        return list(self._by_block.get(block, []))


def _embed_dims(name: str, t: Tensor, d: int) -> list[int]:
    """The axes of parameter ``name`` that run over the ``d`` embedding channels."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("attn.qkv.weight", "mlp.fc1.weight")) or name in (
        "head.weight",
        "head_dist.weight",
    ):
        return [1]  # input columns
    if name.endswith(("attn.proj.weight", "mlp.fc2.weight", "patch_embed.proj.weight")):
        return [0]  # output rows
    if (
        t.dim() >= 1
        and t.shape[-1] == d
        and (
            leaf in ("cls_token", "dist_token", "reg_token", "pos_embed")
            or name.endswith(("proj.bias", "fc2.bias", "gamma"))
            or ".norm" in f".{name}"
            or name.startswith(("norm.", "fc_norm."))
        )
    ):
        return [t.dim() - 1]
    return []


def gather(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """``t`` indexed along ``dim`` by ``index``; positions marked -1 are zeros."""
    idx = index.to(t.device)
    safe = idx.clamp_min(0)
    out = t.index_select(dim, safe)
    if (idx < 0).any():
        shape = [1] * t.dim()
        shape[dim] = len(idx)
        out = out * (idx >= 0).to(t.dtype).view(shape)
    return out
