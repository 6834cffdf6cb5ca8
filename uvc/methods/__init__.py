"""Compression methods behind one interface (``uvc.methods.common.base.Method``).

``common/`` holds what they share (the protocol, the registry, the search settings, importance,
the resource model, hard widths, the masked distillation step); ``uvc/`` (UVC's primal-dual),
``nvit/`` (NViT's global Hessian-aware pruning) and ``uniform`` (the baseline) never import each
other; ``search`` is the method-agnostic loop above them (epochs, resume, DDP, logging). Imports
``uvc.train`` and below.
"""

from uvc.methods.common.base import METHODS, build_method

__all__ = ["METHODS", "build_method"]
