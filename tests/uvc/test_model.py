from __future__ import annotations

import pytest
import torch

from tests.helpers import TIMM_MODELS, tiny_spec
from uvc.model import ViT
from uvc.spec import BlockSpec
from uvc.weights import create_timm_model, vit_from_timm


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_parity_with_timm(name):
    """Same weights, same logits: max |delta| <= 1e-5 in fp32 on CPU, eval mode."""
    timm_model = create_timm_model(name).eval()
    ours = vit_from_timm(timm_model).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = timm_model(x), ours(x)
        unfused = ours.set_fused_attn(False)(x)
    assert got.shape == expected.shape == (2, 1000)
    assert (got - expected).abs().max().item() <= 1e-5
    assert (unfused - expected).abs().max().item() <= 1e-5
    # Parameter names are timm's: the state dicts have the same keys.
    assert set(ours.state_dict()) == set(timm_model.state_dict())


def test_any_spec_builds_and_runs_including_removed_parts():
    spec = tiny_spec(
        blocks=(
            BlockSpec(3, 5, 7, 0),
            BlockSpec(0, 0, 0, 33),
            BlockSpec(1, 16, 4, 8),
            BlockSpec(0, 0, 0, 0),
        )
    )
    model = ViT(spec).eval()
    assert model.blocks[0].mlp is None and model.blocks[1].attn is None
    assert model.blocks[2].attn.qkv.out_features == 1 * (2 * 16 + 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model(x)
        explicit = model.set_fused_attn(False)(x)
    assert fused.shape == (2, 10)
    assert torch.allclose(fused, explicit, atol=1e-6)


def test_distilled_training_returns_both_heads():
    model = ViT(tiny_spec(dist_token=True))
    x = torch.randn(2, 3, 32, 32)
    model.distilled_training = True
    model.train()
    cls_logits, dist_logits = model(x)
    model.eval()
    with torch.no_grad():
        avg = model(x)
    model.train()
    with torch.no_grad():
        c, d = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    assert torch.allclose(avg, (c + d) / 2, atol=1e-6)


def test_avg_pool_with_fc_norm():
    model = ViT(tiny_spec(pool="avg", fc_norm=True, class_token=False)).eval()
    assert model.spec.num_prefix_tokens == 0
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
