"""NViT: global structural pruning by Hessian-aware saliency (``--method nvit``).

The weights train with distillation throughout, masked by the current keep-set (embedding
channels included: ``uvc.arch.keep.masked_keep``, output-exact: LayerNorms normalise over the kept
channels). The saliency of every unit is averaged over the batches since the last pruning step
(``uvc.methods.nvit.saliency``; the first window includes the warmup). Every ``nvit_interval``
batches after
the warmup:

1. per block and kind (heads, aligned QK dims, aligned V dims, MLP units) and for the model-wide
   embedding channels, the alive units are sorted by saliency and cut into fixed-size chunks from
   the lowest (the last ``min`` units of a group are never offered: a block keeps at least one
   head and ``align`` dims/units);
2. every chunk of every group is ranked in one sort by
   ``score' = S/mean(S) - lambda * dR/mean(dR)`` (S: the chunk's summed saliency, dR: the cost
   its removal saves under the budget's metric -- latency from the LUT with ``--metric latency``;
   both relative to their mean over the candidates, so lambda has no units);
3. the lowest chunks are removed: ``nvit_chunks`` of them (NViT's schedule), or, by default, as
   many as it takes for R to follow a line from 1 down to the budget by ``nvit_end`` of the
   post-warmup steps. The step that reaches the budget lands in
   ``[budget * (1 - tolerance), budget]``: a chunk that would overshoot below it is passed over
   for the next one in rank order.

Pruning stops when the budget is met; a schedule that has not met it when the search ends is
finished at once in ``finalize``. Rank 0 decides and broadcasts, so all ranks hold the same
keep-set; the saliency accumulators, the alive units and the schedule's position are the state
a resume restores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from uvc.arch.cost import LatencyTable, model_cost
from uvc.arch.keep import BlockKeep, KeepSet, spec_after
from uvc.arch.merge_schedule import unmerged
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.arch.structmap import Kind
from uvc.methods.common.kd import masked_kd_step, weight_optimizer
from uvc.methods.common.resource import Metric
from uvc.methods.nvit.saliency import Saliency, group_key, groups
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillLoss
from uvc.train.schedules import cosine_lr

if TYPE_CHECKING:
    from uvc.methods.common.config import SearchConfig

logger = logging.getLogger("uvc.methods.nvit")  # the name logs have always shown

# NViT's official chunks for DeiT-B: (chunk, width) per kind; the default chunk of a model is
# the same fraction of its own width.
CHUNK_KINDS = (Kind.EMBED, Kind.HEAD, Kind.QK, Kind.V, Kind.MLP)
OFFICIAL_CHUNKS = {Kind.EMBED: (16, 768), Kind.HEAD: (2, 12), Kind.QK: (8, 64), Kind.V: (8, 64),
                   Kind.MLP: (16, 3072)}  # fmt: skip


def check_nvit_config(cfg: SearchConfig) -> None:
    """Raise ``ValueError`` for NViT settings out of range (called by ``SearchConfig``)."""
    if cfg.nvit_interval < 1 or cfg.nvit_chunks < 0:
        raise ValueError("nvit_interval must be >= 1 and nvit_chunks >= 0")
    if not 0.0 < cfg.nvit_end <= 1.0:
        raise ValueError(f"nvit_end must be in (0, 1], got {cfg.nvit_end}")
    if not (cfg.nvit_lambda >= 0 and math.isfinite(cfg.nvit_lambda)):
        raise ValueError(f"nvit_lambda must be a finite number >= 0, got {cfg.nvit_lambda}")
    if cfg.nvit_chunk is not None:
        sizes = tuple(cfg.nvit_chunk)
        if len(sizes) != 5 or any(int(c) != c or c < 1 for c in sizes):
            raise ValueError(
                f"nvit_chunk needs 5 positive sizes (embed, heads, qk, v, mlp): {sizes}"
            )
        if any(
            c % cfg.align for k, c in zip(CHUNK_KINDS, sizes, strict=True) if k is not Kind.HEAD
        ):
            raise ValueError(
                f"nvit_chunk embed/qk/v/mlp sizes must be multiples of align {cfg.align}"
            )


def chunk_sizes(spec: ViTSpec, chunk: tuple[int, ...] | None, align: int) -> dict[Kind, int]:
    """Chunk size per kind: ``chunk`` as given, or NViT's DeiT-B chunks scaled to ``spec``."""
    if chunk is not None:
        return {k: int(c) for k, c in zip(CHUNK_KINDS, chunk, strict=True)}
    att = [b for b in spec.blocks if b.has_attn]
    widths = {
        Kind.EMBED: spec.embed_dim,
        Kind.HEAD: max((b.heads for b in att), default=1),
        Kind.QK: max((b.qk_dim for b in att), default=1),
        Kind.V: max((b.v_dim for b in att), default=1),
        Kind.MLP: max((b.mlp_dim for b in spec.blocks), default=1),
    }
    out = {}
    for kind, (c, ref) in OFFICIAL_CHUNKS.items():
        step = 1 if kind is Kind.HEAD else align
        out[kind] = max(step, round(widths[kind] * c / ref / step) * step)
    return out


