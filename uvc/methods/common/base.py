"""The ``Method`` interface: what a compression method provides to the search loop.

A method owns the state it trains besides the weights (counts, gates, duals, saliencies), takes
one training step at a time, decides the keep-set, and checkpoints its state. The loop around it
(``uvc.methods.search.run_search``) is method-agnostic: data, epochs, resume, DDP, logging,
validation.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from uvc.arch.keep import KeepSet
from uvc.arch.model import ViT
from uvc.methods.common.config import METHODS, SearchConfig, _entry, _load
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillLoss

__all__ = ["METHODS", "Method", "build_method"]


class Method(Protocol):
    """One compression method (see module docstring)."""

    def step(
        self,
        x: Tensor,
        t: Tensor,
        teacher: nn.Module | None,
        loss_fn: DistillLoss,
        step: int,
        total: int,
        warmup: bool,
    ) -> dict[str, Any]:
        """One training step on a batch; returns a log record (``loss``, ``R``, ...)."""
        ...

    def keep(self) -> KeepSet:
        """The keep-set of the current decisions (what validation masks with)."""
        ...

    def cost(self) -> float:
        """R / R_full of the current decisions."""
        ...

    def summary(self) -> dict[str, float]:
        """Method-specific scalars for the epoch record (e.g. UVC's budget dual ``z``)."""
        ...

    def finalize(self) -> tuple[KeepSet, dict[str, Any]]:
        """The final keep-set (within the budget) and a record of how it was reached."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain data)."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        ...


def build_method(
    name: str, model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo
) -> Method:
    """Instantiate the method ``name`` (a key of ``METHODS``) for ``model``."""
    return _load(_entry(name).cls)(model, cfg, device, dist)
