"""Stage 1 of UVC: the primal-dual architecture search (masked student, KD from the teacher).

One step (DESIGN.md, "Facts about UVC"):

1. masks from the current counts and importance scores; gates sampled (Gumbel, soft) or, during
   warmup, fixed; forward the masked student, the teacher under no_grad;
2. the Lagrangian ``KD + y.LS + p.LS + z (R - budget)`` backpropagates into weights, counts and
   gate logits (gradients all-reduced over ranks, so every rank takes the same step);
3. AdamW on the weights, then the proximal shrink of the pruned groups by ``1 / (1 + 2 lr dual)``;
4. projected SGD on the counts (gradient norm clipped to 1, clamped into range);
5. gate SGD every ``gating_interval`` steps (gates belong to no other optimizer);
6. dual ascent on z, y, p (clamped at 0).

After the last epoch a deterministic projection makes the decisions meet the budget. The step
itself and ``SearchConfig`` live in ``uvc.primal_dual``; this module runs the epochs around it:
checkpoints, resume, validation of the masked model, DDP, the final projection.
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

from uvc.checkpoint import Checkpoint, atomic_write_text, load_checkpoint, save_checkpoint
from uvc.dist import DistInfo
from uvc.distill import DistillLoss
from uvc.dual import (
    project_to_budget,
)
from uvc.errors import DataError, UvcError
from uvc.finetune import evaluate
from uvc.keep import KeepSet, hard_masks, masked, spec_after
from uvc.model import ViT
from uvc.primal_dual import PrimalDual, SearchConfig
from uvc.spec import ViTSpec
from uvc.structure import keep_from_hard

__all__ = ["SearchConfig", "SearchResult", "evaluate_masked", "run_search"]

logger = logging.getLogger(__name__)
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

    The same ``uvc.finetune.evaluate`` as every other accuracy (one unit, percent, everywhere);
    ``dist`` is accepted for symmetry, ``evaluate`` sums over ranks itself.
    """
    with masked(model, hard_masks(model.spec, keep)):
        return evaluate(model, loader, device)


def run_search(
    model: ViT,
    teacher: nn.Module | None,
    train_loader: Any,
    val_loader: Any,
    loss_fn: DistillLoss,
    cfg: SearchConfig,
    out_dir: Path | None,
    *,
    device: torch.device,
    dist: DistInfo = _SINGLE,
    resume: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Search the architecture of ``model`` under ``cfg.budget`` (see module docstring).

    Args:
        model: the student, a full-shape ``ViT`` (trained in place).
        teacher: the frozen teacher (eval mode, no gradients), or None for labels only.
        train_loader / val_loader: yield ``(images, targets)``; targets are class indices or soft
            (B, C). ``val_loader`` may be None.
        loss_fn: the distillation loss.
        cfg: search settings.
        out_dir: where ``search.pt`` (every epoch), ``spec.json`` and ``keep.json`` go. Only rank
            0 reads or writes it (other ranks may pass None; a resume is broadcast to them).
        device: this rank's device.
        dist: this rank's place in a torchrun job.
        resume: continue from ``out_dir/search.pt`` (a killed epoch restarts from its start).
        log: receives every step/epoch record.
    """
    from tqdm import tqdm

    if cfg.amp and device.type != "cuda":
        raise UvcError(f"mixed precision ({cfg.amp}) needs a CUDA device, got {device}")
    try:
        steps_per_epoch = len(train_loader)
    except TypeError:
        raise DataError("the training loader must have a length (batches per epoch)") from None
    if steps_per_epoch == 0:
        raise DataError("the training loader yields no batches")
    total = cfg.epochs * steps_per_epoch
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    s = PrimalDual(model, cfg, device, dist)
    history: list[dict[str, Any]] = []
    ckpt_path = out_dir / "search.pt" if out_dir is not None else None
    start = 0

    def emit(rec: dict[str, Any]) -> None:
        history.append(rec)
        if log is not None:
            log(rec)

    ck = _load_for_resume(ckpt_path if resume else None, dist)
    if ck is not None:
        if ck.spec != model.spec:
            raise UvcError(f"{ckpt_path} was written for another architecture than this model")
        if ck.extra.get("config") != cfg.to_dict():
            logger.warning(
                "resuming %s with a different search config than it was started with", ckpt_path
            )
        model.load_state_dict(ck.state_dict)
        s.load_state(ck.extra)
        torch.set_rng_state(ck.extra["rng"])
        if device.type == "cuda" and ck.extra.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck.extra["cuda_rng"], device)
        history.extend(ck.extra.get("history", []))
        start = int(ck.extra["epoch"]) + 1
        logger.info("resuming the search at epoch %d of %d", start, cfg.epochs)
    else:
        _sync_model(model, dist)

    bar = tqdm(
        total=total,
        initial=start * steps_per_epoch,
        disable=not (dist.is_main and cfg.progress),
        desc="search",
    )
    for epoch in range(start, cfg.epochs):
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        warmup = epoch < cfg.warmup_epochs
        for i, (x, t) in enumerate(train_loader):
            step = epoch * steps_per_epoch + i
            rec = s.step(x.to(device), t.to(device), teacher, loss_fn, step, total, warmup)
            bar.update(1)
            if step % cfg.log_every == 0 or i == steps_per_epoch - 1:
                emit({**rec, "epoch": epoch})
                bar.set_postfix(loss=f"{rec['loss']:.3f}", R=f"{rec['R']:.3f}", z=f"{rec['z']:.3f}")
        keep = s.keep()
        acc = None
        if val_loader is not None:
            acc = evaluate_masked(model, keep, val_loader, device, dist)
        rec = {
            "kind": "search_epoch",
            "epoch": epoch,
            "R_hard": s.cost(s.hard()),
            "budget": cfg.budget,
            "z": float(s.duals.z),
            "val_acc_masked": acc,
        }
        history.append(rec)
        if dist.is_main and ckpt_path is not None:
            extra = {
                **s.state(),
                "kind": "uvc-search",
                "epoch": epoch,
                "step": (epoch + 1) * steps_per_epoch,
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "config": cfg.to_dict(),
                "history": history,
            }
            save_checkpoint(
                ckpt_path, Checkpoint(model.spec, model.state_dict(), {"kind": "search"}, extra)
            )
        if log is not None:
            log(rec)
        logger.info("search epoch %d: R=%.4f z=%.4f acc=%s", epoch, rec["R_hard"], rec["z"], acc)
    bar.close()

    hard = s.hard()
    searched = s.cost(hard)
    scores = s.importance(model)
    projected = project_to_budget(hard, scores, s.res, cfg.budget, cfg.align, cfg.tolerance)
    keep = keep_from_hard(model.spec, scores, projected)
    new_spec = spec_after(model.spec, keep)
    final = s.res.of_spec(new_spec) / s.res.full
    emit(
        {
            "kind": "search_final",
            "R_searched": searched,
            "R_final": final,
            "budget": cfg.budget,
            "metric": cfg.metric.value,
        }
    )
    logger.info(
        "search: R %.4f before projection, %.4f final (budget %.4f)", searched, final, cfg.budget
    )
    if dist.is_main and out_dir is not None:
        new_spec.save(out_dir / "spec.json")
        atomic_write_text(out_dir / "keep.json", json.dumps([k.to_dict() for k in keep]) + "\n")
    st = s.state()
    flat = {
        f"{part}.{k}": v.detach().cpu()
        for part in ("structure", "gates", "duals")
        for k, v in st[part].items()
    }
    return SearchResult(keep, new_spec, model, history, searched, final, flat)
