"""The weight step that methods training a masked model share (``uniform``, ``nvit``).

Their weights see a plain distillation step of the model masked by the current keep-set; what
differs is what they do around it (NViT reads the gradients for its saliency). UVC's primal-dual
has its own step: its masks are soft and its loss carries the Lagrangian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from uvc.arch.keep import BlockKeep, masked_keep
from uvc.arch.model import ViT
from uvc.train.amp import autocast, check_amp, grad_scaler
from uvc.train.dist import DistInfo, all_reduce_grads
from uvc.train.distill import DistillLoss
from uvc.train.optim import param_groups
from uvc.train.teacher import teacher_logits


def weight_optimizer(
    model: nn.Module, cfg: Any, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """AdamW over ``model`` with the search's weight decay, and the loss scaler of ``cfg.amp``."""
    check_amp(device, cfg.amp)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    return opt, grad_scaler(cfg.amp)


def masked_kd_step(
    model: ViT,
    keep: Sequence[BlockKeep],
    x: Tensor,
    t: Tensor,
    teacher: nn.Module | None,
    loss_fn: DistillLoss,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    lr: float,
    amp: Any,
    device: torch.device,
    dist: DistInfo,
    on_grads: Callable[[], None] | None = None,
) -> float:
    """One distillation step of ``model`` masked by ``keep``; returns the loss.

    Gradients are averaged over ranks and unscaled before ``on_grads`` runs, so it reads the
    true gradients every rank shares (NViT's saliency).
    """
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast(device, amp):
        distilled = model.spec.dist_token and model.distilled_training
        t_logits, token_logits = teacher_logits(teacher, x, distilled)
        with masked_keep(model, keep):
            out = model(x)
        loss = loss_fn(out, t, t_logits, token_logits)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    all_reduce_grads(list(model.parameters()), dist)
    scaler.unscale_(opt)  # a no-op without fp16
    if on_grads is not None:
        on_grads()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())
