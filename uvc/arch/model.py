"""The one ViT class: builds any ``ViTSpec`` with timm-compatible parameter names.

The same class serves the uncompressed model, the teacher, the masked model under training and the
dense compressed model. Training applies soft masks and gates through ``uvc.arch.keep.masked``
(module
attributes read by ``forward``), so ``forward`` itself always returns tensors only.

Post-norm blocks (``spec.norm_placement == "post"``) keep ``norm1``/``norm2`` when their attention
or MLP is removed (``x <- LN(x)``), so a branch gate of 0 and a removed branch compute the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uvc.arch.merge import attention_bias, merge_tokens
from uvc.arch.merge_schedule import with_merge
from uvc.arch.spec import Act, BlockSpec, Pool, ViTSpec


class Attention(nn.Module):
    """Multi-head self-attention with per-block ``qk_dim`` and ``v_dim``.

    ``qkv`` rows are laid out ``[q (heads*qk), k (heads*qk), v (heads*v)]``, head-major inside each
    part: for ``qk_dim == v_dim`` that is exactly timm's layout, so timm weights load unchanged.
    """

    def __init__(self, dim: int, heads: int, qk_dim: int, v_dim: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.qk_dim, self.v_dim = heads, qk_dim, v_dim
        self.scale = qk_dim**-0.5
        self.qkv = nn.Linear(dim, heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.proj = nn.Linear(heads * v_dim, dim)
        # Fused SDPA is fast and exports to ONNX; the explicit path lets op counters see the
        # attention matmuls. A runtime choice, not part of the architecture.
        self.fused = True
        # Soft masks set by ``uvc.arch.keep.masked`` during search; None means "keep everything".
        self.qk_mask: Tensor | None = None  # (heads, qk_dim), multiplies q and k
        self.v_mask: Tensor | None = None  # (heads, v_dim), multiplies each head's output

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """Attend over the token axis of ``x`` (B, N, dim)."""
        return self.attend(x, bias)[0]

    def attend(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The attention output and the keys (B, heads, N, qk_dim), which token merging reads.

        Args:
            x: tokens (B, N, dim).
            bias: added to the logits, broadcast to (B, heads, N, N): proportional attention's
                ``log(size)`` per key after token merging (``uvc.arch.merge``); None: nothing added.
        """
        b, n, _ = x.shape
        h, dq, dv = self.heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * dv], dim=-1)
        q = q.reshape(b, n, h, dq).transpose(1, 2)
        k = k.reshape(b, n, h, dq).transpose(1, 2)
        v = v.reshape(b, n, h, dv).transpose(1, 2)
        if self.qk_mask is not None:
            # Zeroing a q/k dim removes its term from every q.k dot product, exactly as slicing.
            q = q * self.qk_mask[:, None, :]
            k = k * self.qk_mask[:, None, :]
        if self.fused and bias is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            out = attn.softmax(dim=-1) @ v
        if self.v_mask is not None:
            out = out * self.v_mask[:, None, :]
        return self.proj(out.transpose(1, 2).reshape(b, n, h * dv)), k


