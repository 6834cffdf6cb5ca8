"""The cost model: MACs, parameters and (lookup-table) latency as functions of a spec alone.

Convention: MACs, the number papers call "FLOPs" (DeiT-Tiny 1.26 G). Matmuls and convolutions count
one MAC per multiply-add; LayerNorm counts 5 per element (fvcore's convention, so totals compare
with ``fvcore.nn.FlopCountAnalysis``); softmax, GELU, residual adds and biases count 0. Because the
budget, ``uvc inspect`` and the benchmark all call these functions, "what the budget counted" and
"what the exported model runs" are the same number by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# The latency lookup tables live in ``uvc.arch.latency``; re-exported here so ``from uvc.arch.cost
# import
# LatencyTable`` (and the LUT format constants) keep working.
from uvc.arch.latency import (  # noqa: F401
    LUT_FORMAT,
    LUT_VERSION,
    LUT_VERSION_EMBED,
    LatencyTable,
    _interp,
)
from uvc.arch.spec import BlockSpec, ViTSpec

NORM_MACS_PER_ELEMENT = 5  # fvcore's estimate for an affine LayerNorm


@dataclass(frozen=True)
class BlockCost:
    """MACs of one block, per image, by operation."""

    norms: int = 0
    qkv: int = 0
    qk: int = 0
    av: int = 0
    proj: int = 0
    fc1: int = 0
    fc2: int = 0
    merge: int = 0  # token merging's similarity matmul (``uvc.arch.merge``)

    @property
    def attn(self) -> int:
        """MACs of the attention branch's matmuls (its norm excluded)."""
        return self.qkv + self.qk + self.av + self.proj

    @property
    def total(self) -> int:
        """All MACs of the block."""
        return sum(getattr(self, f.name) for f in fields(self))


def _norm_count(block: Any, post_norm: bool) -> Any:
    """LayerNorms a block applies: one per present branch (pre-norm), two unless skipped (post)."""
    if post_norm:
        return 0 if getattr(block, "skip", False) else 2
    return int(block.heads > 0) + int(block.mlp_dim > 0)


