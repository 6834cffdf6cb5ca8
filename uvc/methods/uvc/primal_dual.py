"""UVC's primal-dual step: the search configuration and the state one search step updates.

One step (UVC, ICLR 2022, and its public code): masks from the current counts and importance scores;
gates sampled (Gumbel, soft) or fixed during warmup; the Lagrangian
``KD + y.LS + p.LS + z (R - budget)`` backpropagated into weights, counts and gate logits; AdamW on
the weights, then the proximal shrink of the pruned groups by ``1 / (1 + 2 lr dual)``; projected SGD
on the counts; gate SGD every ``gating_interval`` steps; dual ascent on z, y, p (clamped at 0).
``uvc.methods.search`` runs the epochs, checkpoints and the final projection around it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import Tensor, nn

from uvc.arch.cost import LatencyTable
from uvc.arch.keep import BlockMasks, KeepSet, masked, spec_after
from uvc.arch.model import ViT
from uvc.methods.common.config import SearchConfig
from uvc.methods.common.importance import Criterion, GroupImportance, magnitude
from uvc.methods.common.resource import Metric, ResourceModel
from uvc.methods.common.structure import HardBlock, SoftBlock, Structure, keep_from_hard
from uvc.methods.uvc.dual import (
    Duals,
    ascend_groups,
    ascend_z,
    hard_block_cost,
    project_to_budget,
    proximal_shrink_,
)
from uvc.methods.uvc.gates import ATTN, BLOCK, MLP, GateMode, Gates
from uvc.train.amp import autocast, check_amp, grad_scaler
from uvc.train.dist import DistInfo, all_reduce_grads
from uvc.train.distill import DistillLoss
from uvc.train.optim import param_groups
from uvc.train.schedules import cosine_lr, geometric, linear
from uvc.train.teacher import teacher_logits

logger = logging.getLogger("uvc.primal_dual")  # the name logs have always shown
MAX_PACE = 5.0  # the count step and z's ascent are scaled up at most this much
SETTLE_FLOOR = 0.1  # the count and gate steps end at this share of their rate
LANDING = 0.1  # share of the pruning steps, at the end, in which no step may cross the budget
SHORT_GATING = 3  # fewer gate-learning (post-warmup) epochs than this: the gates only add noise


class PrimalDual:
    """The search's mutable state (counts, gates, duals, optimizer) and its step.

    ``uvc.methods.search.run_search`` drives it epoch by epoch; ``bench/search_overhead.py`` times
    its
    ``step`` against a plain distillation step.
    """

    def __init__(self, model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        spec = model.spec
        lut = LatencyTable.load(cfg.lut) if cfg.lut else None
        self.res = ResourceModel(spec, cfg.metric, lut if cfg.metric is Metric.LATENCY else None)
        self.structure = Structure(spec, cfg.per_head_v, cfg.align, cfg.mask_temperature).to(device)
        self.gates = Gates(spec.depth, cfg.gates).to(device)
        gating = cfg.epochs - cfg.warmup_epochs
        if cfg.gates is not GateMode.NONE and gating < SHORT_GATING and dist.is_main:
            # Measured on the CIFAR-10 ViT (README, "Methods"): 1 search epoch with the gates on
            # scored lower than with them off, and no gate closed.
            logger.warning(
                "uvc: the skip gates are learned over only %d search epoch(s) after warmup; in a "
                "search this short their Gumbel noise costs accuracy and no gate closes: "
                "consider --gates none (gates=\"none\")", gating
            )  # fmt: skip
        self.duals = Duals.zeros(spec.depth)
        self.importance = GroupImportance(cfg.importance)
        check_amp(device, cfg.amp)
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
        scaler = grad_scaler(cfg.amp)
        self.scaler = scaler if scaler.is_enabled() else None

    # --- schedules (pure functions of the step) ---
    def lr_at(self, step: int, total: int) -> float:
        return cosine_lr(step, total, self.cfg.lr, 0, self.cfg.min_lr)

    def tau_at(self, step: int, total: int) -> float:
        return geometric(step, total, self.cfg.gumbel_tau, self.cfg.gumbel_tau_end)

    def pace(self, step: int, total: int) -> float:
        """How much faster than their configured rates counts and z move at ``step``.

        The counts move at most ``struct_lr`` per step (gradient norm clipped), so a short search
        cannot carry them across their range: ``n`` fractions in [0, 1) are ``sqrt(n)`` apart
        corner to corner, which takes ``sqrt(n) / struct_lr`` steps. With fewer pruning steps
        (after warmup) than that, the count step and z's ascent are scaled up by their ratio P on
        average, decaying linearly from ``2P - 1`` to 1 over the pruning steps: fast while far
        from the budget, fine steps at the end so R settles on it instead of overshooting. The
        primal-dual itself then reaches the budget; the final projection only rounds. Long
        schedules (the paper's) are unchanged (P = 1).
        """
        if not self.cfg.schedule_aware:
            return 1.0
        warm, pruning = self._pruning_span(total)
        n = sum(p.numel() for p in self.structure.parameters())
        p = max(1.0, (n**0.5 / self.cfg.struct_lr) / pruning)
        left = min(1.0, max(0.0, 1.0 - (step - warm) / pruning))
        # At most MAX_PACE: a handful of steps cannot be made to do a search's work, and
        # steps much larger than that overshoot the budget by whole blocks.
        return min(MAX_PACE, 1.0 + (2 * p - 2) * left)

    def _pruning_span(self, total: int) -> tuple[float, float]:
        """(warmup steps, pruning steps) of a search of ``total`` steps."""
        warm = total * self.cfg.warmup_epochs / self.cfg.epochs
        return warm, max(1.0, total - warm)

    def settle(self, step: int, total: int) -> float:
        """Share of their rate the count and gate steps take at ``step``: 1 for the first half of
        the pruning steps, then a cosine down to ``SETTLE_FLOOR`` at the last step.

        The counts move by a fixed-norm step (the gradient is clipped), so once at the budget they
        circle it: over when the budget term pushes, under when the distillation pulls back
        (measured on the CIFAR-10 ViT: R 0.49 to 0.53 from one 40-step window to the next, and
        0.517 at the last step at budget 0.5). Shrinking the step as the weights' learning rate
        does shrinks that circle, so the search ends on the budget and units stop flipping in and
        out while the weights settle.
        """
        if not self.cfg.schedule_aware:
            return 1.0
        warm, pruning = self._pruning_span(total)
        t = min(1.0, max(0.0, 2.0 * (step - warm) / pruning - 1.0))
        return SETTLE_FLOOR + 0.5 * (1.0 - SETTLE_FLOOR) * (1.0 + math.cos(math.pi * t))

    def landing(self, step: int, total: int) -> bool:
        """Whether ``step`` lies in the last ``LANDING`` share of the pruning steps.

        There the counts and gates take no step that moves the integer decisions from within the
        budget to over it, nor further over it: the cost is piecewise constant in the counts (a
        head is about 1% of a small ViT's MACs), and a count resting on a boundary flips every
        step, so a search ending on the wrong side of one ended one or two heads over budget
        (measured: +3.2% on the CIFAR-10 ViT with one search epoch). Steps that lower the cost,
        or keep it within the budget, still go: once under the budget, the search stays there.
        """
        if not self.cfg.schedule_aware:
            return False
        pruning = self._pruning_span(total)[1]
        return step >= total - max(1.0, LANDING * pruning)

    def urgency(self, step: int, total: int) -> float:
        """z's step grows as the search runs out: ``1 / max(0.1, share of steps left)``.

        The counts drift back up late in a search when the distillation and the group duals pull
        harder than a slowly ascending z pushes (measured on the CIFAR-10 ViT: R 0.50 mid-search,
        0.61 at the end). Scaling z's ascent to the steps that remain makes the budget bind
        before the end, so the final projection only rounds.
        """
        if not self.cfg.schedule_aware:
            return 1.0
        return 1.0 / max(0.1, 1.0 - step / max(1, total))

    def z_lr_at(self, step: int, total: int) -> float:
        end = self.cfg.z_lr if self.cfg.z_lr_end is None else self.cfg.z_lr_end
        return linear(step, total, self.cfg.z_lr, end)

    def forward_gates(self, step: int, total: int, warmup: bool) -> Tensor:
        """(L, 3) gate values used in the forward."""
        if warmup:
            g = torch.ones(self.model.spec.depth, 3, device=self.device)
            if bool(self.gates.active[BLOCK]):
                g[:, BLOCK] = self.cfg.warmup_gate
            return g
        return self.gates.sample(self.tau_at(step, total), self.cfg.seed, step)

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
        """One primal-dual step on a batch (see the module docstring for its order)."""
        cfg, model = self.cfg, self.model
        lr = self.lr_at(step, total)
        for g in self.opt.param_groups:
            g["lr"] = lr
        scores = self.importance(model)
        norms = scores if self.importance.criterion is Criterion.MAGNITUDE else magnitude(model)
        soft = self.structure(scores, norms)
        r = self._resource(soft)
        with autocast(self.device, cfg.amp):
            # ``uvc.train.teacher`` knows how a ``Teachers`` pair feeds a distillation-token
            # student.
            distilled = model.spec.dist_token and model.distilled_training
            t_logits, token_logits = teacher_logits(teacher, x, distilled)
            with masked(model, self._masks(soft, step, total, warmup)):
                out = model(x)
            kd = loss_fn(out, t, t_logits, token_logits)
        lost = torch.stack([sb.lost for sb in soft])
        z = self.duals.z.to(self.device)
        gap = r - cfg.budget
        # With the hinge, the budget term stops pushing the counts once R is under budget (z
        # itself still sees the signed gap and decays); without it, a z wound up while over
        # budget keeps pruning far past the target before it has decayed.
        budget_term = z * (torch.clamp(gap, min=0.0) if cfg.budget_hinge else gap)
        lag = kd + (self.duals.per_part().to(lost) * lost).sum() + budget_term
        self._weights_step(lag)
        # Proximal step on the groups pruned at this step's decisions (before the counts move).
        keep_now = keep_from_hard(model.spec, scores, self.structure.hard())
        shares = proximal_shrink_(model, keep_now, self.duals, lr)
        self._structure_step(step, total, warmup)
        r_val = float(r.detach())
        zlr = self.z_lr_at(step, total) * self.pace(step, total) * self.urgency(step, total)
        self.duals.z = ascend_z(self.duals.z, r_val, cfg.budget, zlr)
        ascend_groups(self.duals, shares, cfg.y_lr)
        return {
            "kind": "search_step",
            "step": step,
            "loss": float(kd.detach()),
            "lagrangian": float(lag.detach()),
            "R": r_val,
            "budget": cfg.budget,
            "z": float(self.duals.z),
            "lr": lr,
            "struct_lr": cfg.struct_lr * self.pace(step, total) * self.settle(step, total),
            "z_lr": zlr,
            "gumbel_tau": self.tau_at(step, total),
            "warmup": warmup,
        }

    def _resource(self, soft: list[SoftBlock]) -> Tensor:
        """R / R_full of the soft state; gates enter straight-through (exact forward)."""
        gst = self.gates.straight_through()
        blocks = [
            self.res.block(
                sb.heads, sb.qk, sb.v, sb.mlp,
                gst[i, BLOCK] * gst[i, ATTN], gst[i, BLOCK] * gst[i, MLP], gst[i, BLOCK], i,
            )
            for i, sb in enumerate(soft)
        ]  # fmt: skip
        return self.res.total(blocks) / self.res.full

    def _masks(
        self, soft: list[SoftBlock], step: int, total: int, warmup: bool
    ) -> list[BlockMasks]:
        """The masked forward's multipliers: soft widths and the sampled (or fixed) gates."""
        gf = self.forward_gates(step, total, warmup)
        active = self.gates.active.tolist()
        part_on = active[ATTN] and not warmup
        return [
            BlockMasks(
                qk=sb.qk_mask,
                v=sb.v_mask,
                mlp=sb.mlp_mask,
                attn_gate=gf[i, ATTN] if part_on else None,
                mlp_gate=gf[i, MLP] if part_on else None,
                gate=gf[i, BLOCK] if active[BLOCK] else None,
            )
            for i, sb in enumerate(soft)
        ]

    def _weights_step(self, lag: Tensor) -> None:
        """Backpropagate the Lagrangian (gradients averaged over ranks) and step AdamW."""
        (self.scaler.scale(lag) if self.scaler else lag).backward()
        extra = list(self.structure.parameters()) + list(self.gates.parameters())
        all_reduce_grads(list(self.model.parameters()) + extra, self.dist)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
            inv = 1.0 / self.scaler.get_scale()
            for p in extra:
                if p.grad is not None:
                    p.grad.mul_(inv)
        self.importance.observe(self.model)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _structure_step(self, step: int, total: int, warmup: bool) -> None:
        """Projected SGD on the counts (norm-clipped), gate SGD every ``gating_interval``; while
        landing, a step that would take the decisions over the budget is undone."""
        cfg = self.cfg
        landing = not warmup and self.landing(step, total)
        if landing:
            state = [p.detach().clone() for p in self._decision_params()]
            before = self.cost()
        sp = [p for p in self.structure.parameters() if p.grad is not None]
        if sp and all(torch.isfinite(p.grad).all() for p in sp):
            torch.nn.utils.clip_grad_norm_(sp, cfg.struct_clip)
            rate = cfg.struct_lr * self.pace(step, total) * self.settle(step, total)
            for p in sp:
                p -= rate * p.grad
        self.structure.project_()
        gate_step = (
            not warmup and cfg.gates is not GateMode.NONE and (step + 1) % cfg.gating_interval == 0
        )
        lg = self.gates.logits
        if gate_step and lg.grad is not None and torch.isfinite(lg.grad).all():
            lg -= cfg.gate_lr * self.settle(step, total) * lg.grad
        for p in self._decision_params():
            p.grad = None
        if landing:
            after = self.cost()
            if after > cfg.budget and after > before:
                for p, old in zip(self._decision_params(), state, strict=True):
                    p.copy_(old)

    def _decision_params(self) -> list[nn.Parameter]:
        """The counts and the gate logits: what the integer decisions are read from."""
        return list(self.structure.parameters()) + list(self.gates.parameters())

    def hard(self) -> list[HardBlock]:
        """Integer decisions now: counts and gates (a part survives iff its gates say keep)."""
        gh = self.gates.hard().cpu()
        return [
            dataclasses.replace(
                hb,
                attn_on=bool(gh[i, BLOCK] and gh[i, ATTN]),
                mlp_on=bool(gh[i, BLOCK] and gh[i, MLP]),
                block_on=bool(gh[i, BLOCK]),
            )
            for i, hb in enumerate(self.structure.hard())
        ]

    def cost(self, hard: list[HardBlock] | None = None) -> float:
        """R / R_full of integer decisions (default: the current ones)."""
        hard = self.hard() if hard is None else hard
        scores = self.importance(self.model)
        blocks = sum(hard_block_cost(self.res, i, hb, scores[i]) for i, hb in enumerate(hard))
        return (self.res.fixed + blocks) / self.res.full

    def keep(self) -> KeepSet:
        """The keep-set of the current counts and gates."""
        return keep_from_hard(self.model.spec, self.importance(self.model), self.hard())

    def summary(self) -> dict[str, float]:
        """The budget dual, for the epoch record."""
        return {"z": float(self.duals.z)}

    def finalize(self) -> tuple[KeepSet, dict[str, Any]]:
        """Round the search's decisions onto the budget: a deterministic projection into
        ``[budget * (1 - tolerance), budget]`` (by score per unit of cost); gates are kept."""
        cfg = self.cfg
        hard = self.hard()
        searched = self.cost(hard)
        scores = self.importance(self.model)
        projected = project_to_budget(hard, scores, self.res, cfg.budget, cfg.align, cfg.tolerance)
        keep = keep_from_hard(self.model.spec, scores, projected)
        final = self.res.of_spec(spec_after(self.model.spec, keep)) / self.res.full
        return keep, {"R_searched": searched, "R_final": final}

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.opt.state_dict(),
            "structure": {k: v.detach().cpu() for k, v in self.structure.state_dict().items()},
            "gates": {k: v.detach().cpu() for k, v in self.gates.state_dict().items()},
            "duals": self.duals.state_dict(),
            "importance": self.importance.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.opt.load_state_dict(st["optimizer"])
        self.structure.load_state_dict(st["structure"])
        self.gates.load_state_dict(st["gates"])
        self.duals.load_state_dict(st["duals"])
        self.importance.load_state_dict(st["importance"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
