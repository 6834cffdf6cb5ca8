"""Token merging (ToMe: bipartite soft matching) written for static shapes.

Facts from "Token Merging: Your ViT but Faster" (Bolya et al., ICLR 2023), implemented here:
between a block's attention and its MLP, the patch tokens are split alternately into sets A and B;
every A token's edge to its most similar B token (cosine similarity of the attention keys, averaged
over heads) is kept; the ``r`` A tokens with the most similar partners are merged into them by a
size-weighted average. Each token carries a size (how many patches it stands for), and later
attentions add ``log(size)`` to their logits (proportional attention), so a merged token weighs as
much as the tokens it replaced.

Static shapes: ``r`` is fixed per block by the spec, so every tensor's size is a constant given
the input's batch: the data-dependent part is a sort (ONNX ``TopK`` with a constant k),
``gather`` (``GatherElements``) and ``scatter_add`` (``ScatterElements``, ``reduction="add"``,
opset >= 16).
The class, distillation and register tokens (the first ``prefix`` tokens) take no part: they stay
in front, unmerged, with size 1. The result is ``[prefix, unmerged A, B (with merges)]``.

Ties: scores tie exactly when tokens are identical (flat image regions); then which of them
merges does not change the result (the same tokens and sizes come out, in another order), so the
sort need not be stable (ONNX ``TopK`` and torch's ``topk`` may order ties differently). Scores only
a rounding error apart but from different tokens are where PyTorch and ONNX Runtime could choose
differently; validation against PyTorch would show it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def merge_tokens(
    x: Tensor, size: Tensor | None, metric: Tensor, r: int, prefix: int, tokens: int | None = None
) -> tuple[Tensor, Tensor]:
    """Merge ``r`` patch tokens of ``x`` into their most similar partners.

    Args:
        x: tokens (B, N, D).
        size: tokens' sizes (B, N, 1), or None (all 1: no merge happened yet).
        metric: per-token similarity features (B, N, C): the attention keys averaged over heads
            (or the tokens themselves for a block without attention).
        r: tokens to merge, at most half of the ``N - prefix`` patch tokens.
        prefix: leading tokens never merged (class, distillation, register tokens).
        tokens: ``N`` as a Python int (the spec's ``tokens_in``), so a traced graph holds it
            as a constant (torchscript tracing records ``x.shape[1]`` as a Shape op); None:
            read from ``x``.

    Returns:
        The merged tokens (B, N - r, D) and their sizes (B, N - r, 1).
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    if r <= 0:
        return x, size
    n = int(x.shape[1]) if tokens is None else tokens
    if r > (n - prefix) // 2:
        raise ValueError(f"cannot merge {r} of {n - prefix} patch tokens (at most half)")
    n_a = (n - prefix + 1) // 2
    pre_x, pat = x[:, :prefix], x[:, prefix:]
    pre_s, s = size[:, :prefix], size[:, prefix:]
    with torch.no_grad():  # which tokens merge is a discrete choice: no gradient through it
        m = metric[:, prefix:].detach()
        # Ops that both exporters write at opset 17 (ReduceSum, not ReduceL2/ReduceMax).
        m = m * torch.rsqrt((m * m).sum(dim=-1, keepdim=True))
        scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|) cosine similarities
        dst = scores.argmax(dim=-1)  # each A token's best B partner
        best = scores.gather(-1, dst[..., None])[..., 0]
        # topk with a Python int k: a constant K in the graph (TensorRT's TopK needs one).
        order = best.topk(n_a, dim=-1).indices
        src_idx, unm_idx = order[:, :r], order[:, r:]
        dst_idx = dst.gather(1, src_idx)
    xa, xb = pat[:, ::2], pat[:, 1::2]
    sa, sb = s[:, ::2], s[:, 1::2]
    d = x.shape[-1]
    unm = xa.gather(1, unm_idx[..., None].expand(-1, -1, d))
    unm_s = sa.gather(1, unm_idx[..., None])
    src_s = sa.gather(1, src_idx[..., None])
    src = xa.gather(1, src_idx[..., None].expand(-1, -1, d)) * src_s
    # Size-weighted average: sum of size * token over the merged group, divided by its size.
    new_s = sb.scatter_add(1, dst_idx[..., None], src_s)
    new_b = (xb * sb).scatter_add(1, dst_idx[..., None].expand(-1, -1, d), src) / new_s
    return torch.cat([pre_x, unm, new_b], dim=1), torch.cat([pre_s, unm_s, new_s], dim=1)


def attention_bias(size: Tensor | None) -> Tensor | None:
    """Proportional attention's additive logit bias ``log(size)`` per key: (B, 1, 1, N)."""
    if size is None:
        return None
    return size.log().transpose(1, 2)[:, None]
