"""Stage 1, for every method: the search loop around a ``Method``'s steps.

This module is method-agnostic: it runs the epochs (data order, warmup, checkpoints every epoch,
resume, DDP, logging, validation of the masked model) and asks the method for its step, its
keep-set and its final, budget-projected decisions. The methods live in ``uvc.methods.uvc``
(UVC's primal-dual), ``uvc.methods.nvit`` and ``uvc.methods.uniform``; their settings in
``uvc.methods.common.config.SearchConfig`` (re-exported here).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uvc._fs import atomic_write_text
from uvc.arch.keep import KeepSet, embed_of, masked_keep, spec_after
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError
from uvc.files.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from uvc.methods.common.base import Method, build_method
from uvc.methods.common.config import SearchConfig
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillLoss
from uvc.train.finetune import evaluate
from uvc.train.loaders import epoch_length

__all__ = ["SearchConfig", "SearchResult", "evaluate_masked", "run_search"]

logger = logging.getLogger("uvc.search")  # the name logs have always shown
_SINGLE = DistInfo()  # the default: one process


@dataclass
class SearchResult:
    """What the search found.

    Args:
        keep: the chosen keep-set (materialize it with ``uvc.export.materialize``).
        spec: ``spec_after(model.spec, keep)``.
        model: the full-shape student after search (masks off).
        history: every logged record.
        cost_searched: R / R_full the primal-dual reached, before the final projection.
        cost_final: R / R_full of ``spec``.
        state: the final counts (``structure.*``), gate logits (``gates.*``) and duals
            (``duals.*``), as tensors.
    """

    keep: KeepSet
    spec: ViTSpec
    model: ViT
    history: list[dict[str, Any]] = field(default_factory=list)
    cost_searched: float = float("nan")
    cost_final: float = float("nan")
    state: dict[str, Tensor] = field(default_factory=dict)


def _load_for_resume(path: Path | None, dist: DistInfo) -> Checkpoint | None:
    """Rank 0's checkpoint (or None) on every rank: one rank decides, so no rank diverges.

    Only rank 0 reads the file (other ranks may not even be given ``out_dir``); the payload is
    broadcast, so every rank restores the same weights, counts, gates, duals and optimizer state.
    """
    ck = load_checkpoint(path) if (dist.is_main and path is not None and path.is_file()) else None
    if not dist.enabled:
        return ck
    import torch.distributed as tdist

    box: list[Any] = [None if ck is None else (ck.spec.to_dict(), ck.state_dict, ck.extra)]
    tdist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return None
    spec, state, extra = box[0]
    return Checkpoint(ViTSpec.from_dict(spec), state, {"kind": "search"}, extra)


def _sync_model(model: nn.Module, dist: DistInfo) -> None:
    if not dist.enabled:
        return
    import torch.distributed as tdist

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            tdist.broadcast(t, 0)


@torch.no_grad()
def evaluate_masked(
    model: ViT, keep: KeepSet, loader: Iterable[Any], device: torch.device, dist: DistInfo
) -> float:
    """Top-1 accuracy (%) of ``model`` masked by ``keep`` (what the materialized model computes).

    The same ``uvc.train.finetune.evaluate`` as every other accuracy (one unit, percent,
    everywhere);
    ``dist`` is accepted for symmetry, ``evaluate`` sums over ranks itself.
    """
    with masked_keep(model, keep):  # embedding channels too (NViT)
        return evaluate(model, loader, device)


def run_search(
    model: ViT,
    teacher: nn.Module | None,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    loss_fn: DistillLoss,
    cfg: SearchConfig,
    out_dir: Path | None,
    *,
    device: torch.device,
    dist: DistInfo = _SINGLE,
    resume: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
    steps_per_epoch: int | None = None,
) -> SearchResult:
    """Search the architecture of ``model`` under ``cfg.budget`` with the method ``cfg.method``.

    Args:
        model: the student, a full-shape ``ViT`` (trained in place).
        teacher: the frozen teacher (eval mode, no gradients), or None for labels only.
        train_loader / val_loader: any iterables of ``(images, targets)`` (no ``len`` needed);
            targets are class indices or soft (B, C). ``val_loader`` may be None.
        loss_fn: the distillation loss.
        cfg: search settings (``cfg.method``: uvc, uniform, ...).
        out_dir: where ``search.pt`` (every epoch), ``spec.json`` and ``keep.json`` go. Only rank
            0 reads or writes it (other ranks may pass None; a resume is broadcast to them).
        device: this rank's device.
        dist: this rank's place in a torchrun job.
        resume: continue from ``out_dir/search.pt`` (a killed epoch restarts from its start).
        log: receives every step/epoch record.
        steps_per_epoch: batches per epoch for a loader without ``len`` (counted with one pass
            over the loader when not given: the schedules need the total).
    """
    from tqdm import tqdm

    per_epoch = epoch_length(train_loader, steps_per_epoch)
    total = cfg.epochs * per_epoch
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    method = build_method(cfg.method, model, cfg, device, dist)
    run = _Run(model, method, cfg, out_dir, device, dist, log)
    start = run.restore(resume)
    bar = tqdm(total=total, initial=start * per_epoch, disable=not (dist.is_main and cfg.progress))
    bar.set_description(f"search ({cfg.method})")
    for epoch in range(start, cfg.epochs):
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        warmup = epoch < cfg.warmup_epochs
        for i, (x, t) in enumerate(train_loader):
            if i >= per_epoch:
                break  # a loader longer than announced keeps the schedule's length
            step = epoch * per_epoch + i
            rec = method.step(x.to(device), t.to(device), teacher, loss_fn, step, total, warmup)
            bar.update(1)
            if step % cfg.log_every == 0 or i == per_epoch - 1:
                run.emit({**rec, "epoch": epoch})
                bar.set_postfix(loss=f"{rec['loss']:.3f}", R=f"{rec['R']:.3f}")
        run.end_epoch(epoch, val_loader, per_epoch)
    bar.close()
    return run.finish()


class _Run:
    """The method-agnostic bookkeeping of a search: records, checkpoints, resume, the end."""

    def __init__(
        self,
        model: ViT,
        method: Method,
        cfg: SearchConfig,
        out_dir: Path | None,
        device: torch.device,
        dist: DistInfo,
        log: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.model, self.method, self.cfg, self.out_dir = model, method, cfg, out_dir
        self.device, self.dist, self.log = device, dist, log
        self.history: list[dict[str, Any]] = []
        self.ckpt = out_dir / "search.pt" if out_dir is not None else None

    def emit(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.log is not None:
            self.log(rec)

    def restore(self, resume: bool) -> int:
        """Load ``search.pt`` (rank 0's, broadcast) and return the epoch to start at."""
        ck = _load_for_resume(self.ckpt if resume else None, self.dist)
        if ck is None:
            _sync_model(self.model, self.dist)
            return 0
        if ck.spec != self.model.spec:
            raise UvcError(f"{self.ckpt} was written for another architecture than this model")
        saved = ck.extra.get("config", {})
        if saved.get("method", "uvc") != self.cfg.method:
            raise UvcError(
                f"{self.ckpt} is a {saved.get('method', 'uvc')!r} search; this run asks for "
                f"{self.cfg.method!r}"
            )
        if saved != self.cfg.to_dict():
            logger.warning("resuming %s with another search config than it began with", self.ckpt)
        self.model.load_state_dict(ck.state_dict)
        self.method.load_state(ck.extra)
        torch.set_rng_state(ck.extra["rng"])
        if self.device.type == "cuda" and ck.extra.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck.extra["cuda_rng"], self.device)
        self.history.extend(ck.extra.get("history", []))
        start = int(ck.extra["epoch"]) + 1
        logger.info("resuming the search at epoch %d of %d", start, self.cfg.epochs)
        return start

    def end_epoch(self, epoch: int, val_loader: Iterable[Any] | None, per_epoch: int) -> None:
        """Validate the masked model, log, and checkpoint (rank 0)."""
        acc = None
        if val_loader is not None:
            acc = evaluate_masked(
                self.model, self.method.keep(), val_loader, self.device, self.dist
            )
        rec = {
            "kind": "search_epoch",
            "epoch": epoch,
            "R_hard": self.method.cost(),
            "budget": self.cfg.budget,
            **self.method.summary(),
            "val_acc_masked": acc,
        }
        self.history.append(rec)
        if self.dist.is_main and self.ckpt is not None:
            extra = {
                **self.method.state(),
                "kind": "uvc-search",
                "epoch": epoch,
                "step": (epoch + 1) * per_epoch,
                "rng": torch.get_rng_state(),
                "cuda_rng": (
                    torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
                ),
                "config": self.cfg.to_dict(),
                "history": self.history,
            }
            ck = Checkpoint(self.model.spec, self.model.state_dict(), {"kind": "search"}, extra)
            save_checkpoint(self.ckpt, ck)
        if self.log is not None:
            self.log(rec)
        shown = "n/a" if acc is None else f"{acc:.2f}%"
        logger.info("search epoch %d: R=%.4f masked val top-1 %s", epoch, rec["R_hard"], shown)

    def finish(self) -> SearchResult:
        """The method's final keep-set, recorded, written (rank 0) and returned."""
        keep, record = self.method.finalize()
        new_spec = spec_after(self.model.spec, keep)
        self.emit(
            {
                "kind": "search_final",
                **record,
                "budget": self.cfg.budget,
                "metric": self.cfg.metric.value,
                "method": self.cfg.method,
            }
        )
        logger.info(
            "search (%s): R %.4f before projection, %.4f final (budget %.4f)",
            self.cfg.method, record["R_searched"], record["R_final"], self.cfg.budget,
        )  # fmt: skip
        if self.dist.is_main and self.out_dir is not None:
            new_spec.save(self.out_dir / "spec.json")
            atomic_write_text(self.out_dir / "keep.json", json.dumps(keep.to_json()) + "\n")
        st = self.method.state()
        flat = {
            f"{part}.{k}": v.detach().cpu()
            for part in ("structure", "gates", "duals")
            for k, v in st.get(part, {}).items()
        }
        return SearchResult(
            KeepSet(keep, embed_of(keep)),
            new_spec,
            self.model,
            self.history,
            record["R_searched"],
            record["R_final"],
            flat,
        )
