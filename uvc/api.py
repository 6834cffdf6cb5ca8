"""The Python API for users' own training code: ``uvc.compress`` and friends.

``compress`` runs the same stages as ``uvc train`` (search with the chosen method, materialization,
dense fine-tune with distillation) on a model and loaders the caller already has. Its settings are
``uvc train``'s options with the same names and the same defaults: they are read from
``uvc.settings.TrainConfig``, the one place they live.

This module sits above the core (it joins ``uvc`` training and ``uvc.export``), like the pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uvc.arch.keep import KeepSet
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError

log = logging.getLogger("uvc.api")

# ``uvc train`` options that ``compress`` takes as keyword settings (data, model, teacher and
# output folder are its positional arguments instead).
SETTINGS = (
    "search_epochs",
    "warmup_epochs",
    "finetune_epochs",
    "lr",
    "importance",
    "gates",
    "per_head_v",
    "align",
    "kd",
    "alpha",
    "tau",
    "label_smoothing",
    "lut",
    "amp",
    "device",
    "seed",
    "progress",
    "merge",
)


@dataclass
class CompressResult:
    """What ``compress`` produced.

    Args:
        model: the dense compressed model (a ``uvc`` ViT, physically smaller, eval mode).
        spec: its architecture; ``keep``: which units of the original it kept.
        accuracy_before / accuracy_after: top-1 (%) on the validation loader (None without one).
        macs_before / macs_after / params_before / params_after: per image, from ``uvc.arch.cost``.
        cost_searched: the budget metric's ratio the method reached before its final rounding.
        cost_final: the same ratio for ``spec``.
        history: every log record (search steps and epochs, fine-tune epochs).
    """

    model: ViT
    spec: ViTSpec
    keep: KeepSet
    accuracy_before: float | None
    accuracy_after: float | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    cost_searched: float
    cost_final: float
    history: list[dict[str, Any]] = field(default_factory=list)


def as_vit(model: nn.Module, **hints: Any) -> ViT:
    """``model`` as a ``uvc`` ViT: itself, or converted with measured parity (``uvc.adapters``)."""
    if isinstance(model, ViT):
        return model
    from uvc.adapters import from_module

    return from_module(model, **hints)


def compress(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    budget: float = 0.5,
    metric: str = "macs",
    method: str = "uvc",
    teacher: nn.Module | None = None,
    *,
    out: str | Path | None = None,
    steps_per_epoch: int | None = None,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> CompressResult:
    """Compress ``model`` to ``budget`` of its ``metric`` and fine-tune the dense result.

    Args:
        model: a ``uvc`` ViT or a model ``uvc.adapters`` converts (timm ``VisionTransformer``,
            torchvision, Hugging Face, ``nn.TransformerEncoder`` ViTs; parity is checked).
        train_loader / val_loader: any iterables of ``(images, labels)``; no ``len`` needed
            (an ``IterableDataset`` works). Without a validation loader no accuracy is reported.
        budget: fraction of the metric to keep, in (0, 1].
        metric: ``macs``, ``params`` or ``latency`` (needs ``lut=``).
        method: ``uvc`` (primal-dual search) or ``uniform`` (the naive baseline).
        teacher: the distillation teacher (default: a frozen copy of the uncompressed model).
        out: a folder for checkpoints (``search.pt``, ``finetune.pt``): rerunning with the same
            folder resumes. None keeps everything in memory.
        steps_per_epoch: batches per epoch for loaders without ``len`` (else counted once).
        log_fn: receives every log record.
        **settings: ``uvc train``'s options by name, e.g. ``search_epochs=10``, ``lr=1e-3``,
            ``kd="soft"``, ``align=8``, ``device="cuda"`` (see ``SETTINGS``); ``merge=8`` or
            ``merge=[8, 8, 4, 0]``: token merging (ToMe) in the compressed model, counted by the
            budget (``--merge``).

    Raises:
        UvcError: a setting is unknown or out of range, or the model cannot be converted.
    """
    from uvc.train.dist import init_distributed
    from uvc.train.finetune import evaluate

    cfg = _settings(budget, metric, method, settings)
    dist, device = init_distributed(cfg.device)
    student = as_vit(model)
    if out is not None and dist.is_main:
        from uvc.files.rundir import claim

        # The same rule as uvc train: a new or empty folder, or one compress created before.
        claim(out, "compress", option="out")
    torch.manual_seed(cfg.seed)
    history: list[dict[str, Any]] = []

    def record(rec: dict[str, Any]) -> None:
        history.append(rec)
        if log_fn is not None:
            log_fn(rec)

    before = None if val_loader is None else evaluate(student.to(device), val_loader, device)
    dense, search, after = compress_stages(
        copy.deepcopy(student), teacher if teacher is not None else copy.deepcopy(student),
        train_loader, val_loader, cfg, Path(out) if out is not None else None,
        device=device, dist=dist, log=record, steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    return _result(
        student.spec, dense, search, before, after if before is not None else None, history
    )


def _settings(budget: float, metric: str, method: str, settings: dict[str, Any]) -> Any:
    """``compress``'s settings as a validated ``TrainConfig`` (its defaults, its checks)."""
    from uvc.settings import TrainConfig

    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UvcError(f"unknown setting(s) {unknown}; compress takes {', '.join(SETTINGS)}")
    merge = settings.get("merge")
    if merge is not None and not isinstance(merge, str):  # 8 or [8, 8, 4]: --merge's text
        items = [merge] if isinstance(merge, int) else list(merge)
        settings = {**settings, "merge": ",".join(str(r) for r in items)}
    try:
        return TrainConfig(budget=budget, metric=metric, method=method, **settings)
    except (TypeError, ValueError) as exc:
        raise UvcError(str(exc)) from None


