"""The reference benchmark's compressed variants: ~50% MACs, aligned and unaligned widths."""

from __future__ import annotations

import pytest
from uvc.bench.reference import half_keep, keep_at

from uvc.arch.cost import macs
from uvc.arch.keep import spec_after
from uvc.arch.spec import ViTSpec

DEIT_TINY = ViTSpec.uniform(12, 192, 3)
DEIT_SMALL = ViTSpec.uniform(12, 384, 6)


@pytest.mark.parametrize("spec", [DEIT_TINY, DEIT_SMALL], ids=["tiny", "small"])
def test_half_keep_hits_half_the_macs(spec: ViTSpec) -> None:
    for align in (None, 16):
        ratio = macs(spec_after(spec, half_keep(spec, align))) / macs(spec)
        assert ratio == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("spec", [DEIT_TINY, DEIT_SMALL], ids=["tiny", "small"])
def test_aligned_and_unaligned_widths(spec: ViTSpec) -> None:
    aligned = spec_after(spec, half_keep(spec, 16))
    unaligned = spec_after(spec, half_keep(spec, None))
    for b in aligned.blocks:
        assert b.qk_dim % 16 == 0 and b.v_dim % 16 == 0 and b.mlp_dim % 16 == 0
    for b in unaligned.blocks:
        assert b.qk_dim % 8 and b.v_dim % 8 and b.mlp_dim % 8


def test_keep_at_is_seeded() -> None:
    assert keep_at(DEIT_TINY, 0.6, None, seed=1) == keep_at(DEIT_TINY, 0.6, None, seed=1)
    assert keep_at(DEIT_TINY, 0.6, None, seed=1) != keep_at(DEIT_TINY, 0.6, None, seed=2)
