"""Distributed helpers over ``torch.distributed`` (DDP under torchrun: NCCL on GPUs, gloo on CPU).

Everything degrades to single-process no-ops when the script was not started by torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun job if there is one; pick this rank's device.

    Args:
        device: "auto" (CUDA when available), "cpu" or "cuda".
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if use_cuda:
        dev = torch.device("cuda", info.local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, dev


def all_reduce_mean(t: Tensor) -> Tensor:
    """Average ``t`` over ranks in place (no-op single-process); returns ``t``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    """Copy rank ``src``'s ``t`` to every rank in place (no-op single-process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src)
    return t


def barrier() -> None:
    """Wait for every rank (no-op single-process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_grads(params: list[Tensor], dist: DistInfo) -> None:
    """Average gradients over ranks in one flat buffer, so every rank takes the same step."""
    if not dist.enabled:
        return
    import torch.distributed as tdist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size
    off = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[off : off + n].view_as(p).to(p.dtype)
        off += n
