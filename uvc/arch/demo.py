"""The built-in demo model, ``uvc-tiny``: a spec, no weights (``uvc demo`` trains it on digits)."""

from __future__ import annotations

from uvc.arch.spec import ViTSpec

DEMO_MODEL = "uvc-tiny"


def demo_spec(num_classes: int = 10, img_size: int = 32) -> ViTSpec:
    """The built-in tiny ViT (``uvc-tiny``): 4 blocks, embed 64, 4 heads, 16 patches."""
    return ViTSpec.uniform(
        4, 64, 4, img_size=img_size, patch_size=img_size // 4, num_classes=num_classes
    )