def _result(
    original: ViTSpec,
    dense: ViT,
    search: Any,
    before: float | None,
    after: float | None,
    history: list[dict[str, Any]],
) -> CompressResult:
    from uvc.arch.cost import macs, params

    return CompressResult(
        model=dense.cpu().eval(),
        spec=dense.spec,
        keep=search.keep,
        accuracy_before=before,
        accuracy_after=after,
        macs_before=macs(original),
        macs_after=macs(dense.spec),
        params_before=params(original),
        params_after=params(dense.spec),
        cost_searched=search.cost_searched,
        cost_final=search.cost_final,
        history=history,
    )


def compress_stages(
    student: ViT,
    teacher: nn.Module | None,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    cfg: Any,
    out: Path | None,
    *,
    device: torch.device,
    dist: Any,
    log: Callable[[dict[str, Any]], None] | None,
    steps_per_epoch: int | None = None,
    mixup: Callable | None = None,
) -> tuple[ViT, Any, float]:
    """Search -> materialize -> fine-tune: the stages ``compress`` and ``uvc train`` share.

    ``cfg`` is a ``TrainConfig``. Returns the dense fine-tuned model, the ``SearchResult`` and
    the final top-1 (%) (0.0 without a validation loader). Every stage resumes from ``out``.
    """
    from uvc.arch.model import apply_merge
    from uvc.export.materialize import materialize
    from uvc.methods.search import run_search
    from uvc.train.distill import DistillConfig, DistillLoss
    from uvc.train.finetune import finetune

    if getattr(cfg, "merge", None) is not None:  # the student merges; the teacher does not
        student = apply_merge(student, cfg.merge)

    loss_fn = DistillLoss(DistillConfig(cfg.kd, cfg.alpha, cfg.tau, cfg.label_smoothing))
    search = run_search(
        student.to(device), teacher, train_loader, val_loader, loss_fn, search_config(cfg),
        out if dist.is_main else None, device=device, dist=dist,
        resume=out is not None and (out / "search.pt").is_file(),
        log=_tagged(log, "search"), steps_per_epoch=steps_per_epoch,
    )  # fmt: skip
    dense = materialize(search.model, search.keep)
    if dense.spec != search.spec:
        raise UvcError("internal: the materialized spec differs from the searched spec")
    if val_loader is not None:
        _log_gap(search.model, dense, search.keep, val_loader, log)
    result = finetune(
        dense, teacher, train_loader, val_loader if val_loader is not None else [], loss_fn,
        finetune_config(cfg, "finetune", cfg.finetune_epochs, steps_per_epoch), out,
        device=device, dist=dist, resume=True, log_fn=log, mixup=mixup,
    )  # fmt: skip
    return result.model, search, result.accuracy


def _log_gap(
    model: ViT, dense: ViT, keep: KeepSet, val: Iterable[Any], log: Any, batches: int = 4
) -> None:
    """Log how far the materialized model is from the searched, masked one (before fine-tune):
    exact for block units, not for embedding channels (LayerNorm over fewer channels)."""
    from uvc.arch.keep import masked_dense_gap

    xs = []
    for i, (x, _) in enumerate(val):
        if i >= batches:
            break
        xs.append(x)
    if not xs:
        return
    gap = masked_dense_gap(model, dense, keep, xs)
    if log is not None:
        log({"stage": "materialize", "event": "gap", **gap})
    msg = "masked vs dense before fine-tuning: max |logit diff| %.3g, top-1 agreement %.2f%%"
    logging.getLogger("uvc.pipeline").info(msg, gap["max_logit_diff"], gap["top1_agreement"])


def search_config(cfg: Any) -> Any:
    """The search stage's ``SearchConfig`` of a ``TrainConfig``."""
    from uvc.methods.common.config import SearchConfig

    wanted = {
        "method": getattr(cfg, "method", "uvc"),
        "budget": cfg.budget,
        "metric": cfg.metric,
        "lut": cfg.lut,
        "epochs": cfg.search_epochs,
        "warmup_epochs": cfg.warmup_epochs,
        "lr": cfg.lr,
        "importance": cfg.importance,
        "gates": getattr(cfg, "gates", "all"),
        "per_head_v": cfg.per_head_v,
        "align": cfg.align,
        "amp": cfg.amp,
        "seed": cfg.seed,
        "progress": cfg.progress,
    }
    for name in ("nvit_lambda", "nvit_interval"):  # None: the SearchConfig default
        if getattr(cfg, name, None) is not None:
            wanted[name] = getattr(cfg, name)
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in wanted.items() if k in names})


def finetune_config(cfg: Any, stage: str, epochs: int, steps_per_epoch: int | None = None) -> Any:
    """A dense stage's ``FinetuneConfig`` (the teacher stage or the fine-tune) of a TrainConfig."""
    from uvc.train.finetune import FinetuneConfig

    return FinetuneConfig(
        epochs=epochs,
        # A tenth of the stage, at most one epoch: a one-epoch fine-tune that is all warmup
        # ends at the peak learning rate and never decays (measured: 69.4% -> 67.9% on CIFAR).
        warmup_epochs=min(1.0, epochs / 10),
        lr=cfg.lr,
        amp=cfg.amp,
        seed=cfg.seed,
        ckpt_name=f"{stage}.pt",
        stage=stage,
        progress=cfg.progress,
        steps_per_epoch=steps_per_epoch,
    )


def _tagged(
    log: Callable[[dict[str, Any]], None] | None, stage: str
) -> Callable[[dict[str, Any]], None] | None:
    if log is None:
        return None
    stage_of = getattr(log, "stage", None)  # a RunLog tags records itself
    if callable(stage_of):
        return stage_of(stage)
    return lambda rec: log({"stage": stage, **rec})
