from __future__ import annotations

import random

import pytest
import torch

from tests.helpers import TIMM_MODELS, fvcore_macs, timm_unfused, tiny_spec
from uvc.arch.cost import LatencyTable, macs, model_cost, params
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import SpecError
from uvc.files.weights import create_timm_model, spec_from_timm

# fvcore's counts of the timm models (fused attention off), as quoted in the foundation issue.
FVCORE_GMACS = {
    "deit_tiny_patch16_224": 1.2584,
    "deit_small_patch16_224": 4.6083,
    "deit_base_patch16_224": 17.5827,
}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_macs_and_params_match_fvcore_on_timm(name):
    model = timm_unfused(create_timm_model(name).eval())
    spec = spec_from_timm(model)
    reference = fvcore_macs(model, torch.randn(1, 3, 224, 224))
    assert abs(macs(spec) - reference) / reference <= 1e-3
    assert params(spec) == sum(p.numel() for p in model.parameters())
    if name in FVCORE_GMACS:
        assert round(macs(spec) / 1e9, 4) == FVCORE_GMACS[name]


def _random_spec(rng: random.Random) -> ViTSpec:
    blocks = []
    for i in range(4):
        heads = 0 if i == 1 else rng.randint(1, 5)
        blocks.append(
            BlockSpec(
                heads,
                rng.randint(1, 17) if heads else 0,
                rng.randint(1, 17) if heads else 0,
                0 if i == 2 else rng.randint(1, 70),
            )
        )
    return ViTSpec(
        img_size=32,
        patch_size=rng.choice([4, 8]),
        embed_dim=rng.choice([24, 40]),
        num_classes=rng.choice([0, 10]),
        blocks=tuple(blocks),
        dist_token=rng.random() < 0.3,
        qkv_bias=rng.random() < 0.7,
    )


@pytest.mark.parametrize("seed", range(6))
def test_cost_matches_fvcore_on_random_nonuniform_specs(seed):
    spec = _random_spec(random.Random(seed))
    model = ViT(spec).eval().set_fused_attn(False)
    reference = fvcore_macs(model, torch.randn(1, 3, 32, 32))
    assert abs(macs(spec) - reference) / reference <= 1e-3
    assert params(spec) == sum(p.numel() for p in model.parameters())


def test_avg_pool_fc_norm_cost():
    spec = tiny_spec(pool="avg", fc_norm=True)
    model = ViT(spec).eval().set_fused_attn(False)
    reference = fvcore_macs(model, torch.randn(1, 3, 32, 32))
    # fvcore ignores the mean over tokens, as the cost model does.
    assert abs(macs(spec) - reference) / reference <= 1e-3


def test_per_block_breakdown_sums_to_total():
    spec = tiny_spec()
    cost = model_cost(spec)
    assert cost.macs == cost.embed_macs + sum(b.total for b in cost.blocks) + cost.head_macs
    removed = model_cost(spec.replace(blocks=(BlockSpec(0, 0, 0, 0),) * 3))
    assert all(b.total == 0 for b in removed.blocks)


def _table() -> LatencyTable:
    return LatencyTable.from_dict(
        {
            "format": "uvc-latency-lut",
            "version": 1,
            "embed_dim": 32,
            "tokens": 17,
            "fixed_ms": 1.0,
            # attn(h, qk, v) = h + qk/10 + v/100 is multilinear, so interpolation is exact.
            "attn": {
                "heads": [1, 4],
                "qk_dim": [2, 10],
                "v_dim": [2, 10],
                "ms": [[[h + q / 10 + v / 100 for v in (2, 10)] for q in (2, 10)] for h in (1, 4)],
            },
            "mlp": {"mlp_dim": [16, 96], "ms": [0.16, 0.96]},
        }
    )


