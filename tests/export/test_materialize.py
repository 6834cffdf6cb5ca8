from __future__ import annotations

import pytest
import torch
from uvc.bench.cost_check import odd_keep
from uvc.export.materialize import materialize

from tests.helpers import TIMM_MODELS, fvcore_macs, tiny_spec
from uvc.arch.cost import macs, params
from uvc.arch.keep import BlockKeep, KeepSet, hard_masks, masked, random_keep
from uvc.arch.model import ViT
from uvc.files.weights import create_timm_model, vit_from_timm


def _check(model: ViT, keep: KeepSet, img: int) -> float:
    model.eval()
    x = torch.randn(2, 3, img, img)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = materialize(model, keep).eval()
    with torch.no_grad():
        with masked(model, hard_masks(model.spec, keep)):
            expected = model(x)
        got = dense(x)
    # The input model is untouched (pure function) and carries no leftover masks.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(blk.gate is None for blk in model.blocks)
    # The dense model is physically smaller and its cost is what the spec says.
    assert params(dense.spec) == sum(p.numel() for p in dense.parameters())
    reference = fvcore_macs(dense.set_fused_attn(False), x[:1])
    assert abs(macs(dense.spec) - reference) / reference <= 1e-3
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_dense_equals_masked_on_timm_models(name):
    model = vit_from_timm(create_timm_model(name))
    keep = odd_keep(model.spec, seed=len(name))
    assert _check(model, keep, 224) <= 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_dense_equals_masked_on_tiny_random_keeps(seed):
    model = ViT(tiny_spec(dist_token=seed % 2 == 1, qkv_bias=seed != 2))
    assert _check(model, random_keep(model.spec, 0.5, seed, drop_attn=(seed % 3,)), 32) <= 1e-5


def test_per_head_value_counts_pad_with_zeros_exactly():
    model = ViT(tiny_spec())
    spec = model.spec
    keep = list(random_keep(spec, 0.7, 3))
    heads = keep[0].heads
    per = tuple(tuple(range(i + 1)) for i in range(len(heads)))  # 1, 2, ... dims per head
    keep[0] = BlockKeep(heads, keep[0].qk, (), keep[0].mlp, v_per_head=per)
    dense = materialize(model, tuple(keep))
    assert dense.spec.blocks[0].v_dim == len(heads)  # padded to the largest count
    assert _check(model, tuple(keep), 32) <= 1e-5


def test_keeping_everything_reproduces_the_model():
    model = ViT(tiny_spec()).eval()
    from uvc.arch.keep import full_keep

    dense = materialize(model, full_keep(model.spec)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(dense(x), model(x), atol=1e-6)
    assert dense.spec == model.spec
