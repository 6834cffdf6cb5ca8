"""Keep-sets: which heads, dims, MLP units and sub-layers of each block survive pruning.

A keep-set is what the trainer produces and what ``uvc.export.materialize`` consumes. The masked
forward (``masked``) applies one to the full model the way training does — by zeroing activations —
so "dense output == masked output" is a test of the exporter, not a hope.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.arch.structmap import Kind, StructureMap
from uvc.errors import SpecError


@dataclass(frozen=True)
class BlockKeep:
    """What survives in one block. Indices refer to the *original* block's widths.

    Args:
        heads: kept head indices, sorted; empty removes the attention.
        qk: kept query/key dims, shared by every kept head (head alignment).
        v: kept value dims, shared by every kept head.
        mlp: kept MLP hidden units, sorted; empty removes the MLP.
        v_per_head: UVC's per-head value dims, one tuple per kept head (overrides ``v``).
            Materialization pads each head to the largest count with zero weights.
        skip: the whole block is skipped (the identity): keeps nothing, and a post-norm block
            loses its norms too (removing both branches alone leaves ``x <- LN(LN(x))``).
    """

    heads: tuple[int, ...]
    qk: tuple[int, ...]
    v: tuple[int, ...]
    mlp: tuple[int, ...]
    v_per_head: tuple[tuple[int, ...], ...] | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        for name in ("heads", "qk", "v", "mlp"):
            seq = tuple(int(i) for i in getattr(self, name))
            if list(seq) != sorted(set(seq)):
                raise SpecError(f"keep-set {name} must be sorted unique indices, got {seq}")
            object.__setattr__(self, name, seq)
        if self.v_per_head is not None:
            per = tuple(tuple(sorted(set(int(i) for i in h))) for h in self.v_per_head)
            if len(per) != len(self.heads):
                raise SpecError("v_per_head needs one entry per kept head")
            if any(not h for h in per):
                raise SpecError("every kept head must keep at least one value dim")
            object.__setattr__(self, "v_per_head", per)
        if self.heads and (not self.qk or not (self.v or self.v_per_head)):
            raise SpecError("a block that keeps heads must keep at least one qk and one v dim")
        if self.skip and (self.heads or self.mlp):
            raise SpecError("a skipped block keeps no heads and no MLP units")

    @property
    def has_attn(self) -> bool:
        """Whether any head survives."""
        return bool(self.heads)

    @property
    def has_mlp(self) -> bool:
        """Whether any MLP unit survives."""
        return bool(self.mlp)

    @property
    def v_width(self) -> int:
        """Value dims per head after materialization (the padded width for per-head counts)."""
        if self.v_per_head is not None:
            return max(len(h) for h in self.v_per_head)
        return len(self.v)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON and checkpoints."""
        out: dict[str, Any] = {k: list(getattr(self, k)) for k in ("heads", "qk", "v", "mlp")}
        if self.v_per_head is not None:
            out["v_per_head"] = [list(h) for h in self.v_per_head]
        if self.skip:
            out["skip"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockKeep:
        """Inverse of ``to_dict``."""
        per = data.get("v_per_head")
        return cls(
            tuple(data["heads"]),
            tuple(data["qk"]),
            tuple(data["v"]),
            tuple(data["mlp"]),
            None if per is None else tuple(tuple(h) for h in per),
            bool(data.get("skip", False)),
        )


class KeepSet(tuple):
    """A keep-set: one ``BlockKeep`` per block, plus the model-wide part.

    A tuple of ``BlockKeep`` (code that walks blocks needs nothing else); ``embed`` holds the kept
    residual-stream channels (NViT's embedding-width pruning), None for "all of them". Plain tuples
    of ``BlockKeep`` are accepted everywhere a ``KeepSet`` is, with ``embed`` None.
    """

    embed: tuple[int, ...] | None

    def __new__(cls, blocks: Sequence[BlockKeep], embed: Sequence[int] | None = None) -> KeepSet:
        obj = super().__new__(cls, tuple(blocks))
        if embed is not None:
            embed = tuple(int(i) for i in embed)
            if not embed or list(embed) != sorted(set(embed)):
                raise SpecError("keep-set embed must be non-empty sorted unique channel indices")
        obj.embed = embed
        return obj

    def __eq__(self, other: object) -> bool:
        return tuple.__eq__(self, other) and embed_of(self) == embed_of(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash((tuple(self), self.embed))

    def to_json(self) -> list[dict[str, Any]] | dict[str, Any]:
        """``keep.json`` data: a list of blocks, or ``{"blocks", "embed"}`` with an embed part."""
        blocks = [k.to_dict() for k in self]
        return blocks if self.embed is None else {"blocks": blocks, "embed": list(self.embed)}

    @classmethod
    def from_json(cls, data: Any) -> KeepSet:
        """Inverse of ``to_json`` (both layouts)."""
        try:
            if isinstance(data, dict):
                return cls([BlockKeep.from_dict(b) for b in data["blocks"]], data.get("embed"))
            return cls([BlockKeep.from_dict(b) for b in data])
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed keep-set: {exc!r}") from None


def embed_of(keep: Sequence[BlockKeep]) -> tuple[int, ...] | None:
    """The kept embedding channels of ``keep`` (None: all of them)."""
    return getattr(keep, "embed", None)


def full_keep(spec: ViTSpec) -> KeepSet:
    """The keep-set that keeps everything."""
    return KeepSet(
        BlockKeep(
            tuple(range(b.heads)),
            tuple(range(b.qk_dim)),
            tuple(range(b.v_dim)),
            tuple(range(b.mlp_dim)),
        )
        for b in spec.blocks
    )


def check_keep(spec: ViTSpec, keep: Sequence[BlockKeep]) -> None:
    """Raise ``SpecError`` when ``keep`` does not fit ``spec`` (block count, index ranges)."""
    if len(keep) != spec.depth:
        raise SpecError(f"keep-set has {len(keep)} blocks, the spec has {spec.depth}")
    for i, (b, k) in enumerate(zip(spec.blocks, keep, strict=True)):
        limits = {"heads": b.heads, "qk": b.qk_dim, "v": b.v_dim, "mlp": b.mlp_dim}
        for name, limit in limits.items():
            idx = getattr(k, name)
            if idx and (idx[0] < 0 or idx[-1] >= limit):
                raise SpecError(f"block {i}: keep-set {name} index out of range 0..{limit - 1}")
        if k.v_per_head is not None and any(h[0] < 0 or h[-1] >= b.v_dim for h in k.v_per_head):
            raise SpecError(f"block {i}: v_per_head index out of range 0..{b.v_dim - 1}")
    embed = embed_of(keep)
    if embed is not None and (embed[0] < 0 or embed[-1] >= spec.embed_dim):
        raise SpecError(f"keep-set embed index out of range 0..{spec.embed_dim - 1}")


def unit_keep(spec: ViTSpec, keep: Sequence[BlockKeep]) -> dict[str, dict[Kind, Sequence[int]]]:
    """``keep`` as kept units per space of ``uvc.arch.structmap`` (what every slice rule reads)."""
    out: dict[str, dict[Kind, Sequence[int]]] = {}
    for i, (b, k) in enumerate(zip(spec.blocks, keep, strict=True)):
        if b.has_attn:
            out[f"{i}.qk"] = {Kind.HEAD: k.heads, Kind.QK: k.qk}
            if k.v_per_head is None:
                out[f"{i}.v"] = {Kind.HEAD: k.heads, Kind.V: k.v}
            else:
                per = zip(k.heads, k.v_per_head, strict=True)
                units = [h * b.v_dim + j for h, dims in per for j in dims]
                out[f"{i}.v"] = {Kind.HEAD: k.heads, Kind.V_HEAD: units}
        if b.has_mlp:
            out[f"{i}.mlp"] = {Kind.MLP: k.mlp}
    embed = embed_of(keep)
    if embed is not None:
        out["embed"] = {Kind.EMBED: embed}
    return out


def spec_after(spec: ViTSpec, keep: Sequence[BlockKeep]) -> ViTSpec:
    """The spec of the dense model that ``keep`` materializes to."""
    check_keep(spec, keep)
    blocks = tuple(
        BlockSpec(0, 0, 0, 0, skip=True)
        if k.skip
        else BlockSpec(len(k.heads), len(k.qk), k.v_width, len(k.mlp))
        if k.has_attn
        else BlockSpec(0, 0, 0, len(k.mlp))
        for k in keep
    )
    embed = embed_of(keep)
    width = spec.embed_dim if embed is None else len(embed)
    return spec.replace(blocks=blocks, embed_dim=width)


def random_keep(
    spec: ViTSpec,
    fraction: float,
    seed: int = 0,
    *,
    drop_attn: Sequence[int] = (),
    drop_mlp: Sequence[int] = (),
) -> KeepSet:
    """A random keep-set keeping about ``fraction`` of every width (for tests and benchmarks)."""
    rng = random.Random(seed)

    def pick(n: int) -> tuple[int, ...]:
        k = max(1, round(n * fraction)) if n else 0
        return tuple(sorted(rng.sample(range(n), k)))

    out = []
    for i, b in enumerate(spec.blocks):
        heads = () if (i in drop_attn or not b.heads) else pick(b.heads)
        out.append(
            BlockKeep(
                heads,
                pick(b.qk_dim) if heads else (),
                pick(b.v_dim) if heads else (),
                () if i in drop_mlp else pick(b.mlp_dim),
            )
        )
    return KeepSet(out)


# --- masked forward -------------------------------------------------------------------------


@dataclass
class BlockMasks:
    """Soft or hard multipliers for one block; ``None`` leaves that part untouched.

    Args:
        qk: (heads, qk_dim) multiplier of q and k.
        v: (heads, v_dim) multiplier of each head's attention output (head and dim masks).
        mlp: (mlp_dim,) multiplier of the MLP hidden units.
        attn_gate: scalar gate of the attention branch.
        mlp_gate: scalar gate of the MLP branch.
        gate: scalar gate of the whole block (UVC: ``x + g * (Block(x) - x)``).
    """

    qk: Tensor | None = None
    v: Tensor | None = None
    mlp: Tensor | None = None
    attn_gate: Tensor | None = None
    mlp_gate: Tensor | None = None
    gate: Tensor | None = None


def hard_masks(spec: ViTSpec, keep: Sequence[BlockKeep]) -> list[BlockMasks]:
    """0/1 masks that make the full model compute what the materialized model computes."""
    check_keep(spec, keep)
    if embed_of(keep) is not None:
        raise SpecError(
            "block masks give no masked forward for embedding-width pruning (the residual "
            "channels and the LayerNorm statistics change too): use masked_keep(model, keep)"
        )
    return _block_masks(spec, keep)


def _block_masks(spec: ViTSpec, keep: Sequence[BlockKeep]) -> list[BlockMasks]:
    smap, units = StructureMap(spec), unit_keep(spec, keep)
    out = []
    for i, (b, k) in enumerate(zip(spec.blocks, keep, strict=True)):
        ind = {}
        for part in ("qk", "v", "mlp"):
            for kind, idx in units.get(f"{i}.{part}", {}).items():
                ind[kind] = _indicator(smap.units(i, kind), idx)
        qk, v, mlp = smap.block_masks(i, ind)
        m = BlockMasks(qk=qk if k.has_attn else None, v=v if k.has_attn else None)
        m.mlp = mlp if k.has_mlp else None
        if b.has_attn and not k.has_attn:
            m.attn_gate = torch.zeros(())
        if b.has_mlp and not k.has_mlp:
            m.mlp_gate = torch.zeros(())
        if k.skip:
            m.gate = torch.zeros(())
        out.append(m)
    return out


def _on(t: Tensor | None, device: torch.device) -> Tensor | None:
    return t if t is None or t.device == device else t.to(device)


def _indicator(n: int, idx: Sequence[int]) -> Tensor:
    t = torch.zeros(n)
    t[list(idx)] = 1.0
    return t


def embed_mask(spec: ViTSpec, keep: Sequence[BlockKeep]) -> Tensor | None:
    """0/1 mask of the kept residual channels of ``keep`` (None when all are kept)."""
    embed = embed_of(keep)
    return None if embed is None else _indicator(spec.embed_dim, embed)


@contextmanager
def masked_keep(model: torch.nn.Module, keep: Sequence[BlockKeep]) -> Iterator[torch.nn.Module]:
    """``model`` computing what ``keep``'s materialized model computes, embedding channels too.

    Block parts are masked as ``hard_masks`` does; pruned residual channels are zeroed and every
    LayerNorm normalises over the kept channels (``uvc.arch.model.masked_norm``), which is what the
    narrower dense LayerNorms do.
    """
    with masked(model, _block_masks(model.spec, keep), embed=embed_mask(model.spec, keep)) as m:
        yield m


@contextmanager
def masked(
    model: torch.nn.Module, masks: Sequence[BlockMasks], embed: Tensor | None = None
) -> Iterator[torch.nn.Module]:
    """Apply ``masks`` (and a 0/1 mask of kept residual channels, ``embed``) to a
    ``uvc.arch.model.ViT`` for the duration of the block; always restored."""
    blocks = model.blocks
    device = next(model.parameters()).device
    if len(masks) != len(blocks):
        raise SpecError(f"{len(masks)} block masks for a model with {len(blocks)} blocks")
    emb = _on(embed, device)
    try:
        model.embed_mask = emb
        for blk in blocks:
            blk.embed_mask = emb
        for blk, m in zip(blocks, masks, strict=True):
            m = BlockMasks(**{k: _on(v, device) for k, v in vars(m).items()})
            if blk.attn is not None:
                blk.attn.qk_mask, blk.attn.v_mask = m.qk, m.v
            if blk.mlp is not None:
                blk.mlp.mask = m.mlp
            blk.attn_gate, blk.mlp_gate, blk.gate = m.attn_gate, m.mlp_gate, m.gate
        yield model
    finally:
        model.embed_mask = None
        for blk in blocks:
            blk.embed_mask = None
            if blk.attn is not None:
                blk.attn.qk_mask = blk.attn.v_mask = None
            if blk.mlp is not None:
                blk.mlp.mask = None
            blk.attn_gate = blk.mlp_gate = blk.gate = None


@torch.no_grad()
def masked_dense_gap(
    model: torch.nn.Module, dense: torch.nn.Module, keep: Sequence[BlockKeep], xs: Sequence[Tensor]
) -> dict[str, float]:
    """How far the dense model is from ``model`` masked by ``keep`` on the images ``xs``.

    Returns the largest absolute logit difference and the share of images (%) whose top-1
    class agrees. Both models are evaluated in eval mode and restored to their own mode.
    """
    modes = (model.training, dense.training)
    model.eval()
    dense.eval()
    diff, agree, n = 0.0, 0, 0
    try:
        for x in xs:
            x = x.to(next(model.parameters()).device)
            with masked_keep(model, keep):
                a = model(x)
            b = dense(x.to(next(dense.parameters()).device)).to(a.device)
            diff = max(diff, float((a - b).abs().max()))
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            n += len(x)
    finally:
        model.train(modes[0])
        dense.train(modes[1])
    return {"max_logit_diff": diff, "top1_agreement": 100.0 * agree / max(n, 1)}