def embed_floor(width: int, lut: Any, align: int) -> int:
    """The narrowest embedding NViT may keep: ``align`` channels, and no narrower than a latency
    table's embedding axis reaches (it cannot price a width outside it)."""
    low = min(align, width)
    grid = getattr(lut, "embed_grid", None) if lut is not None else None
    return max(low, math.ceil(min(grid))) if grid else low


@dataclass(frozen=True)
class Chunk:
    """A candidate for removal: ``units`` of group ``key`` (``"3.mlp"``, ``"embed"``)."""

    key: str
    units: tuple[int, ...]
    saliency: float
    saving: float
    score: float


def rank_chunks(
    alive: dict[str, Tensor],
    scores: dict[str, Tensor],
    sizes: dict[str, int],
    mins: dict[str, int],
    savings: dict[str, float],
    lam: float,
) -> list[Chunk]:
    """Every removable chunk of every group, lowest ``score'`` first (module docstring, step 2).

    Args:
        alive: per group, which units are still there (bool).
        scores: per group, the saliency of every unit (alive or not).
        sizes / mins: per group, the chunk size and the units that must survive.
        savings: per group, the cost one chunk's removal saves (R fraction).
        lam: the weight of the saving.
    """
    raw: list[tuple[str, tuple[int, ...], float, float, int]] = []
    for order, (key, live) in enumerate(alive.items()):
        if key not in savings:
            continue
        idx = torch.nonzero(live).flatten()
        sal = scores[key][idx].double()
        # Ascending saliency, ties by index (a stable sort of an index-ordered list).
        ranked = idx[torch.argsort(sal, stable=True)]
        c = sizes[key]
        for j in range(max(0, len(idx) - mins[key]) // c):
            units = ranked[j * c : (j + 1) * c]
            raw.append((key, tuple(sorted(units.tolist())), float(scores[key][units].sum()),
                        savings[key], order))  # fmt: skip
    if not raw:
        return []
    mean_s = sum(r[2] for r in raw) / len(raw)
    mean_c = sum(r[3] for r in raw) / len(raw)
    out = []
    for key, units, s, c, order in raw:
        score = (s / mean_s if mean_s > 0 else s) - lam * (c / mean_c if mean_c > 0 else 0.0)
        out.append((score, order, units, Chunk(key, units, s, c, score)))
    out.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in out]


