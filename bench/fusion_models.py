"""Models for the fusion benchmark (README, "ONNX Runtime's transformer fusions").

Writes random-init DeiT-Tiny/Small dense checkpoints and ~50%-MACs non-uniform compressed ones
(qk 40, v 48, block 5 without attention, block 9 without MLP) into a folder::

    python -m uvc.bench.fusion_models OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from uvc.export.materialize import materialize

from uvc.arch.cost import macs
from uvc.arch.keep import BlockKeep, KeepSet
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.files.checkpoint import Checkpoint, save_checkpoint
from uvc.files.source import resolve_spec


def keep_for(
    spec: ViTSpec,
    heads: int,
    qk: int,
    v: int,
    mlp_frac: float,
    no_attn: tuple[int, ...] = (5,),
    no_mlp: tuple[int, ...] = (9,),
) -> KeepSet:
    """The first ``heads`` heads, ``qk``/``v`` dims and a share of the MLP in every block."""
    out = []
    for i, b in enumerate(spec.blocks):
        h = () if i in no_attn else tuple(range(heads))
        mlp = () if i in no_mlp else tuple(range(int(b.mlp_dim * mlp_frac)))
        out.append(BlockKeep(h, tuple(range(qk)) if h else (), tuple(range(v)) if h else (), mlp))
    return KeepSet(out)


def main(out: Path) -> None:
    """Write ``{tiny,small}_{dense,comp}.pt`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, heads in (("tiny", 2), ("small", 4)):
        spec = resolve_spec(f"deit_{name}_patch16_224")
        torch.manual_seed(0)
        dense = ViT(spec).eval()
        comp = materialize(dense, keep_for(spec, heads, 40, 48, 7 / 12)).eval()
        print(f"{name}: MACs ratio {macs(comp.spec) / macs(spec):.3f}")
        meta = {"kind": "dense"}
        save_checkpoint(out / f"{name}_dense.pt", Checkpoint(spec, dense.state_dict(), meta))
        save_checkpoint(out / f"{name}_comp.pt", Checkpoint(comp.spec, comp.state_dict(), meta))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
