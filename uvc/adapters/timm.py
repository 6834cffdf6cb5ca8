"""timm ``VisionTransformer`` (ViT, DeiT, DeiT-III, DINOv2 with registers, avg-pool/fc_norm).

timm's parameter names are uvc's, so the weights copy unchanged;
``uvc.files.weights.spec_from_timm``
describes the architecture (and refuses, by name, what uvc's ViT cannot reproduce).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from uvc.adapters.common import DEFAULT_ATOL, Conversion, check_parity, measure_parity
from uvc.errors import SpecError, WeightsError
from uvc.files.weights import create_timm_model, read_state_dict, vit_from_timm

SOURCE = "timm"


def from_timm_module(module: nn.Module, atol: float = DEFAULT_ATOL, **hints: Any) -> Conversion:
    """Convert a live timm ViT; parity against its own forward."""
    if hints:
        raise SpecError(f"timm: unexpected options {sorted(hints)} (the model describes itself)")
    name = getattr(module, "default_cfg", {}).get("architecture", type(module).__name__)
    model = vit_from_timm(module.eval()).eval()
    diff = measure_parity(module, model)
    check_parity(diff, atol, f"timm {name}")
    return Conversion(model, SOURCE, diff, {"architecture": name})


def convert_timm_source(
    source: str | Path,
    *,
    arch: str | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    atol: float = DEFAULT_ATOL,
) -> Conversion:
    """Convert a timm name (random weights) or a weights file of timm model ``arch``."""
    kwargs: dict[str, Any] = {}
    if img_size is not None:
        kwargs["img_size"] = img_size
    path = Path(source)
    if path.exists():
        if arch is None:
            raise SpecError("timm: a weights file needs the model name it belongs to (--arch)")
        state = read_state_dict(path)
        head = state.get("head.weight")
        kwargs["num_classes"] = 0 if head is None else head.shape[0]
        module = create_timm_model(arch, **kwargs)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise WeightsError(f"{path} does not fit timm {arch}: {first}") from None
    else:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        module = create_timm_model(str(source), **kwargs)
    return from_timm_module(module, atol=atol)
