"""The naive baseline: the same keep ratio in every block, chosen by magnitude, at step 0.

Every block keeps ``max(1, round(rho * width))`` of its heads and of its MLP units (query/key and
value widths untouched), the highest-magnitude ones; ``rho`` is the largest ratio whose cost meets
the budget (bisection on the resource model, the same numbers ``uvc.arch.cost`` gives). The search
epochs then train the masked model with the same distillation as UVC, so a report can compare
both at equal budget and equal epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from uvc.arch.cost import LatencyTable
from uvc.arch.keep import KeepSet
from uvc.arch.model import ViT
from uvc.errors import UvcError
from uvc.methods.common.config import SearchConfig
from uvc.methods.common.importance import magnitude
from uvc.methods.common.kd import masked_kd_step, weight_optimizer
from uvc.methods.common.resource import Metric, ResourceModel
from uvc.methods.common.structure import HardBlock, keep_from_hard
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillLoss
from uvc.train.schedules import cosine_lr


def uniform_widths(res: ResourceModel, rho: float) -> list[HardBlock]:
    """Per block: ``round(rho * width)`` heads and MLP units (at least 1), other widths kept."""
    out = []
    for b in res.spec.blocks:
        heads = max(1, round(rho * b.heads)) if b.heads else 0
        mlp = max(1, round(rho * b.mlp_dim)) if b.mlp_dim else 0
        out.append(HardBlock(heads, b.qk_dim if heads else 0, b.v_dim if heads else 0, mlp))
    return out


def uniform_ratio(res: ResourceModel, budget: float, iters: int = 50) -> float:
    """The largest keep ratio whose cost is within ``budget`` of the full model's."""

    def cost(rho: float) -> float:
        blocks = sum(
            res.block_float(h.heads, h.qk, int(h.v), h.mlp, i=i)
            for i, h in enumerate(uniform_widths(res, rho))
        )
        return (res.fixed + blocks) / res.full

    if cost(0.0) > budget:
        raise UvcError(
            f"budget {budget} is below what uniform pruning reaches ({cost(0.0):.4f} of the "
            "full cost with one head and one MLP unit per block)"
        )
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return lo


class Uniform:
    """The ``uniform`` method (see module docstring)."""

    def __init__(self, model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        lut = LatencyTable.load(cfg.lut) if cfg.lut else None
        self.res = ResourceModel(
            model.spec, cfg.metric, lut if cfg.metric is Metric.LATENCY else None
        )
        self.opt, self.scaler = weight_optimizer(model, cfg, device)
        self.rho = uniform_ratio(self.res, cfg.budget)
        # Decided once, by magnitude, from the weights the search starts with (after the search
        # loop has synchronised them over ranks); saved with the state so a resume keeps it.
        self._keep: KeepSet | None = None

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
        """One distillation step of the masked model (the architecture is fixed)."""
        lr = cosine_lr(step, total, self.cfg.lr, 0, self.cfg.min_lr)
        loss = masked_kd_step(
            self.model,
            self.keep(),
            x,
            t,
            teacher,
            loss_fn,
            self.opt,
            self.scaler,
            lr=lr,
            amp=self.cfg.amp,
            device=self.device,
            dist=self.dist,
        )
        r = self.cost()
        return {"kind": "search_step", "step": step, "loss": loss, "R": r,
                "budget": self.cfg.budget, "lr": lr, "rho": self.rho}  # fmt: skip

    def keep(self) -> KeepSet:
        """The fixed keep-set (decided at the first call)."""
        if self._keep is None:
            widths = uniform_widths(self.res, self.rho)
            self._keep = keep_from_hard(self.model.spec, magnitude(self.model), widths)
        return self._keep

    def cost(self) -> float:
        """R / R_full of the keep-set."""
        from uvc.arch.keep import spec_after

        return self.res.of_spec(spec_after(self.model.spec, self.keep())) / self.res.full

    def summary(self) -> dict[str, float]:
        """The keep ratio, for the epoch record."""
        return {"rho": self.rho}

    def finalize(self) -> tuple[KeepSet, dict[str, Any]]:
        """The keep-set as decided at step 0 (no projection: it already meets the budget)."""
        r = self.cost()
        return self.keep(), {"R_searched": r, "R_final": r, "rho": self.rho}

    def state(self) -> dict[str, Any]:
        """Optimizer, scaler and the decided keep-set."""
        return {
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "keep": self.keep().to_json(),
            "rho": self.rho,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._keep = KeepSet.from_json(state["keep"])
        self.rho = float(state["rho"])