class NViT:
    """The ``nvit`` method (see module docstring)."""

    def __init__(self, model: ViT, cfg: SearchConfig, device: torch.device, dist: DistInfo):
        self.model, self.cfg, self.device, self.dist = model, cfg, device, dist
        spec = self.spec = model.spec
        self.lut = LatencyTable.load(cfg.lut) if cfg.metric is Metric.LATENCY else None
        if self.lut is not None:
            self.lut.check_spec(spec)
        # The budget is a fraction of the model without token merging (merging saves count).
        self.full = self._spec_cost(unmerged(spec))
        self.opt, self.scaler = weight_optimizer(model, cfg, device)
        self.saliency = Saliency(spec)
        self.alive: dict[str, Tensor] = {}
        self.sizes: dict[str, int] = {}
        self.mins: dict[str, int] = {}
        per_kind = chunk_sizes(spec, cfg.nvit_chunk, cfg.align)
        for block, kind in groups(spec):
            key = group_key(block, kind)
            n = self.saliency._units(block, kind)
            self.alive[key] = torch.ones(n, dtype=torch.bool)
            self.sizes[key] = per_kind[kind]
            self.mins[key] = 1 if kind is Kind.HEAD else min(cfg.align, n)
        self.mins["embed"] = embed_floor(spec.embed_dim, self.lut, cfg.align)
        # A LUT without an embedding axis cannot price a narrower model: keep the width then.
        self.prune_embed = self.lut is None or getattr(self.lut, "embed_grid", None) is not None
        if not self.prune_embed:
            logger.warning("the latency table has no embedding axis: embed width is not pruned")
        self.prune_start: int | None = None
        self.done = False
        self.events: list[dict[str, Any]] = []
        self._keep: KeepSet | None = None

    # --- cost ---------------------------------------------------------------------------------

    def _spec_cost(self, spec: ViTSpec) -> float:
        if self.lut is not None:
            return self.lut.model_ms(spec)
        c = model_cost(spec)
        return float(c.macs if self.cfg.metric is Metric.MACS else c.params)

    def _cost_of(self, alive: dict[str, Tensor]) -> float:
        return self._spec_cost(spec_after(self.spec, _keep_of(self.spec, alive))) / self.full

    def _savings(self) -> dict[str, float]:
        """Per group: what removing one chunk saves now (R fraction)."""
        now, out = self._cost_of(self.alive), {}
        for key, live in self.alive.items():
            if key == "embed" and not self.prune_embed:
                continue
            units = torch.nonzero(live).flatten()
            if len(units) - self.mins[key] < self.sizes[key]:
                continue
            trial = dict(self.alive)
            trial[key] = live.clone()
            trial[key][units[: self.sizes[key]]] = False
            out[key] = now - self._cost_of(trial)
        return out

    # --- the Method interface -----------------------------------------------------------------

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
        """One distillation step of the masked model; a pruning step every ``nvit_interval``."""
        cfg, model = self.cfg, self.model
        lr = cosine_lr(step, total, cfg.lr, 0, cfg.min_lr)
        if not warmup and self.prune_start is None:
            self.prune_start = step

        def observe() -> None:  # the saliency reads the true, rank-averaged gradients
            if not self.done:
                self.saliency.observe(model)

        loss = masked_kd_step(model, self.keep(), x, t, teacher, loss_fn, self.opt, self.scaler,
                              lr=lr, amp=cfg.amp, device=self.device, dist=self.dist,
                              on_grads=observe)  # fmt: skip
        rec: dict[str, Any] = {"kind": "search_step", "step": step, "loss": loss,
                               "budget": cfg.budget, "lr": lr}  # fmt: skip
        start = self.prune_start
        if start is not None and not self.done and (step - start + 1) % cfg.nvit_interval == 0:
            span = max(1, round(cfg.nvit_end * (total - start)))
            frac = min(1.0, (step + 1 - start) / span)
            paced = cfg.nvit_chunks == 0
            target = 1.0 - frac * (1.0 - cfg.budget) if paced else cfg.budget
            rec["pruned"] = self._prune(step, target, None if paced else cfg.nvit_chunks)
        rec["R"] = self.cost()
        rec["embed_dim"] = int(self.alive["embed"].sum())
        return rec

    def keep(self) -> KeepSet:
        """The keep-set of the alive units."""
        if self._keep is None:
            self._keep = _keep_of(self.spec, self.alive)
        return self._keep

    def cost(self) -> float:
        """R / R_full of the alive units."""
        return self._cost_of(self.alive)

    def summary(self) -> dict[str, float]:
        """Embedding width, pruning steps so far, and whether the budget is met."""
        return {"embed_dim": float(self.alive["embed"].sum()),
                "pruning_steps": float(len(self.events)), "done": float(self.done)}  # fmt: skip

    def finalize(self) -> tuple[KeepSet, dict[str, Any]]:
        """The keep-set; a schedule that did not reach the budget is finished at once."""
        searched = self.cost()
        if not self.done:
            logger.warning("nvit: budget not reached by the schedule (R=%.4f): pruning the rest "
                           "by the last saliency", searched)  # fmt: skip
            self._prune(-1, self.cfg.budget, None)
        final = self.cost()
        return self.keep(), {"R_searched": searched, "R_final": final,
                             "embed_dim": int(self.alive["embed"].sum()),
                             "pruning_steps": len(self.events)}  # fmt: skip

    def state(self) -> dict[str, Any]:
        """Optimizer, scaler, saliency accumulators, alive units and the schedule's position."""
        return {
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "saliency": self.saliency.state_dict(),
            "alive": {k: v.clone() for k, v in self.alive.items()},
            "prune_start": self.prune_start,
            "done": self.done,
            "events": list(self.events),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``state``."""
        self.opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.saliency.load_state_dict(state["saliency"])
        self.alive = {k: v.clone().bool() for k, v in state["alive"].items()}
        self.prune_start = state["prune_start"]
        self.done = bool(state["done"])
        self.events = list(state["events"])
        self._keep = None

    # --- pruning ------------------------------------------------------------------------------

    def _prune(self, step: int, target: float, count: int | None) -> dict[str, int]:
        """Remove chunks (rank 0 decides, every rank applies); returns units removed per group."""
        decision = self._decide(target, count) if self.dist.is_main else None
        if self.dist.enabled:
            import torch.distributed as tdist

            box = [decision]
            tdist.broadcast_object_list(box, src=0)
            decision = box[0]
        alive, done, removed = decision  # type: ignore[misc]
        self.alive = {k: torch.tensor(v, dtype=torch.bool) for k, v in alive.items()}
        self.done = done
        self._keep = None
        self.saliency.reset()
        r = self.cost()
        self.events.append({"step": step, "R": r, "target": target, "removed": removed})
        logger.info("nvit step %d: removed %s, R=%.4f (target %.4f)", step, removed, r, target)
        return removed

    def _decide(self, target: float, count: int | None) -> tuple[dict, bool, dict[str, int]]:
        """The lowest chunks down to ``target`` (or ``count`` of them); lands on the budget."""
        cfg = self.cfg
        ranked = rank_chunks(self.alive, self.saliency.scores(), self.sizes, self.mins,
                             self._savings(), cfg.nvit_lambda)  # fmt: skip
        alive = {k: v.clone() for k, v in self.alive.items()}
        cost, floor = self._cost_of(alive), cfg.budget * (1 - cfg.tolerance)
        removed: dict[str, int] = {}
        taken, done, overshoot = 0, cost <= cfg.budget, None
        for ch in ranked:
            if done or cost <= target or (count is not None and taken >= count):
                break
            trial = dict(alive)
            trial[ch.key] = alive[ch.key].clone()
            trial[ch.key][list(ch.units)] = False
            new = self._cost_of(trial)
            if new < floor:
                overshoot = overshoot or (ch, trial, new)
                continue  # too big a step past the budget: a smaller chunk may land inside
            alive, cost, taken, done = trial, new, taken + 1, new <= cfg.budget
            removed[ch.key] = removed.get(ch.key, 0) + len(ch.units)
        if not done and cost > target and overshoot is not None and count is None:
            ch, alive, cost = overshoot
            done = cost <= cfg.budget
            removed[ch.key] = removed.get(ch.key, 0) + len(ch.units)
            logger.warning("nvit: no chunk lands within tolerance; R=%.4f", cost)
        return {k: v.tolist() for k, v in alive.items()}, done, removed


def _keep_of(spec: ViTSpec, alive: dict[str, Tensor]) -> KeepSet:
    """The keep-set of per-group alive flags."""

    def idx(key: str) -> tuple[int, ...]:
        return tuple(torch.nonzero(alive[key]).flatten().tolist())

    blocks = []
    for i, b in enumerate(spec.blocks):
        att = (idx(f"{i}.head"), idx(f"{i}.qk"), idx(f"{i}.v")) if b.has_attn else ((), (), ())
        blocks.append(BlockKeep(*att, idx(f"{i}.mlp") if b.has_mlp else ()))
    embed = idx("embed")
    return KeepSet(blocks, None if len(embed) == spec.embed_dim else embed)
