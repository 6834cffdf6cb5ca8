"""Token merging (``uvc.arch.merge``, ``uvc.arch.merge_schedule``): spec, model, cost and budget."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import fvcore_macs, tiny_spec
from uvc.arch.cost import LatencyTable, macs, model_cost
from uvc.arch.merge import merge_tokens
from uvc.arch.merge_schedule import merge_schedule, unmerged, with_merge
from uvc.arch.model import ViT, apply_merge
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import SpecError
from uvc.methods.common.resource import ResourceModel

# 32x32 inputs, patch 4: 64 patch tokens (+ prefix), as the CIFAR ViT.
VARIANTS = [
    {},
    {"norm_placement": "post", "act": "relu"},
    {"pool": "avg", "class_token": False, "reg_tokens": 1, "fc_norm": True},
    {"dist_token": True},
    {"reg_tokens": 2, "layer_scale": True, "no_embed_class": True},
]


def _spec(merge=(8, 8, 4), **kw) -> ViTSpec:
    blocks = (BlockSpec(2, 16, 16, 128), BlockSpec(0, 0, 0, 64), BlockSpec(3, 8, 16, 0))
    spec = ViTSpec(img_size=32, patch_size=4, embed_dim=32, num_classes=10, blocks=blocks, **kw)
    return spec.replace(merge_r=merge)


# --- spec -----------------------------------------------------------------------------------------


def test_spec_without_merging_serializes_as_before():
    spec = tiny_spec()
    assert spec.replace(merge_r=(0, 0, 0)).merge_r == ()
    data = spec.to_dict()
    assert data["format_version"] == 2 and "merge_r" not in data
    assert spec.replace(merge_r=(0, 0, 0)).to_json() == spec.to_json()


def test_spec_with_merging_round_trips_as_format_3():
    spec = _spec()
    data = json.loads(spec.to_json())
    assert data["format_version"] == 3 and data["merge_r"] == [8, 8, 4]
    assert ViTSpec.from_json(spec.to_json()) == spec
    assert [spec.tokens_in(i) for i in range(4)] == [65, 57, 49, 45]
    data["format_version"] = 2
    with pytest.raises(SpecError, match="format-3 field merge_r"):
        ViTSpec.from_dict(data)


@pytest.mark.parametrize(
    ("merge", "message"),
    [
        ((33, 0, 0), "block 0 would merge 33 tokens but receives 64 patch tokens"),
        ((20, 23, 0), "block 1 would merge 23 tokens but receives 44"),
        ((4, 4), "2 counts for a model of 3 blocks"),
        ((4, -1, 0), ">= 0"),
        ((4, 1.5, 0), "integers"),
    ],
)
def test_bad_schedules_are_refused(merge, message):
    with pytest.raises(SpecError, match=message):
        _spec(merge)


def test_schedule_parsing():
    assert merge_schedule("8", 3) == (8, 8, 8)
    assert merge_schedule("8, 4,0", 3) == (8, 4, 0)
    assert merge_schedule(2, 2) == (2, 2)
    with pytest.raises(SpecError, match="one integer r or one per block"):
        merge_schedule("8;4", 2)
    with pytest.raises(SpecError, match="2 counts for a model of 3"):
        merge_schedule("8,4", 3)
    assert unmerged(_spec()).merge_r == () and with_merge(tiny_spec(), None) == tiny_spec()


# --- the merge op -------------------------------------------------------------------------------


def test_merge_tokens_keeps_prefix_and_mass():
    torch.manual_seed(0)
    x = torch.randn(3, 1 + 10, 6)
    out, size = merge_tokens(x, None, x, r=3, prefix=1)
    assert out.shape == (3, 8, 6) and size.shape == (3, 8, 1)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.all(size[:, 0] == 1)
    assert torch.all(size.sum(1) == 11)
    # Size-weighted averages preserve the size-weighted sum of the patch tokens.
    torch.testing.assert_close((out[:, 1:] * size[:, 1:]).sum(1), x[:, 1:].sum(1))


def test_merge_tokens_merges_the_most_similar_pair():
    # Patches: A = tokens 0, 2, 4; B = 1, 3. Token 4 is a copy of token 1 (cosine 1).
    pat = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 2, 0]])
    x = pat[None]
    size = torch.tensor([1.0, 1, 1, 1, 3])[None, :, None]
    out, new = merge_tokens(x, size, x, r=1, prefix=0)
    assert out.shape == (1, 4, 3)
    # [unmerged A (0, 2 in some order), B1 + A4 (sizes 1 and 3), B3]
    assert sorted(new[0, :2, 0].tolist()) == [1.0, 1.0] and new[0, 2:, 0].tolist() == [4.0, 1.0]
    torch.testing.assert_close(out[0, 2], (pat[1] * 1 + pat[4] * 3) / 4)
    torch.testing.assert_close(out[0, 3], pat[3])


# --- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", VARIANTS)
def test_merging_model_shapes_and_protected_tokens(kw):
    spec = _spec(**kw)
    model = ViT(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    feats, size = model.forward_features_sized(x)
    p = spec.num_prefix_tokens
    assert feats.shape == (2, spec.tokens_in(3), 32)
    assert torch.all(size.sum(1) == spec.num_tokens) and torch.all(size[:, :p] == 1)
    assert model(x).shape == (2, 10)
    # The explicit attention path (what fvcore counts) computes the same.
    fused = model(x)
    torch.testing.assert_close(model.set_fused_attn(False)(x), fused, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"norm_placement": "post"}, {"pool": "avg", "fc_norm": True}])
def test_merging_duplicate_tokens_is_exact(kw):
    """Proportional attention and size-weighted pooling make merging identical tokens lossless:
    a token of size 2 stands exactly for two equal ones (ToMe's design)."""
    spec = ViTSpec.uniform(3, 32, 2, img_size=32, patch_size=8, num_classes=10, **kw)
    plain = ViT(spec).eval()
    with torch.no_grad():
        plain.pos_embed.zero_()  # equal patches give equal tokens
    merged = apply_merge(plain, (8, 0, 0))  # all 8 pairs of a 4x4 grid
    x = torch.randn(2, 3, 32, 32)
    # Columns 8-15 copy 0-7 and 24-31 copy 16-23: patch 2j+1 equals patch 2j (A_j and B_j).
    x[..., 8:16], x[..., 24:32] = x[..., 0:8], x[..., 16:24]
    assert merged.spec.tokens_in(3) == 9
    torch.testing.assert_close(merged(x), plain(x), atol=1e-5, rtol=1e-4)


def test_no_merging_keeps_the_dense_forward():
    spec = tiny_spec()
    model = ViT(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(apply_merge(model, 0)(x), model(x))
    assert apply_merge(model, None) is model


def test_gated_merging_block_skips_to_a_merge():
    spec = _spec()
    model = ViT(spec).eval()
    blk = model.blocks[1]  # an MLP-only block: the tokens are the merge's metric
    x = torch.randn(2, 57, 32)
    blk.gate = torch.tensor(0.0)
    out, size = blk.forward_sized(x, None)
    ref, ref_size = merge_tokens(x, None, x, 8, 1)
    assert out.shape == (2, 49, 32)
    torch.testing.assert_close(out, ref)
    assert torch.equal(size, ref_size)


# --- cost and budget -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", VARIANTS)
def test_cost_matches_fvcore_with_merging(kw):
    spec = _spec(**kw)
    model = ViT(spec).eval().set_fused_attn(False)
    assert macs(spec) == fvcore_macs(model, torch.randn(1, 3, 32, 32))
    assert macs(spec) < macs(unmerged(spec))


def test_cost_of_skipped_and_removed_parts_with_merging():
    blocks = (BlockSpec(0, 0, 0, 0, skip=True), BlockSpec(2, 8, 8, 0), BlockSpec(0, 0, 0, 32))
    spec = _spec(norm_placement="post").replace(blocks=blocks)
    model = ViT(spec).eval().set_fused_attn(False)
    assert macs(spec) == fvcore_macs(model, torch.randn(1, 3, 32, 32))
    # The skipped block still merges: its matching over the tokens (32 x 32 pairs, width 32).
    assert model_cost(spec).blocks[0].total == 32 * 32 * 32


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_resource_model_counts_merging_against_the_unmerged_model(metric):
    spec = _spec(norm_placement="post")
    res = ResourceModel(spec, metric)
    ref = ResourceModel(unmerged(spec), metric)
    assert res.full == ref.full
    cost = model_cost(spec)
    assert res.of_spec(spec) == float(cost.macs if metric == "macs" else cost.params)
    pruned = spec.replace(blocks=(BlockSpec(1, 5, 7, 30), BlockSpec(0, 0, 0, 0, skip=True)) * 1
                          + (BlockSpec(3, 8, 16, 0),))  # fmt: skip
    c = model_cost(pruned)
    assert res.of_spec(pruned) == float(c.macs if metric == "macs" else c.params)
    # The soft R at hard gates is the exact cost too.
    soft = [
        res.block(b.heads, b.qk_dim, b.v_dim, b.mlp_dim, 1.0, 1.0, 0.0 if b.skip else 1.0, i)
        for i, b in enumerate(pruned.blocks)
    ]
    assert float(res.total(soft)) == pytest.approx(res.of_spec(pruned), rel=1e-12)


def test_equal_budget_prunes_less_width_with_merging():
    from uvc.methods.uniform import uniform_ratio

    spec = ViTSpec.uniform(4, 64, 4, img_size=32, patch_size=4, num_classes=10)
    plain = uniform_ratio(ResourceModel(spec), 0.5)
    merged = uniform_ratio(ResourceModel(with_merge(spec, 6)), 0.5)
    assert merged > plain + 0.1


def test_latency_table_scales_by_tokens():
    table = LatencyTable.from_dict(
        {
            "format": "uvc-latency-lut",
            "version": 1,
            "embed_dim": 32,
            "tokens": 65,
            "fixed_ms": 1.0,
            "attn": {
                "heads": [1, 4],
                "qk_dim": [8, 16],
                "v_dim": [8, 16],
                "ms": [[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]],
            },
            "mlp": {"mlp_dim": [16, 128], "ms": [1.0, 1.0]},
        }
    )
    spec = _spec()  # tokens 65 -> 57 -> 49 -> 45
    want = 1.0 + 2.0 + 1.0 * 57 / 65 + 1.0 * 49 / 65 + 2.0 * 49 / 65
    assert table.model_ms(spec) == pytest.approx(want)
    res = ResourceModel(spec, "latency", table)
    assert res.of_spec(spec) == pytest.approx(want)
    assert res.full == pytest.approx(table.model_ms(unmerged(spec)))


def test_compress_and_train_settings_take_merge():
    from uvc.api import _settings
    from uvc.errors import UvcError
    from uvc.settings import TrainConfig

    assert _settings(0.5, "macs", "uvc", {"merge": [8, 4, 0]}).merge == "8,4,0"
    assert _settings(0.5, "macs", "uvc", {"merge": 6}).merge == "6"
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(merge="4,-4")
    with pytest.raises(UvcError, match="one integer r"):
        _settings(0.5, "macs", "uvc", {"merge": "x"})


@pytest.mark.parametrize("method", ["uvc", "uniform", "nvit"])
def test_compress_with_merging_prunes_less_width(method):
    from torch.utils.data import DataLoader, TensorDataset

    import uvc

    torch.manual_seed(0)
    spec = ViTSpec.uniform(2, 32, 4, img_size=32, patch_size=8, num_classes=3)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))

    def run(merge):
        return uvc.compress(ViT(spec), DataLoader(data, batch_size=8), budget=0.6, method=method,
                            search_epochs=2, warmup_epochs=1, finetune_epochs=1, progress=False,
                            merge=merge)  # fmt: skip

    plain, merged = run(None), run([4, 2])
    assert merged.spec.merge_r == (4, 2) and merged.model.spec == merged.spec
    assert merged.macs_after == macs(merged.spec) and merged.macs_before == macs(spec)
    assert merged.macs_after / merged.macs_before <= 0.6
    assert merged.params_after > plain.params_after  # the tokens merging saves buy back width
