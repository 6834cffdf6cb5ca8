"""Materialization: (model, keep-set) -> a new, physically smaller dense ViT.

A pure function: it reads the input model's weights, slices copies of them and builds a fresh
``ViT`` from the new spec. Nothing is masked, nothing is zero (except the padding of UVC's per-head
value counts, which is the documented, output-exact way to keep heads aligned), removed parts are
absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from uvc.keep import BlockKeep, spec_after
from uvc.model import ViT


def materialize(model: ViT, keep: Sequence[BlockKeep]) -> ViT:
    """Build the dense model that computes what ``model`` masked by ``keep`` computes.

    Args:
        model: a ``uvc.model.ViT`` (not modified).
        keep: one ``BlockKeep`` per block, indices into ``model.spec``'s widths.

    Returns:
        A new ``ViT`` whose spec is ``uvc.keep.spec_after(model.spec, keep)``, on the same device
        and dtype, in the same train/eval mode.
    """
    spec = model.spec
    new_spec = spec_after(spec, keep)
    src = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for name, value in src.items():
        if not name.startswith("blocks."):
            out[name] = value.clone()
    for i, (b, k) in enumerate(zip(spec.blocks, keep, strict=True)):
        pre = f"blocks.{i}."
        if b.has_attn and k.has_attn:
            _slice_attention(src, out, pre, b.heads, b.qk_dim, b.v_dim, k, spec.qkv_bias)
            for p in ("norm1.weight", "norm1.bias"):
                out[pre + p] = src[pre + p].clone()
        if b.has_mlp and k.has_mlp:
            idx = torch.tensor(k.mlp, dtype=torch.long, device=src[pre + "mlp.fc1.weight"].device)
            out[pre + "mlp.fc1.weight"] = src[pre + "mlp.fc1.weight"][idx].clone()
            out[pre + "mlp.fc1.bias"] = src[pre + "mlp.fc1.bias"][idx].clone()
            out[pre + "mlp.fc2.weight"] = src[pre + "mlp.fc2.weight"][:, idx].clone()
            out[pre + "mlp.fc2.bias"] = src[pre + "mlp.fc2.bias"].clone()
            for p in ("norm2.weight", "norm2.bias"):
                out[pre + p] = src[pre + p].clone()
    ref = next(iter(src.values()))
    dense = ViT(new_spec).to(device=ref.device, dtype=ref.dtype)
    dense.load_state_dict(out, strict=True)
    dense.train(model.training)
    return dense


def _slice_attention(
    src: dict[str, Tensor],
    out: dict[str, Tensor],
    pre: str,
    heads: int,
    qk_dim: int,
    v_dim: int,
    k: BlockKeep,
    qkv_bias: bool,
) -> None:
    """Slice qkv rows and proj columns for the kept heads and dims of one block."""
    w = src[pre + "attn.qkv.weight"]
    bias = src[pre + "attn.qkv.bias"] if qkv_bias else None
    dim = w.shape[1]
    q_w, k_w, v_w = w.split([heads * qk_dim, heads * qk_dim, heads * v_dim])
    q_w, k_w = q_w.reshape(heads, qk_dim, dim), k_w.reshape(heads, qk_dim, dim)
    v_w = v_w.reshape(heads, v_dim, dim)
    hk = list(k.heads)
    # The dense block uses its own scale len(qk)**-0.5; fold the original scale into q so the
    # attention logits stay exactly those of the masked model.
    rescale = (qk_dim**-0.5) / (len(k.qk) ** -0.5)
    qi = torch.tensor(k.qk, dtype=torch.long, device=w.device)
    new_q = q_w[hk][:, qi] * rescale
    new_k = k_w[hk][:, qi]

    width = k.v_width
    per = k.v_per_head or (k.v,) * len(hk)
    new_v = w.new_zeros(len(hk), width, dim)
    proj_w = src[pre + "attn.proj.weight"].reshape(-1, heads, v_dim)  # (dim_out, heads, v)
    new_proj = w.new_zeros(proj_w.shape[0], len(hk), width)
    new_vb = w.new_zeros(len(hk), width)
    if bias is not None:
        q_b, k_b, v_b = bias.split([heads * qk_dim, heads * qk_dim, heads * v_dim])
        q_b, k_b, v_b = (
            q_b.reshape(heads, qk_dim),
            k_b.reshape(heads, qk_dim),
            v_b.reshape(heads, v_dim),
        )
    for j, (h, dims) in enumerate(zip(hk, per, strict=True)):
        # Per-head value counts shorter than the block width are padded with zero rows and
        # zero proj columns: those dims output 0 and contribute 0, so the result is exact.
        di = list(dims)
        new_v[j, : len(di)] = v_w[h, di]
        new_proj[:, j, : len(di)] = proj_w[:, h, di]
        if bias is not None:
            new_vb[j, : len(di)] = v_b[h, di]

    out[pre + "attn.qkv.weight"] = torch.cat(
        [new_q.reshape(-1, dim), new_k.reshape(-1, dim), new_v.reshape(-1, dim)]
    ).contiguous()
    if bias is not None:
        out[pre + "attn.qkv.bias"] = torch.cat(
            [(q_b[hk][:, qi] * rescale).reshape(-1), k_b[hk][:, qi].reshape(-1), new_vb.reshape(-1)]
        ).contiguous()
    out[pre + "attn.proj.weight"] = new_proj.reshape(proj_w.shape[0], -1).contiguous()
    out[pre + "attn.proj.bias"] = src[pre + "attn.proj.bias"].clone()
