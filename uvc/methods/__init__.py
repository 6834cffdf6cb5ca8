"""Compression methods behind one interface (``uvc.methods.base.Method``).

``uvc`` (UVC's primal-dual search), ``uniform`` (the naive baseline) and, later, ``nvit`` share the
model, the structural map, the search loop (``uvc.search.run_search``: epochs, resume, DDP,
logging, progress), materialization and the dense fine-tune.
"""

from uvc.methods.base import METHODS, Method, build_method

__all__ = ["METHODS", "Method", "build_method"]
