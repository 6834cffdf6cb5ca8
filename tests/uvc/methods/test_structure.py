"""Learnable structure: straight-through counts, survivors, alignment, masks and keep-sets."""

from __future__ import annotations

import pytest
import torch
from uvc.export.materialize import materialize

from tests.helpers import tiny_spec
from uvc.arch.keep import BlockMasks, masked, spec_after
from uvc.arch.model import ViT
from uvc.methods.common.importance import magnitude
from uvc.methods.common.structure import (
    Structure,
    aligned_width,
    keep_from_hard,
    kept_count,
    st_mask,
    ste_ceil,
)


def test_ste_ceil_rounds_up_with_identity_gradient() -> None:
    x = torch.tensor([0.0, 0.2, 1.0, 2.7], requires_grad=True)
    y = ste_ceil(x)
    assert y.tolist() == [0.0, 1.0, 1.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_kept_count_keeps_one_unit_and_has_gradient() -> None:
    frac = torch.tensor(1.0, requires_grad=True)  # asks to prune everything
    k = kept_count(frac, 12, 1)
    assert float(k.detach()) == 1.0
    k.backward()
    assert float(frac.grad) == -12.0
    assert float(kept_count(torch.tensor(0.26), 12, 1)) == 12 - 4  # ceil(3.12) = 4 pruned


@pytest.mark.parametrize("width", [5, 8, 12, 64])
def test_align_gives_multiples_within_range(width: int) -> None:
    for kept in range(1, width + 1):
        a = aligned_width(kept, width, 4)
        assert a >= kept or a == width
        assert a <= width
        assert a % 4 == 0 or a == width
        assert a >= min(4, width)


def test_structure_align_widths() -> None:
    spec = tiny_spec()
    s = Structure(spec, align=4)
    with torch.no_grad():
        for p in s.parameters():
            p.uniform_(0, 1)
    s.project_()
    for hb, b in zip(s.hard(), spec.blocks, strict=True):
        for k, w in ((hb.qk, b.qk_dim), (hb.v, b.v_dim), (hb.mlp, b.mlp_dim)):
            assert 1 <= k <= w and (k % 4 == 0 or k == w)


def test_st_mask_prunes_lowest_scores_and_passes_gradient() -> None:
    scores = torch.tensor([3.0, 0.5, 2.0, 0.1, 5.0])
    pruned = torch.tensor(2.0, requires_grad=True)
    m = st_mask(scores, pruned, 1.0)
    assert m.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # A loss that wants every group kept must push the count down (positive gradient).
    (-m.sum()).backward()
    assert float(pruned.grad) > 0


def test_count_gradient_reaches_structure_through_the_model() -> None:
    spec = tiny_spec()
    model, s = ViT(spec), Structure(spec)
    with torch.no_grad():
        s.mlp.fill_(0.3)
        s.heads.fill_(0.3)
    scores = magnitude(model)
    soft = s(scores, scores)
    masks = [BlockMasks(qk=b.qk_mask, v=b.v_mask, mlp=b.mlp_mask) for b in soft]
    with masked(model, masks):
        model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert s.mlp.grad is not None and s.mlp.grad.abs().sum() > 0
    assert s.heads.grad is not None and s.heads.grad.abs().sum() > 0


@pytest.mark.parametrize("per_head_v", [False, True])
def test_soft_masks_equal_the_materialized_model(per_head_v: bool) -> None:
    spec = tiny_spec()
    model = ViT(spec).eval()
    s = Structure(spec, per_head_v=per_head_v)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in s.parameters():
            p.uniform_(0, 0.9)
    s.project_()
    scores = magnitude(model)
    soft = s(scores, scores)
    keep = keep_from_hard(spec, scores, s.hard())
    if per_head_v:
        assert all(k.v_per_head is not None for k in keep)
    x = torch.randn(3, 3, 32, 32)
    masks = [BlockMasks(qk=b.qk_mask, v=b.v_mask, mlp=b.mlp_mask) for b in soft]
    with torch.no_grad(), masked(model, masks):
        y_masked = model(x)
    dense = materialize(model, keep)
    assert dense.spec == spec_after(spec, keep)
    torch.testing.assert_close(dense(x), y_masked, atol=1e-5, rtol=1e-5)
    for b, hb in zip(soft, s.hard(), strict=True):
        assert (int(b.heads), int(b.qk), int(b.mlp)) == (hb.heads, hb.qk, hb.mlp)


def test_set_hard_round_trips() -> None:
    spec = tiny_spec()
    s = Structure(spec)
    with torch.no_grad():
        for p in s.parameters():
            p.uniform_(0, 0.9)
    s.project_()
    hard = s.hard()
    t = Structure(spec)
    t.set_hard_(hard)
    assert t.hard() == hard
