"""Skip gates: per block, 2-way [skip, keep] gates for the attention, the MLP and the whole block.

UVC samples each gate with a soft Gumbel-softmax (tau 0.5) during search and keeps a part iff
``logit_keep > logit_skip`` afterwards. Logits start at (-1, +1): keep is favoured but not certain.
Noise comes from a generator seeded by (seed, step), so every DDP rank draws the same gates and a
resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from uvc.methods.common.config import GateMode  # the setting; re-exported for the search

# Gate columns.
BLOCK, ATTN, MLP = 0, 1, 2


class Gates(nn.Module):
    """Gate logits of every block: ``logits[l, kind] = (skip, keep)``.

    Args:
        depth: number of blocks.
        mode: which gates are active; inactive gates are always "keep" (value None in masks).
    """

    def __init__(self, depth: int, mode: GateMode | str = GateMode.ALL) -> None:
        super().__init__()
        self.mode = GateMode(mode)
        init = torch.tensor([-1.0, 1.0]).expand(depth, 3, 2).clone()
        self.logits = nn.Parameter(init)
        active = torch.zeros(3, dtype=torch.bool)
        if self.mode in (GateMode.BLOCK, GateMode.ALL):
            active[BLOCK] = True
        if self.mode in (GateMode.PARTS, GateMode.ALL):
            active[ATTN] = active[MLP] = True
        self.register_buffer("active", active, persistent=False)

    def probs(self) -> Tensor:
        """(L, 3) keep probabilities ``softmax(logits)[keep]``; 1 for inactive gates."""
        p = self.logits.softmax(-1)[..., 1]
        return torch.where(self.active, p, torch.ones_like(p))

    def hard(self) -> Tensor:
        """(L, 3) bool: keep iff ``logit_keep > logit_skip`` (always keep for inactive gates)."""
        keep = self.logits[..., 1] > self.logits[..., 0]
        return keep | ~self.active

    def straight_through(self) -> Tensor:
        """(L, 3) hard 0/1 keep values in the forward with the keep-probability's gradient.

        Used by the resource model, so that R is the exact cost of the current decisions while the
        budget still pulls on the logits.
        """
        p = self.probs()
        return self.hard().to(p.dtype) + (p - p.detach())

    def sample(self, tau: float, seed: int, step: int) -> Tensor:
        """(L, 3) soft Gumbel-softmax keep values (1 for inactive gates); noise fixed by step."""
        gen = torch.Generator().manual_seed(_mix(seed, step))
        u = torch.rand(self.logits.shape, generator=gen, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12)))
        noisy = (self.logits + gumbel.to(self.logits)) / tau
        g = noisy.softmax(-1)[..., 1]
        return torch.where(self.active, g, torch.ones_like(g))


def _mix(seed: int, step: int) -> int:
    """A generator seed per (seed, step); distinct for distinct steps of one run."""
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)
