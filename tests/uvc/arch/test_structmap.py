"""The structural map: zeroing a unit's slices == removing the unit, for every unit kind."""

from __future__ import annotations

import random

import pytest
import torch
from uvc.export.materialize import materialize

from uvc.arch.keep import BlockKeep, KeepSet, full_keep, hard_masks, masked, spec_after
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.arch.structmap import BLOCK_KINDS, PART_KINDS, Kind, StructureMap

# Spec v2 variants the map must hold for: post-norm + ReLU (nn.TransformerEncoderLayer), layer
# scale with no_embed_class (DeiT-III), registers.
VARIANTS: list[dict[str, object]] = [
    {},
    {"norm_placement": "post", "act": "relu", "norm_eps": 1e-5},
    {"layer_scale": True, "no_embed_class": True, "reg_tokens": 2},
]


def _random_spec(rng: random.Random, **variant: object) -> ViTSpec:
    blocks = tuple(
        BlockSpec(rng.randint(2, 4), rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 40))
        for _ in range(3)
    )
    return ViTSpec(img_size=16, patch_size=8, embed_dim=24, num_classes=5, blocks=blocks, **variant)  # type: ignore[arg-type]


def _without(spec: ViTSpec, block: int, kind: Kind, unit: int) -> KeepSet:
    """The full keep-set with one unit of ``kind`` removed from block ``block``."""
    keep = list(full_keep(spec))
    k, b = keep[block], spec.blocks[block]

    def drop(seq: tuple[int, ...], j: int) -> tuple[int, ...]:
        return tuple(x for x in seq if x != j)

    if kind is Kind.HEAD:
        k = BlockKeep(drop(k.heads, unit), k.qk, k.v, k.mlp)
    elif kind in (Kind.QK, Kind.QK_HEAD):
        k = BlockKeep(k.heads, drop(k.qk, unit % b.qk_dim), k.v, k.mlp)
    elif kind is Kind.V:
        k = BlockKeep(k.heads, k.qk, drop(k.v, unit), k.mlp)
    elif kind is Kind.V_HEAD:
        h, j = divmod(unit, b.v_dim)
        per = tuple(drop(k.v, j) if i == h else k.v for i in k.heads)
        k = BlockKeep(k.heads, k.qk, k.v, k.mlp, v_per_head=per)
    elif kind is Kind.MLP:
        k = BlockKeep(k.heads, k.qk, k.v, drop(k.mlp, unit))
    elif kind is Kind.ATTN:
        k = BlockKeep((), (), (), k.mlp)
    elif kind is Kind.MLP_PART:
        k = BlockKeep(k.heads, k.qk, k.v, ())
    else:
        k = BlockKeep((), (), (), ())
    keep[block] = k
    return KeepSet(keep)


@torch.no_grad()
def _zero_unit(model: ViT, block: int, kind: Kind, unit: int) -> ViT:
    """A copy of ``model`` with every slice the unit owns (per the map) set to zero."""
    smap = StructureMap(model.spec)
    params = dict(model.named_parameters())
    if kind in PART_KINDS:
        for name in smap.part_params(block, kind, list(params)):
            params[name].zero_()
        return model
    if kind is Kind.QK_HEAD:  # a per-head qk dim removed from one head is not a keep-set unit:
        kind = Kind.QK  # removing one dim from every head is; test the aligned dim instead
        unit %= model.spec.blocks[block].qk_dim
    for axis in smap.block_axes(block):
        owner = smap.owner(axis, kind)
        if owner is None:
            continue
        w = params[axis.param]
        hit = torch.nonzero(owner == unit).flatten()
        w.index_fill_(axis.dim, hit, 0.0)
    return model


