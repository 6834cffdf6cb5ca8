"""``SearchConfig``: the settings of the search stage, every method's, validated at construction
(each method checks its own through the registry).

Defaults follow UVC where it states them; the NViT settings follow its official recipe scaled to
this project's schedules (see ``uvc.methods.nvit.method``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from typing import Any

from uvc.methods.common.importance import Criterion
from uvc.methods.common.resource import Metric


class GateMode(str, Enum):
    """Which gates take part in the search."""

    NONE = "none"
    BLOCK = "block"  # UVC's whole-block gate only
    PARTS = "parts"  # separate attention and MLP gates
    ALL = "all"  # both


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search (defaults follow UVC where it states them).

    Args:
        method: the compression method (``uvc.methods.METHODS``): uvc (primal-dual), uniform,
            nvit (global Hessian-aware pruning).
        budget: target cost as a fraction of the uncompressed model's, in (0, 1].
        metric: what the budget counts (macs, params, latency).
        lut: latency lookup-table JSON (required for the latency metric).
        epochs / warmup_epochs: search length; gates stay fixed during warmup.
        lr / min_lr / weight_decay: AdamW on the weights, cosine from lr to min_lr.
        struct_lr / struct_clip: projected SGD on the counts (UVC: 0.02, norm clip 1).
        gate_lr / gating_interval: gate SGD, every ``gating_interval`` steps.
        gates: which skip gates are searched (all: block, attention and MLP gates).
        warmup_gate: the whole-block gate's value during warmup (UVC: 0.5); the attention/MLP gates
            (this project's addition) are held at 1 then.
        gumbel_tau / gumbel_tau_end: Gumbel-softmax temperature, geometric from start to end.
        z_lr / z_lr_end: step size of the budget dual, linear from start to end (None: constant).
        y_lr: step size of the group duals y, p.
        mask_temperature: width (in groups) of the count gradient's sigmoid surrogate.
        importance: magnitude (UVC), taylor or fisher.
        per_head_v: UVC's per-head value counts instead of one aligned count per block.
        align: kept qk/v/MLP widths are multiples of this.
        amp: None, "bf16" or "fp16" (CUDA only; fp16 uses a GradScaler).
        seed: seeds the gate noise.
        log_every: steps between step records.
        tolerance: the final projection lands within ``[budget * (1 - tolerance), budget]``.
        progress: show a tqdm progress bar (rank 0 only).
        schedule_aware: scale the count step and z's ascent up when the search has too few
            pruning steps for the counts to cross their range (see ``PrimalDual.pace``).
        budget_hinge: the primal budget term is ``z * max(R - budget, 0)`` (no push below the
            budget) instead of UVC's ``z * (R - budget)``.
        nvit_interval: nvit: batches between pruning steps (saliency is averaged over them).
        nvit_chunks: nvit: chunks removed per pruning step; 0 paces the removals by cost (each
            step removes the lowest chunks until R follows a line from 1 down to the budget,
            reached after ``nvit_end`` of the post-warmup steps).
        nvit_end: nvit: fraction of the post-warmup steps by which the paced schedule reaches
            the budget (the rest trains the pruned model).
        nvit_lambda: nvit: weight of the cost saved in a chunk's rank (score - lambda * saving,
            both relative to their mean over the candidate chunks); 0 ranks by saliency alone.
        nvit_chunk: nvit: chunk sizes (embed, heads, qk, v, mlp); None takes NViT's DeiT-B
            chunks (16, 2, 8, 8, 16 of 768, 12, 64, 64, 3072) as fractions of this model's
            widths, rounded to ``align`` (at least 1).
    """

    method: str = "uvc"
    budget: float = 0.5
    metric: Metric = Metric.MACS
    lut: str | None = None
    epochs: int = 30
    warmup_epochs: int = 5
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    struct_lr: float = 0.02
    struct_clip: float = 1.0
    gate_lr: float = 0.02
    gating_interval: int = 1
    gates: GateMode = GateMode.ALL
    warmup_gate: float = 0.5
    gumbel_tau: float = 0.5
    gumbel_tau_end: float = 0.5
    z_lr: float = 0.1
    z_lr_end: float | None = None
    y_lr: float = 0.001
    mask_temperature: float = 1.0
    importance: str = "magnitude"
    per_head_v: bool = False
    align: int = 1
    amp: str | None = None
    seed: int = 0
    log_every: int = 10
    tolerance: float = 0.01
    budget_hinge: bool = True
    schedule_aware: bool = True
    progress: bool = True
    nvit_interval: int = 10
    nvit_chunks: int = 0
    nvit_end: float = 0.75
    nvit_lambda: float = 0.1
    nvit_chunk: tuple[int, int, int, int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", _enum(Metric, self.metric, "metric"))
        object.__setattr__(self, "gates", _enum(GateMode, self.gates, "gates"))
        _enum(Criterion, self.importance, "importance")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be a fraction in (0, 1], got {self.budget}")
        if self.metric is Metric.LATENCY and not self.lut:
            raise ValueError("the latency metric needs a latency lookup table (lut=...)")
        if self.epochs < 1 or not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError("need epochs >= 1 and 0 <= warmup_epochs <= epochs")
        for name in ("lr", "struct_lr", "gate_lr", "gumbel_tau", "gumbel_tau_end", "struct_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "z_lr", "y_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gating_interval < 1 or self.align < 1 or self.log_every < 1:
            raise ValueError("gating_interval, align and log_every must be >= 1")
        if not 0.0 <= self.warmup_gate <= 1.0:
            raise ValueError(f"warmup_gate must be in [0, 1], got {self.warmup_gate}")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        if not 0.0 <= self.tolerance < 0.5:
            raise ValueError(f"tolerance must be in [0, 0.5), got {self.tolerance}")
        check_method_config(self)  # each method checks its own settings

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as strings) for checkpoints and logs."""
        d = dataclasses.asdict(self)
        return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}


def _enum(cls: Any, value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[e.value for e in cls]}, got {value!r}") from None


# The method registry: ``--method NAME`` -> where its class and its settings check live. Import
# strings, not imports: the settings sit below the methods (which import them), list the names
# without loading a method, and a method is loaded only when it is built or checked.
@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives: ``module:Class`` and, optionally, ``module:check(cfg)``."""

    cls: str
    check: str | None = None


METHODS: dict[str, MethodEntry] = {
    "uvc": MethodEntry("uvc.methods.uvc.primal_dual:PrimalDual"),
    "uniform": MethodEntry("uvc.methods.uniform:Uniform"),
    "nvit": MethodEntry(
        "uvc.methods.nvit.method:NViT", "uvc.methods.nvit.method:check_nvit_config"
    ),
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def _entry(name: str) -> MethodEntry:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}") from None


def check_method_config(cfg: SearchConfig) -> None:
    """Run the chosen method's own check of ``cfg`` (raises ``ValueError``)."""
    entry = _entry(cfg.method)
    if entry.check is not None:
        _load(entry.check)(cfg)