def test_latency_table_interpolates_and_predicts(tmp_path):
    table = _table()
    spec = tiny_spec()
    expected = 1.0
    for b in spec.blocks:
        expected += b.heads + b.qk_dim / 10 + b.v_dim / 100 + b.mlp_dim / 100
    assert table.model_ms(spec) == pytest.approx(expected)
    again = LatencyTable.load(table.save(tmp_path / "lut.json"))
    assert again.model_ms(spec) == pytest.approx(expected)
    # Differentiable in the (continuous) widths.
    h = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    t = table.attn_ms_at(
        h, torch.tensor(4.0, dtype=torch.float64), torch.tensor(6.0, dtype=torch.float64)
    )
    t.backward()
    assert h.grad.item() == pytest.approx(1.0)


def test_latency_table_refuses_mismatch_and_garbage():
    with pytest.raises(SpecError, match="embed_dim=32, tokens=17"):
        _table().model_ms(ViTSpec.uniform(2, 64, 2, img_size=32, patch_size=8, num_classes=10))
    with pytest.raises(SpecError, match="not a uvc-latency-lut"):
        LatencyTable.from_dict({"format": "x"})


# --- spec v2 ------------------------------------------------------------------------------------

V2_BLOCKS = (
    BlockSpec(3, 5, 7, 0),
    BlockSpec(0, 0, 0, 33),
    BlockSpec(0, 0, 0, 0),  # post-norm: both norms remain
    BlockSpec(0, 0, 0, 0, skip=True),  # skipped: nothing remains
    BlockSpec(2, 8, 8, 16),
)
V2_VARIANTS = [
    {"norm_placement": "post", "act": "relu", "fc_norm": True},
    {"layer_scale": True, "reg_tokens": 2, "no_embed_class": True, "act": "quick_gelu"},
    {"dist_token": True, "dist_head": False, "final_norm": False, "act": "gelu_tanh"},
    {
        "norm_placement": "post",
        "layer_scale": True,
        "dist_token": True,
        "fc_norm": True,
        "final_norm": True,
    },
    {"class_token": False, "pool": "avg", "reg_tokens": 1, "norm_placement": "post"},
]


@pytest.mark.parametrize("variant", V2_VARIANTS)
def test_v2_cost_matches_fvcore_and_parameter_count(variant):
    spec = tiny_spec(blocks=V2_BLOCKS, **variant)
    model = ViT(spec).eval().set_fused_attn(False)
    reference = fvcore_macs(model, torch.randn(1, 3, 32, 32))
    assert macs(spec) == reference  # exact: every op fvcore counts is in the formula
    assert params(spec) == sum(p.numel() for p in model.parameters())


def test_post_norm_removed_branches_still_cost_their_norm():
    from uvc.arch.cost import NORM_MACS_PER_ELEMENT, block_macs, block_params

    n, d = 17, 32
    ln = NORM_MACS_PER_ELEMENT * n * d
    assert block_macs(BlockSpec(0, 0, 0, 16), n, d, post_norm=True).norms == 2 * ln
    assert block_macs(BlockSpec(0, 0, 0, 16), n, d).norms == ln
    assert block_macs(BlockSpec(0, 0, 0, 0, skip=True), n, d, post_norm=True).total == 0
    assert block_params(BlockSpec(0, 0, 0, 0), d, post_norm=True) == 4 * d
    assert (
        block_params(BlockSpec(2, 8, 8, 16), d, layer_scale=True)
        == block_params(BlockSpec(2, 8, 8, 16), d) + 2 * d
    )


def test_block_formulas_take_fractional_widths():
    """The resource model evaluates the same formulas at soft (float or tensor) widths."""
    from types import SimpleNamespace

    from uvc.arch.cost import block_macs, block_params

    soft = SimpleNamespace(heads=2.5, qk_dim=6.0, v_dim=7.5, mlp_dim=20.25)
    hard = BlockSpec(2, 6, 7, 20)
    assert block_macs(soft, 17, 32).total > block_macs(hard, 17, 32).total
    t = SimpleNamespace(
        heads=torch.tensor(2.5, requires_grad=True), qk_dim=6.0, v_dim=7.5, mlp_dim=20.25
    )
    total = block_macs(t, 17, 32, post_norm=True).total + block_params(t, 32, post_norm=True)
    total.backward()
    assert t.heads.grad > 0
