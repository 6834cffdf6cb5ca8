"""Stage 2: fine-tune a dense model with distillation (also used to train the teacher).

AdamW, linear warmup then cosine decay as a pure function of the step, optional bf16/fp16 autocast
(GPU only), a checkpoint after every epoch (``out_dir/<ckpt_name>``, atomic), so a run killed at any
point resumes at the start of the epoch it was in and reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from uvc.arch.model import ViT
from uvc.errors import CheckpointError, UvcError
from uvc.files.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from uvc.train.amp import AmpMode, autocast, check_amp, grad_scaler
from uvc.train.data import seed_epoch
from uvc.train.dist import DistInfo, all_reduce_mean, barrier
from uvc.train.distill import DistillLoss
from uvc.train.loaders import epoch_length
from uvc.train.optim import param_groups
from uvc.train.schedules import cosine_lr
from uvc.train.teacher import teacher_logits

log = logging.getLogger("uvc.finetune")  # the name logs have always shown


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one dense training run.

    Args:
        epochs: passes over the training set.
        warmup_epochs: linear learning-rate warmup, in epochs (may be fractional).
        lr: peak learning rate (AdamW).
        min_lr: learning rate at the end of the cosine.
        weight_decay: AdamW weight decay (not applied to biases, norms and tokens).
        amp: None (fp32), "bf16" or "fp16"; GPU only.
        grad_clip: max gradient norm, or None.
        seed: seed of the data order and transforms (with the epoch).
        ckpt_name: checkpoint file name in the output folder.
        stage: name recorded in the run log ("finetune", "teacher").
        progress: show tqdm progress bars (rank 0).
        steps_per_epoch: batches per epoch for a loader without ``len`` (None: ``len``, or one
            counting pass over the loader).
    """

    epochs: int = 10
    warmup_epochs: float = 1.0
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    amp: AmpMode | None = None
    grad_clip: float | None = 1.0
    seed: int = 0
    ckpt_name: str = "finetune.pt"
    stage: str = "finetune"
    progress: bool = True
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.amp is not None:
            object.__setattr__(self, "amp", AmpMode(self.amp))
        if self.epochs < 0 or self.warmup_epochs < 0:
            raise ValueError("epochs and warmup_epochs must be >= 0")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min={self.min_lr})")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0 or None")


@dataclass
class FinetuneResult:
    """The trained model, its final top-1 accuracy (%) and per-epoch history."""

    model: ViT
    accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``total``."""
    return cosine_lr(step, total, lr, warmup, min_lr)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: AmpMode | None = None
) -> float:
    """Top-1 accuracy in percent over ``loader`` (summed over ranks under DDP)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        counts[0] += (out.argmax(-1) == y).sum()
        counts[1] += y.numel()
    all_reduce_mean(counts)  # a mean of sums: the ratio is the global accuracy
    model.train(was_training)
    return float(100.0 * counts[0] / counts[1].clamp(min=1))


