"""Materialization: (model, keep-set) -> a new, physically smaller dense ViT.

A pure function: it reads the input model's weights, slices copies of them and builds a fresh
``ViT`` from the new spec. Which rows and columns survive comes from ``uvc.arch.structmap`` alone
(the
same map the masks and importance read); nothing here does index arithmetic of its own. Nothing is
masked, nothing is zero (except the padding of UVC's per-head value counts, the documented,
output-exact way to keep heads aligned), removed parts are absent. Parameters that no unit owns
(norms of kept parts, layer-scale gammas, tokens, the head) are copied as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from uvc.arch.keep import BlockKeep, embed_of, spec_after, unit_keep
from uvc.arch.model import ViT
from uvc.arch.structmap import StructureMap, gather
from uvc.errors import SpecError


def materialize(model: ViT, keep: Sequence[BlockKeep]) -> ViT:
    """Build the dense model that computes what ``model`` masked by ``keep`` computes.

    Args:
        model: a ``uvc.arch.model.ViT`` (not modified).
        keep: one ``BlockKeep`` per block, indices into ``model.spec``'s widths (a ``KeepSet``
            may also keep a subset of the embedding channels; LayerNorms then normalise over
            fewer channels, so that case is not output-exact).

    Returns:
        A new ``ViT`` whose spec is ``uvc.arch.keep.spec_after(model.spec, keep)``, on the same
        device
        and dtype, in the same train/eval mode.
    """
    spec = model.spec
    new_spec = spec_after(spec, keep)
    smap, units = StructureMap(spec), unit_keep(spec, keep)
    src = {k: v.detach() for k, v in model.state_dict().items()}
    axes = {name: list(a) for name, a in smap.axes.items()}
    if embed_of(keep) is not None:
        for axis in smap.embed_axes(src):
            axes.setdefault(axis.param, []).append(axis)
    ref = next(iter(src.values()))
    dense = ViT(new_spec).to(device=ref.device, dtype=ref.dtype)
    out: dict[str, Tensor] = {}
    for name, target in dense.state_dict().items():
        t = src[name]
        for axis in axes.get(name, []):
            t = gather(t, axis.dim, smap.layout(axis, units))
        if t.shape != target.shape:
            raise SpecError(
                f"internal: {name} sliced to {tuple(t.shape)}, needs {tuple(target.shape)}"
            )
        out[name] = t.clone()
    for i, (b, k) in enumerate(zip(spec.blocks, keep, strict=True)):
        if b.has_attn and k.has_attn:
            _fold_scale(out, f"blocks.{i}.attn.qkv.", len(k.heads) * len(k.qk), b.qk_dim, len(k.qk))
    dense.load_state_dict(out, strict=True)
    dense.train(model.training)
    return dense


def _fold_scale(out: dict[str, Tensor], pre: str, q_rows: int, old: int, new: int) -> None:
    """Fold the original 1/sqrt(qk_dim) into q, so the dense block's own 1/sqrt(kept qk) scale
    reproduces the masked model's attention logits exactly (and the graph stays a standard
    attention that ONNX Runtime and TensorRT fuse)."""
    rescale = (old**-0.5) / (new**-0.5)
    with torch.no_grad():
        for leaf in ("weight", "bias"):
            if pre + leaf in out:
                out[pre + leaf][:q_rows] *= rescale
