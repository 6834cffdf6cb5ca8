"""Small builders shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from uvc.spec import BlockSpec, ViTSpec

TIMM_MODELS = (
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "vit_small_patch32_224",
)


def tiny_spec(**overrides: object) -> ViTSpec:
    """A 3-block, embed-32, 32x32-input spec with non-uniform widths."""
    kwargs: dict[str, object] = {
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "num_classes": 10,
        "blocks": (BlockSpec(4, 8, 8, 64), BlockSpec(2, 6, 10, 48), BlockSpec(3, 8, 8, 96)),
    }
    kwargs.update(overrides)
    return ViTSpec(**kwargs)  # type: ignore[arg-type]


def fvcore_macs(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's op count of ``model`` on ``x`` (batch 1), warnings off."""
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(model, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return int(flops.total())


def timm_unfused(model: nn.Module) -> nn.Module:
    """Switch timm's fused attention off so fvcore sees the attention matmuls."""
    for blk in model.blocks:
        blk.attn.fused_attn = False
    return model