@pytest.mark.parametrize("seed", range(len(VARIANTS)))
@pytest.mark.parametrize("kind", [*BLOCK_KINDS, *PART_KINDS])
def test_zeroing_a_unit_equals_removing_it(seed: int, kind: Kind) -> None:
    rng = random.Random(seed * 31 + len(kind.value))
    spec = _random_spec(rng, **VARIANTS[seed])
    if kind is Kind.BLOCK and spec.post_norm:
        pytest.skip("a skipped post-norm block is the identity, not zeroed weights: see below")
    torch.manual_seed(seed)
    model = ViT(spec).eval()
    for p in model.parameters():  # non-trivial biases and norms
        p.data.add_(0.05 * torch.randn_like(p))
    block = rng.randrange(spec.depth)
    smap = StructureMap(spec)
    n = smap.units(block, kind) if kind not in PART_KINDS else 1
    unit = rng.randrange(n)
    keep = _without(spec, block, kind, unit)
    dense = materialize(model, keep).eval()
    assert dense.spec == spec_after(spec, keep)
    zeroed = ViT(spec).eval()
    zeroed.load_state_dict(model.state_dict())
    _zero_unit(zeroed, block, kind, unit)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = zeroed(x)
        got = dense(x)
        with masked(model, hard_masks(spec, keep)):
            via_masks = model(x)
    assert (got - want).abs().max().item() <= 1e-5
    assert (via_masks - want).abs().max().item() <= 1e-5
    removed = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in dense.parameters()
    )
    # One value dim of one head is zero-padded at materialization (heads stay aligned).
    assert removed > 0 if kind is not Kind.V_HEAD else removed == 0


def test_every_kind_has_units_and_owners() -> None:
    spec = _random_spec(random.Random(7))
    smap = StructureMap(spec)
    b = spec.blocks[1]
    expected = {
        Kind.HEAD: b.heads,
        Kind.QK: b.qk_dim,
        Kind.V: b.v_dim,
        Kind.QK_HEAD: b.heads * b.qk_dim,
        Kind.V_HEAD: b.heads * b.v_dim,
        Kind.MLP: b.mlp_dim,
    }
    assert {k: smap.units(1, k) for k in expected} == expected
    assert smap.spaces["embed"].units(Kind.EMBED) == spec.embed_dim


def test_embedding_channels_materialize_to_the_cost_model() -> None:
    """Embedding-width keep-sets (NViT) slice every residual-stream tensor; cost == params."""
    from uvc.arch.cost import params as cost_params

    spec = _random_spec(random.Random(3))
    model = ViT(spec)
    keep = KeepSet(full_keep(spec), embed=range(0, spec.embed_dim, 2))
    dense = materialize(model, keep)
    assert dense.spec.embed_dim == spec.embed_dim // 2
    assert cost_params(dense.spec) == sum(p.numel() for p in dense.parameters())
    out = dense(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, spec.num_classes) and torch.isfinite(out).all()
    with pytest.raises(Exception, match="masked forward"):
        hard_masks(spec, keep)


def test_a_skipped_post_norm_block_is_the_identity_and_costs_nothing() -> None:
    from uvc.arch.cost import macs, params
    from uvc.methods.common.resource import ResourceModel

    spec = _random_spec(random.Random(5), norm_placement="post", act="relu")
    keep = list(full_keep(spec))
    keep[1] = BlockKeep((), (), (), (), skip=True)
    keep[2] = BlockKeep((), (), (), ())  # both branches removed: x <- LN(LN(x)) stays
    keep = KeepSet(keep)
    model = ViT(spec).eval()
    dense = materialize(model, keep).eval()
    assert dense.spec.blocks[1].skip and not dense.spec.blocks[2].skip
    assert sum(p.numel() for p in dense.blocks[1].parameters()) == 0
    assert sum(p.numel() for p in dense.blocks[2].parameters()) == 4 * spec.embed_dim  # 2 norms
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), masked(model, hard_masks(spec, keep)):
        want = model(x)
    assert (dense(x) - want).abs().max().item() <= 1e-5
    for metric, count in (("macs", macs), ("params", params)):
        res = ResourceModel(spec, metric)
        assert res.of_spec(dense.spec) == count(dense.spec)
