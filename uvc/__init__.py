"""uvc: compress Vision Transformers (UVC, NViT) and carry them to deployment.

The Python API (the CLI is a thin shell over the same functions)::

    import uvc
    result = uvc.compress(model, train_loader, val_loader, budget=0.5)   # search + fine-tune
    uvc.export_onnx(result.model, "model.onnx")                          # validated ONNX
    uvc.quantize(result.model, "model.int8.onnx", "data/")              # INT8, accuracy-checked
    uvc.cost(result.model).macs                                          # MACs, params
    uvc.save(result.model, "compressed.pt"); uvc.load("compressed.pt")

Names are imported on first use (PEP 562), so ``import uvc`` stays fast and needs no ONNX.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import UvcError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "compress": "uvc.api",
    "CompressResult": "uvc.api",
    "cost": "uvc.tools",
    "load": "uvc.tools",
    "save": "uvc.tools",
    "export_onnx": "uvc.tools",
    "quantize": "uvc.tools",
    "benchmark": "uvc.tools",
    "from_module": "uvc.adapters",
    "materialize": "uvc.export.materialize",
    "ViT": "uvc.arch.model",
    "KeepSet": "uvc.arch.keep",
    "BlockKeep": "uvc.arch.keep",
}

__all__ = ["BlockSpec", "UvcError", "ViTSpec", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'uvc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
