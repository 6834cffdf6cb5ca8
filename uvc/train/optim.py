"""Optimizer parameter groups, one rule for every training loop."""

from __future__ import annotations

from typing import Any

from torch import nn

# Learned tokens and position embeddings are not decayed (as in timm/DeiT), whatever their rank.
NO_DECAY_LEAVES = ("cls_token", "dist_token", "reg_token", "pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norms (1-D), tokens and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_LEAVES
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