def masked_norm(norm: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """``norm(x)``; with a 0/1 embedding-channel ``mask``, a LayerNorm over the kept channels only.

    The statistics are taken over the kept channels and the pruned ones come out as zeros:
    exactly what the materialized, narrower LayerNorm computes (NViT's embedding-width pruning),
    so a masked search trains the model that export builds.
    """
    if mask is None or not isinstance(norm, nn.LayerNorm):
        return norm(x)
    kept = mask.sum()
    mean = (x * mask).sum(-1, keepdim=True) / kept
    var = ((x - mean) * mask).square().sum(-1, keepdim=True) / kept
    y = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight + norm.bias
    return y * mask


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


def make_act(act: Act) -> nn.Module:
    """The activation module of ``act``."""
    act = Act(act)
    if act is Act.GELU:
        return nn.GELU()
    if act is Act.GELU_TANH:
        return nn.GELU(approximate="tanh")
    if act is Act.QUICK_GELU:
        return QuickGELU()
    return nn.ReLU()


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (timm's ``ls1.gamma`` / ``ls2.gamma``)."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        """Scale the last axis."""
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer MLP (timm's ``Mlp`` names: ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int, act: Act = Act.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)
        self.mask: Tensor | None = None  # (hidden,), set by ``uvc.arch.keep.masked``

    def forward(self, x: Tensor) -> Tensor:
        """Apply fc1 -> activation -> (mask) -> fc2."""
        x = self.act(self.fc1(x))
        if self.mask is not None:
            x = x * self.mask
        return self.fc2(x)


class Block(nn.Module):
    """Pre- or post-norm transformer block; attention or MLP is absent when its width is 0.

    Pre-norm: ``x + ls(f(LN(x)))``; a removed branch takes its norm with it. Post-norm:
    ``LN(x + ls(f(x)))``; a removed branch leaves ``x <- LN(x)`` unless the block is skipped.
    """

    def __init__(
        self,
        dim: int,
        spec: BlockSpec,
        qkv_bias: bool,
        eps: float,
        *,
        post_norm: bool = False,
        act: Act = Act.GELU,
        layer_scale: bool = False,
        merge_r: int = 0,
        prefix: int = 0,
        tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.post_norm = post_norm
        # Token merging between attention and MLP (``uvc.arch.merge``): r of the ``tokens`` it
        # receives (a constant of the graph), the ``prefix`` tokens protected.
        self.merge_r, self.prefix, self.tokens = merge_r, prefix, tokens
        keep_norms = post_norm and not spec.skip
        self.norm1 = nn.LayerNorm(dim, eps=eps) if spec.has_attn or keep_norms else None
        self.attn = (
            Attention(dim, spec.heads, spec.qk_dim, spec.v_dim, qkv_bias) if spec.has_attn else None
        )
        self.ls1 = LayerScale(dim) if layer_scale and spec.has_attn else None
        self.norm2 = nn.LayerNorm(dim, eps=eps) if spec.has_mlp or keep_norms else None
        self.mlp = Mlp(dim, spec.mlp_dim, act) if spec.has_mlp else None
        self.ls2 = LayerScale(dim) if layer_scale and spec.has_mlp else None
        # Soft keep-gates set by ``uvc.arch.keep.masked`` (scalars in [0, 1]); None means 1.
        self.attn_gate: Tensor | None = None
        self.mlp_gate: Tensor | None = None
        self.gate: Tensor | None = None  # UVC's whole-block gate: x + g * (Block(x) - x)
        self.embed_mask: Tensor | None = None  # (dim,) kept residual channels (``masked_norm``)

    @staticmethod
    def _branch(
        x: Tensor, f: nn.Module | None, ls: nn.Module | None, gate: Tensor | None
    ) -> Tensor | None:
        if f is None:
            return None
        y = f(x)
        if ls is not None:
            y = ls(y)
        return y if gate is None else gate * y

    def forward(self, x: Tensor) -> Tensor:
        """Residual attention then residual MLP (a block that merges needs ``forward_sized``)."""
        return self.forward_sized(x, None)[0]

    def forward_sized(self, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Attention, token merging (``merge_r`` > 0), MLP; returns the tokens and their sizes.

        Args:
            x: tokens (B, N, dim).
            size: token sizes (B, N, 1) after an earlier merge (proportional attention), or
                None: every token is one patch (and, without merging here, stays None).

        A block gate ``g`` interpolates each half around the merge (``x + g * (half(x) - x)``):
        at ``g`` in {0, 1} that is the block or the identity, and a skipped block still merges,
        so the token counts stay what the spec says. (Under a gate the merge reads the keys of
        the attention still present; the materialized skipped block has none and reads the
        tokens, so which tokens merge may differ there until fine-tuning.)
        """
        inp, keys = x, None
        bias = attention_bias(size)
        if self.post_norm:
            if self.norm1 is not None:
                y, keys = self._attn_branch(x, bias)
                x = masked_norm(self.norm1, x if y is None else x + y, self.embed_mask)
        elif self.attn is not None:
            y, keys = self._attn_branch(masked_norm(self.norm1, x, self.embed_mask), bias)
            x = x + y
        if self.merge_r:
            if self.gate is not None:
                x = inp + self.gate * (x - inp)
            # ToMe's similarity: the keys averaged over heads (summed: the cosine is the same);
            # the tokens themselves without attention.
            metric = x if keys is None else keys.sum(dim=1)
            x, size = merge_tokens(x, size, metric, self.merge_r, self.prefix, self.tokens)
            inp = x
        if self.post_norm:
            if self.norm2 is not None:
                y = self._branch(x, self.mlp, self.ls2, self.mlp_gate)
                x = masked_norm(self.norm2, x if y is None else x + y, self.embed_mask)
        elif self.mlp is not None:
            y = masked_norm(self.norm2, x, self.embed_mask)
            x = x + self._branch(y, self.mlp, self.ls2, self.mlp_gate)
        if self.gate is not None:
            x = inp + self.gate * (x - inp)
        if self.embed_mask is not None:  # the branches wrote into pruned channels: zero them
            x = x * self.embed_mask
        return x, size

    def _attn_branch(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """The gated, layer-scaled attention output and its keys (None, None: no attention)."""
        if self.attn is None:
            return None, None
        if self.merge_r:
            y, keys = self.attn.attend(x, bias)
        else:  # called as a module: the exported graph's node names keep the attn scope
            y, keys = self.attn(x, bias), None
        if self.ls1 is not None:
            y = self.ls1(y)
        return (y if self.attn_gate is None else self.attn_gate * y), keys


def block_for(spec: ViTSpec, block: BlockSpec, i: int | None = None) -> Block:
    """A ``Block`` of ``block``'s widths with the model-wide options of ``spec`` (width, qkv bias,
    eps, norm placement, activation, layer scale): what latency tables should time. ``i``: its
    index in ``spec``, for the tokens it merges (``uvc.arch.merge``); None: no merging."""
    return Block(
        spec.embed_dim,
        block,
        spec.qkv_bias,
        spec.norm_eps,
        post_norm=spec.post_norm,
        act=spec.act,
        layer_scale=spec.layer_scale,
        merge_r=0 if i is None else spec.block_merge(i),
        prefix=spec.num_prefix_tokens,
        tokens=None if i is None else spec.tokens_in(i),
    )


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided convolution (timm's ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, dim)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """A Vision Transformer of any ``ViTSpec``.

    Args:
        spec: the architecture. Kept on the model as ``model.spec`` (read-only by convention).
    """

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, spec.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if spec.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if spec.dist_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, spec.reg_tokens, d)) if spec.reg_tokens else None
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.pos_embed_len, d))
        self.blocks = nn.ModuleList(block_for(spec, b, i) for i, b in enumerate(spec.blocks))
        self.norm = nn.LayerNorm(d, eps=spec.norm_eps) if spec.final_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(d, eps=spec.norm_eps) if spec.fc_norm else nn.Identity()
        n_out = spec.num_classes
        self.head = nn.Linear(d, n_out) if n_out else nn.Identity()
        self.head_dist = nn.Linear(d, n_out) if spec.num_heads_out == 2 else None
        # For DeiT distillation: when True (and training), return (class_logits, dist_logits).
        self.distilled_training = False
        # Kept residual channels (0/1, (dim,)), set with the blocks' by ``uvc.arch.keep.masked``.
        self.embed_mask: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm-like init: truncated normal(0.02) for linears and tokens, zeros for biases."""
        for t in (self.pos_embed, self.cls_token, self.dist_token, self.reg_token):
            if t is not None:
                nn.init.trunc_normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_fused_attn(self, fused: bool) -> ViT:
        """Switch every attention between SDPA and the explicit matmul path."""
        for blk in self.blocks:
            if blk.attn is not None:
                blk.attn.fused = fused
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the last block and final norm: (B, N_tokens, dim)."""
        return self.forward_features_sized(x)[0]

    def forward_features_sized(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``forward_features`` and the tokens' sizes (None without token merging)."""
        x = self.patch_embed(x)
        if self.spec.no_embed_class:
            x = x + self.pos_embed  # DeiT-III / DINOv2: positions for the patches only
        tokens = (self.cls_token, self.dist_token, self.reg_token)
        prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        if not self.spec.no_embed_class:
            x = x + self.pos_embed
        if self.embed_mask is not None:
            x = x * self.embed_mask
        size = None
        if self.spec.merge_r:
            for blk in self.blocks:
                x, size = blk.forward_sized(x, size)
        else:
            for blk in self.blocks:
                x = blk(x)
        return masked_norm(self.norm, x, self.embed_mask), size

    def forward_head(self, x: Tensor, size: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Pool the tokens (weighted by ``size`` after token merging) and classify."""
        if self.spec.pool is Pool.AVG:
            p = self.spec.num_prefix_tokens
            if size is None:
                x = x[:, p:].mean(dim=1)
            else:  # a merged token stands for size patches; the sizes sum to num_patches
                x = (x[:, p:] * size[:, p:]).sum(dim=1) / self.spec.num_patches
            return self.head(masked_norm(self.fc_norm, x, self.embed_mask))
        logits = self.head(masked_norm(self.fc_norm, x[:, 0], self.embed_mask))
        if self.head_dist is None:
            return logits
        dist = self.head_dist(x[:, 1])
        if self.distilled_training and self.training:
            return logits, dist
        return (logits + dist) / 2  # DeiT's inference: the two heads averaged

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> logits (B, num_classes)."""
        return self.forward_head(*self.forward_features_sized(x))


def apply_merge(model: ViT, value: int | str | Sequence[int] | None) -> ViT:
    """A new ViT with ``model``'s weights (shared) and the merge schedule ``value`` (merging has
    no parameters, so any ViT merges off the shelf). Raises ``SpecError`` when it does not fit."""
    spec = with_merge(model.spec, value)
    if spec == model.spec:
        return model
    out = ViT(spec).to(next(model.parameters()).device)
    out.load_state_dict(model.state_dict(), strict=True)
    return out.train(model.training)
