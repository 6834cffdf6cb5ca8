"""The export-only form of a ViT whose ONNX graph ONNX Runtime's attention fusion recognises.

``onnxruntime.transformers.optimizer`` (``model_type="vit"``) turns a block's attention into one
``com.microsoft.Attention`` node only when the graph spells it exactly so:

- three separate ``MatMul -> Add`` projections for q, k and v on the LayerNorm output (not one
  packed qkv MatMul followed by Split);
- ``Reshape -> Transpose`` per projection, k transposed straight to (B, h, d, N) by one Transpose;
- ``Softmax(Div(MatMul(q, k^T), c))``: one scale op after the q.k^T product;
- the residual Add taking the attention branch as its *first* input: the matcher follows the first
  Add parent, and ``x + y`` leads it into the previous residual (or block 0's position-embedding
  Add) instead of the projection's bias Add.

``fusable_copy`` builds that form from a ``uvc.arch.model.ViT``'s own modules (weights copied, the
model untouched): only the attention and the residual order differ from ``Block.forward``; the
patch embedding, tokens, norms, MLPs and head are the model's own modules, run by the model's own
``forward``. That is cleaner than rewriting an exported graph, whose shape depends on the exporter
(dynamo builds k^T through Shape/Slice/Reshape, torchscript wraps shared constants in Identity)
and on its version; validation against PyTorch then proves the copy computes the same logits.

Token merging (``uvc.arch.merge``) is exported as the model computes it; ``fusable_blocks`` says
which
attentions it leaves unfused: those after the first merge (proportional attention adds
``log(size)`` to the logits, a form ORT's fusion does not match) and a merging block's own (its
keys also feed the merge; fusing it anyway leaves ORT's optimizer with a broken graph).

The fused Attention op ignores the graph's scale constant and always uses 1/sqrt(head size).
A block whose scale is anything else is kept in a form the fusion cannot match (the scale applied
to q before the product), so it stays unfused and exact; ``fusable_blocks`` says which blocks fuse.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uvc.arch.merge import attention_bias, merge_tokens
from uvc.errors import ExportError

# The dense model's scale is computed as qk_dim ** -0.5 in float; allow that rounding, nothing more.
SCALE_RTOL = 1e-6


@dataclass(frozen=True)
class BlockFusion:
    """Whether one block's attention can be fused, and why not.

    Args:
        block: block index.
        heads: heads of the block (0: no attention, nothing to fuse).
        qk_dim: per-head query/key width.
        scale: the scale the model multiplies q.k^T by.
        fusable: the block has attention, its scale is 1/sqrt(qk_dim), and a LayerNorm reads
            its residual sum (the fusion's anchor).
        reason: why it is not fusable ("" when it is).
    """

    block: int
    heads: int
    qk_dim: int
    scale: float
    fusable: bool
    reason: str = ""


def fusable_blocks(model: nn.Module) -> tuple[BlockFusion, ...]:
    """Per block of a ``uvc.arch.model.ViT``: can the fused Attention op compute its attention
    exactly?

    The scale guard: the fused op always uses 1/sqrt(qk_dim), so a block whose scale differs
    (beyond float rounding) must not be fused. uvc's materialization folds the original scale into
    W_q, so every dense model it builds passes. The fusion also anchors on the LayerNorm that reads
    the attention's residual sum; a block whose sum reaches no LayerNorm (the last attention of an
    avg-pool ``fc_norm`` model with no MLP after it) cannot be matched.
    """
    blocks = _blocks(model)
    final_ln = isinstance(getattr(model, "norm", None), nn.LayerNorm)
    post_norm = bool(getattr(model.spec, "post_norm", False))  # LN(x + attn(x)): always anchored
    merges = tuple(getattr(model.spec, "merge_r", ()) or (0,) * len(blocks))
    out = []
    for i, blk in enumerate(blocks):
        attn = blk.attn
        if attn is None:
            out.append(BlockFusion(i, 0, 0, 0.0, False, "no attention"))
            continue
        scale, want = float(attn.scale), attn.qk_dim**-0.5
        later = any(b.attn is not None or b.mlp is not None for b in blocks[i + 1 :])
        reason = ""
        if not math.isclose(scale, want, rel_tol=SCALE_RTOL):
            reason = f"scale {scale:.6g} != 1/sqrt(qk_dim={attn.qk_dim}) = {want:.6g}"
        elif any(merges[:i]):
            reason = "proportional attention after token merging (log(size) added to the logits)"
        elif merges[i]:
            reason = "its keys also feed token merging (the fused op does not expose them)"
        elif not post_norm and blk.mlp is None and not later and not final_ln:
            reason = "no LayerNorm reads the attention's residual sum (ORT's fusion anchor)"
        out.append(BlockFusion(i, attn.heads, attn.qk_dim, scale, not reason, reason))
    return tuple(out)


class FusableAttention(nn.Module):
    """A ``uvc.arch.model.Attention`` with separate q/k/v projections and the fusable op order."""

    def __init__(self, attn: nn.Module, fusable: bool) -> None:
        super().__init__()
        if attn.qk_mask is not None or attn.v_mask is not None:
            raise ExportError("cannot export a masked attention: materialize the model first")
        h, dq, dv = attn.heads, attn.qk_dim, attn.v_dim
        self.heads, self.qk_dim, self.v_dim = h, dq, dv
        self.scale = float(attn.scale)
        self.fusable = fusable
        dim = attn.qkv.in_features
        has_bias = attn.qkv.bias is not None
        self.q = nn.Linear(dim, h * dq, bias=has_bias)
        self.k = nn.Linear(dim, h * dq, bias=has_bias)
        self.v = nn.Linear(dim, h * dv, bias=has_bias)
        with torch.no_grad():
            weights = _split_qkv(attn.qkv.weight, h, dq, dv)
            biases = _split_qkv(attn.qkv.bias, h, dq, dv) if has_bias else (None,) * 3
            for lin, w, b in zip((self.q, self.k, self.v), weights, biases, strict=True):
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
        self.proj = copy.deepcopy(attn.proj)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """Attend over the token axis of ``x`` (B, N, dim)."""
        return self.attend(x, bias)[0]

    def attend(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The output and the keys, laid out (B, heads, qk_dim, N) for the fusion (token merging
        reads them, as ``Attention.attend``); ``bias``: proportional attention's logit bias."""
        n = x.shape[1]  # static in the graph: the spec fixes the token count
        h, dq, dv = self.heads, self.qk_dim, self.v_dim
        # -1 for the batch keeps the Reshape's shape a constant [-1, N, h, d] in the graph, which
        # is where the fusion reads the head count and head size from.
        q = self.q(x).reshape(-1, n, h, dq).transpose(1, 2)  # (B, h, N, dq)
        k = self.k(x).reshape(-1, n, h, dq).permute(0, 2, 3, 1)  # (B, h, dq, N): one Transpose
        v = self.v(x).reshape(-1, n, h, dv).transpose(1, 2)  # (B, h, N, dv)
        # Exactly 1/sqrt(dq): one Div after the product, the form the fusion matches. Any other
        # scale is applied to q first, a form the fusion does not match (the block stays unfused).
        attn = (q @ k) / math.sqrt(dq) if self.fusable else (q * self.scale) @ k
        if bias is not None:
            attn = attn + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(-1, n, h * dv)), k


