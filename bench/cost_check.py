"""Print the foundation's acceptance table: uvc.arch.cost vs fvcore, timm parity, dense vs masked.

``python -m uvc.bench.cost_check`` (CPU, about a minute): for each timm model, fvcore's MAC count of
the timm model (fused attention off) next to ``uvc.arch.cost``; the parameter counts; the max |Δ
logits|
between timm and ``uvc.arch.model.ViT`` with the same weights; and, for a random keep-set with a
block
without attention, one without MLP and a single-head block, the max |Δ| between the materialized
dense model and the masked full model, and the dense model's cost vs fvcore.
"""

from __future__ import annotations

import random

import torch
from uvc.export.materialize import materialize

from uvc.arch.cost import macs, params
from uvc.arch.keep import BlockKeep, KeepSet, hard_masks, masked, random_keep
from uvc.arch.spec import ViTSpec
from uvc.files.weights import create_timm_model, vit_from_timm

MODELS = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "vit_small_patch32_224",
)


def fvcore_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """fvcore's count of ``model`` on ``x``, warnings off."""
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(model, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return int(flops.total())


def odd_keep(spec: ViTSpec, seed: int) -> KeepSet:
    """A random keep-set: block 1 without attention, block 2 without MLP, block 0 single-head."""
    rng = random.Random(seed)
    keep = list(random_keep(spec, 0.6, seed, drop_attn=(1,), drop_mlp=(2,)))
    b = spec.blocks[0]
    keep[0] = BlockKeep(
        (rng.randrange(b.heads),),
        tuple(sorted(rng.sample(range(b.qk_dim), 7))),
        tuple(sorted(rng.sample(range(b.v_dim), 5))),
        tuple(sorted(rng.sample(range(b.mlp_dim), 33))),
    )
    return tuple(keep)


def main() -> None:
    """Print the table as markdown."""
    torch.manual_seed(0)
    print(
        "| model | fvcore MACs | uvc.arch.cost MACs | rel. diff | params (cost = numel) | "
        "parity max |Δ| | dense vs masked max |Δ| | dense cost vs fvcore |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        timm_model = create_timm_model(name).eval()
        ours = vit_from_timm(timm_model).eval()
        x = torch.randn(2, 3, 224, 224)
        with torch.no_grad():
            parity = (timm_model(x) - ours(x)).abs().max().item()
        for blk in timm_model.blocks:
            blk.attn.fused_attn = False
        ref = fvcore_macs(timm_model, x[:1])
        n_params = sum(p.numel() for p in timm_model.parameters())
        assert params(ours.spec) == n_params
        keep = odd_keep(ours.spec, len(name))
        dense = materialize(ours, keep).eval()
        with torch.no_grad():
            with masked(ours, hard_masks(ours.spec, keep)):
                expected = ours(x)
            delta = (dense(x) - expected).abs().max().item()
        dense_ref = fvcore_macs(dense.set_fused_attn(False), x[:1])
        print(
            f"| {name} | {ref:,} | {macs(ours.spec):,} | {(macs(ours.spec) - ref) / ref:+.1e} | "
            f"{n_params:,} | {parity:.1e} | {delta:.1e} | "
            f"{(macs(dense.spec) - dense_ref) / dense_ref:+.1e} |"
        )


if __name__ == "__main__":
    main()
