from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_spec
from uvc.arch.keep import BlockKeep, full_keep, hard_masks, masked, random_keep, spec_after
from uvc.arch.model import ViT
from uvc.errors import SpecError


def test_full_keep_changes_nothing():
    model = ViT(tiny_spec()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with masked(model, hard_masks(model.spec, full_keep(model.spec))):
            same = model(x)
    assert torch.equal(plain, same)
    assert spec_after(model.spec, full_keep(model.spec)) == model.spec


def test_masks_are_removed_after_the_context_even_on_error():
    model = ViT(tiny_spec())
    with (
        pytest.raises(RuntimeError),
        masked(model, hard_masks(model.spec, random_keep(model.spec, 0.5))),
    ):
        raise RuntimeError("boom")
    assert all(
        b.attn.qk_mask is None and b.mlp.mask is None and b.gate is None for b in model.blocks
    )


def test_spec_after_counts_kept_widths():
    spec = tiny_spec()
    keep = (
        BlockKeep((0, 2), (1, 3, 5), (0,), (1, 2, 3)),
        BlockKeep((), (), (), (4,)),
        BlockKeep((1,), (0,), (), (), v_per_head=((2, 5, 7),)),
    )
    new = spec_after(spec, keep)
    assert [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in new.blocks] == [
        (2, 3, 1, 3),
        (0, 0, 0, 1),
        (1, 1, 3, 0),
    ]


def test_keep_sets_are_validated():
    spec = tiny_spec()
    with pytest.raises(SpecError, match="sorted unique"):
        BlockKeep((1, 0), (0,), (0,), ())
    with pytest.raises(SpecError, match="at least one qk"):
        BlockKeep((0,), (), (0,), ())
    with pytest.raises(SpecError, match="index out of range"):
        spec_after(spec, (BlockKeep((9,), (0,), (0,), ()),) * 3)
    with pytest.raises(SpecError, match="keep-set has 1 blocks"):
        spec_after(spec, (BlockKeep((), (), (), ()),))


def test_keep_round_trips_through_plain_data():
    keep = BlockKeep((1,), (0, 2), (), (3,), v_per_head=((1, 2),))
    assert BlockKeep.from_dict(keep.to_dict()) == keep
