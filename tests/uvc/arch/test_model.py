from __future__ import annotations

import pytest
import torch

from tests.helpers import TIMM_MODELS, tiny_spec
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec
from uvc.files.weights import create_timm_model, vit_from_timm


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


# --- spec v2: norm placement, layer scale, registers, skipped blocks ----------------------------

POST = {"norm_placement": "post", "act": "relu", "norm_eps": 1e-5}


def _copy_shared(src: ViT, dst: ViT) -> ViT:
    """Copy every tensor ``dst`` also has (a removed branch simply has fewer)."""
    own = dst.state_dict()
    dst.load_state_dict({k: v for k, v in src.state_dict().items() if k in own}, strict=True)
    return dst.eval()


def _randomize_norms(model: ViT) -> ViT:
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return model.eval()


def test_post_norm_block_is_ln_of_the_residual():
    model = _randomize_norms(ViT(tiny_spec(**POST)))
    blk = model.blocks[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        h = blk.norm1(x + blk.attn(x))
        expected = blk.norm2(h + blk.mlp.fc2(torch.relu(blk.mlp.fc1(h))))
        assert torch.allclose(blk(x), expected, atol=1e-6)


@pytest.mark.parametrize("variant", [POST, {}, {"layer_scale": True, **POST}])
def test_a_zero_branch_gate_equals_the_removed_branch(variant):
    """The masked forward and the materialized spec agree: in post-norm a removed attention or MLP
    leaves its LayerNorm (x <- LN(x)); a skipped block is the identity in every placement."""
    full = _randomize_norms(ViT(tiny_spec(**variant)))
    blocks = list(full.spec.blocks)
    removed = [
        BlockSpec(0, 0, 0, blocks[0].mlp_dim),
        BlockSpec(blocks[1].heads, blocks[1].qk_dim, blocks[1].v_dim, 0),
        BlockSpec(0, 0, 0, 0, skip=True),
    ]
    small = _copy_shared(full, ViT(full.spec.replace(blocks=tuple(removed))))
    post = full.spec.post_norm
    assert (small.blocks[0].norm1 is not None) == post  # the LN stays only in post-norm
    assert small.blocks[2].norm1 is None and small.blocks[2].norm2 is None
    full.blocks[0].attn_gate = torch.tensor(0.0)
    full.blocks[1].mlp_gate = torch.tensor(0.0)
    full.blocks[2].gate = torch.tensor(0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(full(x), small(x), atol=1e-5)


def test_post_norm_block_without_branches_still_normalises():
    spec = tiny_spec(**POST, blocks=(BlockSpec(2, 8, 8, 16), BlockSpec(0, 0, 0, 0)))
    model = _randomize_norms(ViT(spec))
    blk = model.blocks[1]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        assert torch.allclose(blk(x), blk.norm2(blk.norm1(x)), atol=1e-6)


def test_layer_scale_registers_and_no_embed_class():
    spec = tiny_spec(layer_scale=True, reg_tokens=2, no_embed_class=True, act="gelu_tanh")
    model = ViT(spec).eval()
    keys = set(model.state_dict())
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "reg_token"} <= keys
    assert model.pos_embed.shape == (1, spec.num_patches, 32)
    assert model.reg_token.shape == (1, 2, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.set_fused_attn(False)(x), atol=1e-6)


def test_distillation_token_without_its_head():
    model = ViT(tiny_spec(dist_token=True, dist_head=False)).eval()
    assert model.head_dist is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.allclose(model(x), model.head(feats[:, 0]), atol=1e-6)
