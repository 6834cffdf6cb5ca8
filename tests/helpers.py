"""Small builders shared by the tests."""

from __future__ import annotations

from torch import nn
from uvc.bench.cost_check import MODELS as TIMM_MODELS
from uvc.bench.cost_check import fvcore_macs

from uvc.arch.spec import BlockSpec, ViTSpec

__all__ = ["TIMM_MODELS", "fvcore_macs", "timm_unfused", "tiny_spec"]


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


def timm_unfused(model: nn.Module) -> nn.Module:
    """Switch timm's fused attention off so fvcore sees the attention matmuls."""
    for blk in model.blocks:
        blk.attn.fused_attn = False
    return model