class FusableBlock(nn.Module):
    """A ``uvc.arch.model.Block`` whose residual Adds take the branch output first.

    Layer scales are folded into the branch's last Linear (``gamma * (W x + b)`` =
    ``(gamma W) x + gamma b``), so no Mul sits between the projection and the residual Add.
    """

    def __init__(self, blk: nn.Module, fusion: BlockFusion) -> None:
        super().__init__()
        if any(getattr(blk, g, None) is not None for g in ("attn_gate", "mlp_gate", "gate")):
            raise ExportError("cannot export a gated block: materialize the model first")
        if blk.mlp is not None and blk.mlp.mask is not None:
            raise ExportError("cannot export a masked MLP: materialize the model first")
        self.post_norm = bool(getattr(blk, "post_norm", False))
        self.merge_r, self.prefix = getattr(blk, "merge_r", 0), getattr(blk, "prefix", 0)
        self.tokens = getattr(blk, "tokens", None)
        self.norm1 = copy.deepcopy(blk.norm1)
        self.attn = None if blk.attn is None else FusableAttention(blk.attn, fusion.fusable)
        self.norm2 = copy.deepcopy(blk.norm2)
        self.mlp = copy.deepcopy(blk.mlp)
        if self.attn is not None:
            _fold_scale(self.attn.proj, getattr(blk, "ls1", None))
        if self.mlp is not None:
            _fold_scale(self.mlp.fc2, getattr(blk, "ls2", None))

    def forward(self, x: Tensor) -> Tensor:
        """Residual attention then residual MLP (pre- or post-norm), branch first in each Add."""
        if self.post_norm:
            if self.norm1 is not None:
                x = self.norm1(x if self.attn is None else self.attn(x) + x)
            if self.norm2 is not None:
                x = self.norm2(x if self.mlp is None else self.mlp(x) + x)
            return x
        if self.attn is not None:
            x = self.attn(self.norm1(x)) + x
        if self.mlp is not None:
            x = self.mlp(self.norm2(x)) + x
        return x

    def forward_sized(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``Block.forward_sized``: attention, token merging, MLP, branch first in each Add."""
        bias, keys = attention_bias(size), None
        if self.post_norm:
            if self.norm1 is not None and self.attn is not None:
                y, keys = self.attn.attend(x, bias)
                x = self.norm1(y + x)
            elif self.norm1 is not None:
                x = self.norm1(x)
        elif self.attn is not None:
            y, keys = self.attn.attend(self.norm1(x), bias)
            x = y + x
        if self.merge_r:
            # keys: (B, h, qk, N) here (k is laid out transposed for the fusion)
            metric = x if keys is None else keys.sum(dim=1).transpose(1, 2)
            x, size = merge_tokens(x, size, metric, self.merge_r, self.prefix, self.tokens)
        if self.post_norm:
            if self.norm2 is not None:
                x = self.norm2(x if self.mlp is None else self.mlp(x) + x)
        elif self.mlp is not None:
            x = self.mlp(self.norm2(x)) + x
        return x, size


def fusable_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU eval-mode copy of ``model`` (a ``uvc.arch.model.ViT``) in the fusable form.

    Computes the same logits as ``model`` up to float rounding; ``model`` is not modified.
    """
    fusions = fusable_blocks(model)
    out = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    out.blocks = nn.ModuleList(
        FusableBlock(blk, f) for blk, f in zip(out.blocks, fusions, strict=True)
    )
    return out.eval()


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if getattr(model, "spec", None) is None or blocks is None:
        raise ExportError("the fusable export form needs a uvc.arch.model.ViT")
    return blocks


def _fold_scale(linear: nn.Linear, layer_scale: nn.Module | None) -> None:
    """Multiply ``linear``'s output rows by a ``LayerScale``'s gamma, in place (a copy's)."""
    if layer_scale is None:
        return
    gamma = layer_scale.gamma.detach()
    with torch.no_grad():
        linear.weight.mul_(gamma[:, None])
        if linear.bias is not None:
            linear.bias.mul_(gamma)


def _split_qkv(t: Tensor, heads: int, qk_dim: int, v_dim: int) -> tuple[Tensor, ...]:
    """qkv rows are [q (heads*qk), k (heads*qk), v (heads*v)], head-major (``uvc.arch.model``)."""
    return tuple(t.detach().split([heads * qk_dim, heads * qk_dim, heads * v_dim], dim=0))