def finetune(
    model: ViT,
    teacher: nn.Module | None,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: DistillLoss,
    cfg: FinetuneConfig,
    out_dir: Path | None,
    *,
    device: torch.device,
    dist: DistInfo | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, Any]], None] | None = None,
    mixup: Callable | None = None,
) -> FinetuneResult:
    """Train ``model`` (in place) with distillation from ``teacher`` and return it, evaluated.

    Args:
        model: the dense student (any ``ViT``; its spec is saved in the checkpoint).
        teacher: a frozen module giving logits (``uvc.train.teacher.Teachers``), or None (labels
        only).
        train_loader: yields ``(images, targets)``; its sampler's ``set_epoch`` is called.
        val_loader: evaluated (top-1) after every epoch.
        loss_fn: the distillation loss.
        cfg: optimisation settings.
        out_dir: where ``cfg.ckpt_name`` is written after every epoch (None: no checkpoints).
        device: where to train.
        dist: this process's rank (only rank 0 writes); DDP wraps the model when world > 1.
        resume: continue from ``out_dir/cfg.ckpt_name`` when it exists.
        log_fn: receives one dict per logged step and per epoch (the run log).
        mixup: batch transform giving soft targets (timm ``Mixup``), or None.
    """
    dist = dist or DistInfo()
    check_amp(device, cfg.amp)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scaler = grad_scaler(cfg.amp)
    start, history = 0, []
    path = None if out_dir is None else Path(out_dir) / cfg.ckpt_name
    if resume and path is not None and path.is_file():
        start, history = _restore(path, model, opt, scaler)
        log.info("%s: resuming from %s at epoch %d/%d", cfg.stage, path, start, cfg.epochs)
    if start >= cfg.epochs and history:
        return FinetuneResult(model, float(history[-1]["acc"]), history)

    net = _ddp(model, device, dist)
    steps_per_epoch = epoch_length(train_loader, cfg.steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    distilled = model.spec.dist_token
    model.distilled_training = distilled
    acc = float(history[-1]["acc"]) if history else 0.0
    for epoch in range(start, cfg.epochs):
        seed_epoch(cfg.seed, epoch)
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        t0 = time.time()
        loop = _Loop(net, teacher, loss_fn, opt, scaler, cfg, device, dist, log_fn, mixup)
        mean_loss = loop.epoch(train_loader, epoch, steps_per_epoch, total, warmup, distilled)
        acc = evaluate(model, val_loader, device, cfg.amp)
        record = {
            "stage": cfg.stage,
            "epoch": epoch,
            "loss": mean_loss,
            "acc": acc,
            "lr": lr_at((epoch + 1) * steps_per_epoch - 1, total, warmup, cfg.lr, cfg.min_lr),
            "seconds": time.time() - t0,
        }
        history.append(record)
        if dist.is_main:
            _epoch_end(record, cfg, path, model, opt, scaler, history, log_fn)
        barrier()
    model.distilled_training = False
    model.eval()
    return FinetuneResult(model, acc, history)


def _ddp(model: nn.Module, device: torch.device, dist: DistInfo) -> nn.Module:
    """The module to train: DDP-wrapped when there is more than one process."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _epoch_end(
    record: dict[str, Any],
    cfg: FinetuneConfig,
    path: Path | None,
    model: ViT,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    history: list[dict[str, Any]],
    log_fn: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Rank 0 after each epoch: log it, checkpoint it, record it."""
    log.info(
        "%s epoch %d/%d: loss %.4f, val top-1 %.2f%% (%.1fs)",
        cfg.stage, record["epoch"] + 1, cfg.epochs, record["loss"], record["acc"],
        record["seconds"],
    )  # fmt: skip
    if path is not None:
        _save(path, model, opt, scaler, record["epoch"] + 1, history, cfg)
    if log_fn is not None:
        log_fn({**record, "event": "epoch_end"})


class _Loop:
    """One epoch of distillation steps: warmup-cosine LR, autocast, clipping, logging."""

    def __init__(
        self,
        net: nn.Module,
        teacher: nn.Module | None,
        loss_fn: DistillLoss,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        cfg: FinetuneConfig,
        device: torch.device,
        dist: DistInfo,
        log_fn: Callable[[dict[str, Any]], None] | None,
        mixup: Callable | None,
    ) -> None:
        self.net, self.teacher, self.loss_fn, self.opt, self.scaler = (
            net,
            teacher,
            loss_fn,
            opt,
            scaler,
        )
        self.cfg, self.device, self.dist, self.log_fn, self.mixup = cfg, device, dist, log_fn, mixup

    def epoch(
        self, loader: Any, epoch: int, steps: int, total: int, warmup: int, distilled: bool
    ) -> float:
        """Train one epoch; returns the mean loss."""
        cfg, device, opt = self.cfg, self.device, self.opt
        self.net.train()
        loss_sum, n = 0.0, 0
        bar = _bar(loader, cfg, self.dist, f"{cfg.stage} {epoch + 1}/{cfg.epochs}")
        for i, (x, y) in enumerate(bar):
            if i >= steps:
                break  # a loader longer than announced keeps the schedule's length
            step = epoch * steps + i
            lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            with autocast(device, cfg.amp):
                t_logits, t_token = teacher_logits(self.teacher, x, distilled)
                loss = self.loss_fn(self.net(x), y, t_logits, t_token)
            if not torch.isfinite(loss):
                raise UvcError(f"{cfg.stage}: the loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
            loss_sum, n = loss_sum + loss.item(), n + 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if self.log_fn is not None and self.dist.is_main and (i % 10 == 0):
                rec = {"stage": cfg.stage, "epoch": epoch, "step": step, "loss": loss.item()}
                self.log_fn({**rec, "lr": lr})
        return loss_sum / max(1, n)


def _bar(loader: DataLoader, cfg: FinetuneConfig, dist: DistInfo, desc: str) -> Any:
    if not (cfg.progress and dist.is_main):
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


def _save(
    path: Path,
    model: ViT,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    next_epoch: int,
    history: list[dict[str, Any]],
    cfg: FinetuneConfig,
) -> None:
    extra = {
        "epoch": next_epoch,
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
    }
    meta = {"kind": cfg.stage, "epochs": cfg.epochs, "complete": next_epoch >= cfg.epochs}
    if history:
        meta["accuracy"] = history[-1]["acc"]
    save_checkpoint(path, Checkpoint(model.spec, model.state_dict(), meta, extra))


def _restore(
    path: Path, model: ViT, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> tuple[int, list[dict[str, Any]]]:
    ckpt = load_checkpoint(path)
    if ckpt.spec != model.spec:
        raise CheckpointError(f"{path} belongs to another architecture than this run's model")
    model.load_state_dict(ckpt.state_dict)
    try:
        opt.load_state_dict(ckpt.extra["optimizer"])
        if ckpt.extra.get("scaler"):
            scaler.load_state_dict(ckpt.extra["scaler"])
        return int(ckpt.extra["epoch"]), list(ckpt.extra.get("history", []))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a resumable training checkpoint: {exc}") from None
