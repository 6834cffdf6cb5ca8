"""The ``Method`` interface: what a compression method provides to the search loop.

A method owns the state it trains besides the weights (counts, gates, duals, saliencies), takes
one training step at a time, decides the keep-set, and checkpoints its state. The loop around it
(``uvc.search.run_search``) is method-agnostic: data, epochs, resume, DDP, logging, validation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from uvc.dist import DistInfo
from uvc.distill import DistillLoss
from uvc.keep import KeepSet
from uvc.model import ViT

if TYPE_CHECKING:
    from uvc.primal_dual import SearchConfig


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


MethodFactory = Callable[[ViT, "SearchConfig", torch.device, DistInfo], Method]


def _primal_dual(model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo) -> Method:
    from uvc.primal_dual import PrimalDual

    return PrimalDual(model, cfg, device, dist)


def _uniform(model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo) -> Method:
    from uvc.methods.uniform import Uniform

    return Uniform(model, cfg, device, dist)


def _nvit(model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo) -> Method:
    from uvc.methods.nvit import NViT

    return NViT(model, cfg, device, dist)


# The registry: ``--method NAME`` / ``method=NAME``.
METHODS: dict[str, MethodFactory] = {"uvc": _primal_dual, "uniform": _uniform, "nvit": _nvit}


def build_method(
    name: str, model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo
) -> Method:
    """Instantiate the method ``name`` for ``model``."""
    try:
        factory = METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}") from None
    return factory(model, cfg, device, dist)
