"""Adapters: third-party ViTs (timm, torchvision, Hugging Face, plain PyTorch) as uvc ViTs.

``from_module(module, **hints)`` detects the kind of a live model, converts it and checks that the
uvc ViT gives the same logits (max |diff| <= 1e-5 on random images), or raises. ``convert_source``
does the same from files (``uvc convert``). Each kind lives in its own module, imported lazily
(``transformers`` only when a Hugging Face model is converted). Imports ``uvc.files`` and below.
"""

from __future__ import annotations

import dataclasses
from importlib import import_module
from pathlib import Path
from typing import Any

from torch import nn

from uvc.adapters.common import DEFAULT_ATOL, KINDS, Conversion
from uvc.arch.model import ViT
from uvc.arch.preprocess import Preprocess
from uvc.errors import SpecError
from uvc.files.checkpoint import Checkpoint, save_checkpoint

__all__ = [
    "KINDS",
    "Conversion",
    "convert_module",
    "convert_source",
    "detect_kind",
    "from_module",
    "save_conversion",
]


def detect_kind(module: nn.Module) -> str:
    """Which adapter handles ``module``: ``timm``, ``torchvision``, ``hf`` or ``torch-encoder``."""
    mod = type(module).__module__
    if mod.startswith("timm."):
        return "timm"
    if mod.startswith("torchvision."):
        return "torchvision"
    if mod.startswith("transformers."):
        return "hf"
    if any(isinstance(m, nn.TransformerEncoderLayer) for m in module.modules()):
        return "torch-encoder"
    raise SpecError(
        f"cannot tell what kind of ViT {type(module).__name__} ({mod}) is: uvc converts timm "
        "VisionTransformer, torchvision VisionTransformer, Hugging Face ViT/DeiT and models built "
        "on nn.TransformerEncoderLayer"
    )


def convert_module(
    module: nn.Module,
    kind: str | None = None,
    *,
    atol: float = DEFAULT_ATOL,
    preprocess: Preprocess | dict[str, Any] | None = None,
    **hints: Any,
) -> Conversion:
    """Convert a live model and measure its parity (raises ``WeightsError`` beyond ``atol``).

    Args:
        module: the original model (put in eval mode).
        kind: the adapter (default: detected).
        atol: largest accepted |logit difference| on random images.
        preprocess: the model's preprocessing; a dict overrides only the fields it names.
        hints: adapter options: ``layout``, ``img_size`` (torch-encoder).
    """
    kind = kind or detect_kind(module)
    module.eval()
    conv = _adapter(kind, live=True)(module, atol=atol, **hints)
    return _with_preprocess(conv, preprocess)


def from_module(module: nn.Module, **hints: Any) -> ViT:
    """A uvc ``ViT`` with the architecture and weights of ``module``, parity checked.

    Example::

        model = uvc.from_module(torchvision.models.vit_b_16())
        model = uvc.from_module(my_encoder_vit, layout={"head": "fc"})
    """
    return convert_module(module, **hints).model


def convert_source(
    source: str | Path,
    kind: str,
    *,
    atol: float = DEFAULT_ATOL,
    preprocess: Preprocess | dict[str, Any] | None = None,
    **opts: Any,
) -> Conversion:
    """Convert a model named by a file, folder or library name (what ``uvc convert`` does).

    Args:
        source: timm: a timm name, or a weights file with ``arch``; torchvision: a weights file
            with ``arch`` (``vit_b_16``, ...) or ``heads``; hf: a ``save_pretrained`` folder;
            torch-encoder: a state-dict file with ``heads`` (and ``layout``, ``norm_first``,
            ``activation``, ``eps``, ``img_size`` where they differ from PyTorch's defaults).
        kind: the adapter.
        atol: largest accepted |logit difference| against the original.
        preprocess: the model's input preprocessing (overrides what the source records).
        opts: the adapter's options (above), plus ``num_classes`` for timm names.
    """
    return _with_preprocess(_adapter(kind, live=False)(source, atol=atol, **opts), preprocess)


# kind -> (module, converter of a live model, converter of a file/name); imported on use, so
# transformers is only needed for Hugging Face models.
_ADAPTERS = {
    "timm": ("timm", "from_timm_module", "convert_timm_source"),
    "torchvision": ("torchvision", "from_torchvision_module", "convert_torchvision_source"),
    "hf": ("hf", "from_hf_module", "convert_hf_source"),
    "torch-encoder": ("torch_encoder", "from_encoder_module", "convert_encoder_source"),
}


def _adapter(kind: str, live: bool) -> Any:
    """The converter of ``kind`` for a live module (``live``) or a source file."""
    if kind not in _ADAPTERS:
        raise SpecError(f"unknown adapter {kind!r} (one of {', '.join(KINDS)})")
    module, from_live, from_source = _ADAPTERS[kind]
    mod = import_module(f"uvc.adapters.{module}")
    return getattr(mod, from_live if live else from_source)


def _with_preprocess(
    conv: Conversion, preprocess: Preprocess | dict[str, Any] | None
) -> Conversion:
    """Set the preprocessing; a dict overrides only the fields it names."""
    if preprocess is None:
        return conv
    if isinstance(preprocess, dict):
        preprocess = dataclasses.replace(conv.spec.preprocess or Preprocess(), **preprocess)
    # Preprocessing is not architecture: the weights stay valid for the new spec.
    conv.model.spec = conv.model.spec.replace(preprocess=preprocess)
    return conv


def save_conversion(conv: Conversion, out: str | Path, source: str | Path) -> Path:
    """Write a converted model as a uvc checkpoint (spec with preprocessing, weights, parity)."""
    meta = {
        "kind": "converted",
        "converted_from": conv.kind,
        "source": str(source),
        "parity_max_abs_diff": conv.max_abs_diff,
        "notes": conv.notes,
    }
    return save_checkpoint(out, Checkpoint(conv.spec, conv.model.state_dict(), meta))