def block_macs(
    block: BlockSpec,
    tokens: Any,
    dim: Any,
    *,
    post_norm: bool = False,
    merge_r: int = 0,
    prefix: int = 0,
) -> BlockCost:
    """MACs of one block over ``tokens`` tokens of width ``dim`` (per image).

    Works on any object with ``heads``, ``qk_dim``, ``v_dim``, ``mlp_dim`` (and optional
    ``skip``), widths given as ints, floats or tensors (the norms then count as present for any
    width > 0). Post-norm blocks keep both norms unless skipped: a removed attention or MLP still
    costs its ``x <- LN(x)``. Layer scale and activations count 0 (elementwise, as in fvcore).

    Token merging (``merge_r`` tokens, ``prefix`` of them protected; ``uvc.arch.merge``) happens
    between attention and MLP: the attention (and its norm) sees ``tokens``, the MLP and the
    second norm ``tokens - merge_r``; the matching adds the A-B similarity matmul over the keys'
    width (``qk_dim``; the embed width for a block without attention). Sorting, gathers and the
    scatter-add count 0, as in fvcore.
    """
    n, h = tokens, block.heads
    n2 = tokens - merge_r
    n_norm = _norm_tokens(block, post_norm, n, n2)
    merge = 0
    if merge_r:
        patches = tokens - prefix
        width = block.qk_dim if _positive(h) else dim
        merge = ((patches + 1) // 2) * (patches // 2) * width
    return BlockCost(
        norms=NORM_MACS_PER_ELEMENT * dim * n_norm,
        qkv=n * dim * h * (2 * block.qk_dim + block.v_dim),
        qk=h * n * n * block.qk_dim,
        av=h * n * n * block.v_dim,
        proj=n * h * block.v_dim * dim,
        fc1=n2 * dim * block.mlp_dim,
        fc2=n2 * block.mlp_dim * dim,
        merge=merge,
    )


def _positive(x: Any) -> bool:
    return float(x.detach() if hasattr(x, "detach") else x) > 0


def _norm_tokens(block: Any, post_norm: bool, n: Any, n2: Any) -> Any:
    """Tokens the block's LayerNorms see: norm1 before the merge (n), norm2 after it (n2)."""
    if post_norm:
        return 0 if getattr(block, "skip", False) else n + n2
    return n * int(block.heads > 0) + n2 * int(block.mlp_dim > 0)


def block_params(
    block: BlockSpec,
    dim: Any,
    qkv_bias: bool = True,
    *,
    post_norm: bool = False,
    layer_scale: bool = False,
) -> Any:
    """Parameters of one block (same duck typing as ``block_macs``).

    Norm parameters follow ``block_macs``'s norm count; layer scale adds ``dim`` per present branch.
    """
    has_attn, has_mlp = block.heads > 0, block.mlp_dim > 0
    p: Any = 2 * dim * _norm_count(block, post_norm)
    if has_attn:
        qkv_out = block.heads * (2 * block.qk_dim + block.v_dim)
        p = p + dim * qkv_out + (qkv_out if qkv_bias else 0)
        p = p + block.heads * block.v_dim * dim + dim  # proj
        p = p + (dim if layer_scale else 0)
    if has_mlp:
        p = p + dim * block.mlp_dim + block.mlp_dim + block.mlp_dim * dim + dim
        p = p + (dim if layer_scale else 0)
    return p


def spec_block_macs(spec: ViTSpec, block: BlockSpec, i: int = 0) -> BlockCost:
    """``block_macs`` of ``block`` as block ``i`` of ``spec``: its token count (after the
    earlier blocks' merges), its own merge, width and norm placement."""
    return block_macs(
        block,
        spec.tokens_in(i),
        spec.embed_dim,
        post_norm=spec.post_norm,
        merge_r=spec.block_merge(i),
        prefix=spec.num_prefix_tokens,
    )


def spec_block_params(spec: ViTSpec, block: BlockSpec) -> Any:
    """``block_params`` with the width, qkv bias, norm placement and layer scale of ``spec``."""
    return block_params(
        block,
        spec.embed_dim,
        spec.qkv_bias,
        post_norm=spec.post_norm,
        layer_scale=spec.layer_scale,
    )


@dataclass(frozen=True)
class ModelCost:
    """MACs and parameters of a whole spec, per image.

    Args:
        embed_macs: patch embedding.
        blocks: per-block MAC breakdown.
        head_macs: final norm and classifier head(s).
        embed_params / block_params / head_params: parameters of the same parts.
    """

    embed_macs: int
    blocks: tuple[BlockCost, ...]
    head_macs: int
    embed_params: int
    block_params: tuple[int, ...]
    head_params: int

    @property
    def macs(self) -> int:
        """Total MACs per image."""
        return self.embed_macs + sum(b.total for b in self.blocks) + self.head_macs

    @property
    def params(self) -> int:
        """Total parameter count."""
        return self.embed_params + sum(self.block_params) + self.head_params


def model_cost(spec: ViTSpec) -> ModelCost:
    """Exact MACs and parameter counts of ``spec``, total and per block."""
    d, n, p = spec.embed_dim, spec.tokens_in(spec.depth), spec.patch_size
    embed_macs = spec.num_patches * d * spec.in_chans * p * p
    embed_params = d * spec.in_chans * p * p + d + spec.num_prefix_tokens * d
    embed_params += spec.pos_embed_len * d
    n_heads, classes = spec.num_heads_out, spec.num_classes
    # Final norms: over every token (``norm``) and/or over the pooled vector (``fc_norm``).
    norm_elems = (n * d if spec.final_norm else 0) + (d if spec.fc_norm else 0)
    head_macs = NORM_MACS_PER_ELEMENT * norm_elems + n_heads * d * classes
    n_norms = int(spec.final_norm) + int(spec.fc_norm)
    head_params = 2 * d * n_norms + n_heads * (d * classes + classes)
    return ModelCost(
        embed_macs=embed_macs,
        blocks=tuple(spec_block_macs(spec, b, i) for i, b in enumerate(spec.blocks)),
        head_macs=head_macs,
        embed_params=embed_params,
        block_params=tuple(spec_block_params(spec, b) for b in spec.blocks),
        head_params=head_params,
    )


def macs(spec: ViTSpec) -> int:
    """Total MACs per image of ``spec``."""
    return model_cost(spec).macs


def params(spec: ViTSpec) -> int:
    """Total parameters of ``spec``."""
    return model_cost(spec).params
