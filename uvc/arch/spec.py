"""The architecture spec: one plain description of a ViT's shape, read by every stage.

A stock DeiT-Tiny is a uniform spec (12 x {heads 3, qk 64, v 64, mlp 768}, embed 192); a compressed
model is the same thing with per-block widths. ``heads == 0`` means the block has no attention,
``mlp_dim == 0`` that it has no MLP.

Format 2 adds what third-party ViTs differ in: norm placement (pre/post), activation, layer scale,
register tokens, ``no_embed_class``, the final norm, a distillation token without its own head, and
the model's input preprocessing. Format-1 files still load (every new field has the old default).

Post-norm blocks compute ``x <- LN1(x + attn(x))``, ``x <- LN2(x + mlp(x))``. A removed attention
(``heads == 0``) or MLP (``mlp_dim == 0``) leaves its LayerNorm in place (``x <- LN(x)``); only a
skipped block (``skip=True``) is the identity. In pre-norm blocks a removed part takes its norm with
it, so ``skip`` changes nothing there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from uvc.arch.preprocess import Preprocess
from uvc.errors import SpecError

FORMAT_VERSION = 2
FORMAT_VERSION_MERGE = 3  # written only by specs with token merging (``merge_r``)
READABLE_VERSIONS = (1, 2, 3)


class Pool(str, Enum):
    """How the final features are pooled before the classifier."""

    TOKEN = "token"  # the class token (and the distillation token for distilled models)
    AVG = "avg"  # mean over the patch tokens


class NormPlacement(str, Enum):
    """Where each block's LayerNorms sit."""

    PRE = "pre"  # x + f(LN(x)): timm, torchvision, Hugging Face
    POST = "post"  # LN(x + f(x)): nn.TransformerEncoderLayer's default, the original Transformer


class Act(str, Enum):
    """The MLP's activation."""

    GELU = "gelu"  # exact (erf) GELU
    GELU_TANH = "gelu_tanh"  # tanh approximation
    QUICK_GELU = "quick_gelu"  # x * sigmoid(1.702 x) (CLIP)
    RELU = "relu"


@dataclass(frozen=True)
class BlockSpec:
    """The widths of one transformer block.

    Args:
        heads: number of attention heads (0: the block has no attention).
        qk_dim: query/key width per head; shared by every head of the block.
        v_dim: value width per head; shared by every head of the block.
        mlp_dim: hidden units of the MLP (0: the block has no MLP).
        skip: the whole block is the identity (block skipping). Needs all widths 0. Only matters
            for post-norm models, where a block without attention and MLP still applies its norms.
    """

    heads: int
    qk_dim: int
    v_dim: int
    mlp_dim: int
    skip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.skip, bool):
            raise SpecError(f"block skip must be true or false, got {self.skip!r}")
        if self.skip and (self.heads or self.mlp_dim):
            raise SpecError("a skipped block (skip=true) must have heads=0 and mlp_dim=0")
        for name in ("heads", "qk_dim", "v_dim", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SpecError(f"block {name} must be an integer, got {value!r}")
            if value < 0:
                raise SpecError(f"block {name} must be >= 0, got {value}")
        if self.heads > 0 and (self.qk_dim == 0 or self.v_dim == 0):
            raise SpecError(
                f"a block with {self.heads} heads needs qk_dim and v_dim >= 1 "
                f"(got qk_dim={self.qk_dim}, v_dim={self.v_dim}); use heads=0 to remove attention"
            )

    @property
    def has_attn(self) -> bool:
        """Whether the block keeps its attention."""
        return self.heads > 0

    @property
    def has_mlp(self) -> bool:
        """Whether the block keeps its MLP."""
        return self.mlp_dim > 0


@dataclass(frozen=True)
class ViTSpec:
    """The shape of a whole ViT/DeiT, enough to build it and to count its cost.

    Args:
        img_size: input height and width in pixels (square images).
        patch_size: patch height and width; must divide ``img_size``.
        embed_dim: token width, shared by all blocks.
        num_classes: classifier outputs (0: no classifier, features out).
        blocks: one ``BlockSpec`` per transformer block.
        in_chans: input channels.
        class_token: whether a class token is prepended.
        dist_token: whether a DeiT distillation token (and ``head_dist``) is present.
        pool: how features are pooled before the head.
        fc_norm: a LayerNorm on the pooled vector (timm's ``fc_norm``; a ``LN + Linear`` head).
        qkv_bias: whether the qkv projection has a bias.
        norm_eps: epsilon of every LayerNorm.
        norm_placement: pre-norm or post-norm blocks.
        act: the MLP activation.
        layer_scale: per-channel scales on both residual branches (``ls1.gamma``, ``ls2.gamma``).
        reg_tokens: register tokens after the class/distillation tokens (DINOv2 with registers).
        no_embed_class: the position embedding covers the patches only (added before the
            class/register tokens are prepended), as in DeiT-III and DINOv2.
        final_norm: a LayerNorm over all tokens after the blocks (``norm``); None: present unless
            ``fc_norm`` (format 1's rule).
        dist_head: with ``dist_token``: whether it has its own head (averaged with the class head
            at eval). False: the token takes part in attention, the logits are the class head's.
        preprocess: the model's own input preprocessing (None: not recorded).
        merge_r: tokens merged per block (ToMe, ``uvc.arch.merge``), one count per block; () or all
            zeros: no merging (stored as ()). Prefix tokens are never merged; block i may merge at
            most half of the patch tokens it receives.
    """

    img_size: int
    patch_size: int
    embed_dim: int
    num_classes: int
    blocks: tuple[BlockSpec, ...]
    in_chans: int = 3
    class_token: bool = True
    dist_token: bool = False
    pool: Pool = Pool.TOKEN
    fc_norm: bool = False
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    norm_placement: NormPlacement = NormPlacement.PRE
    act: Act = Act.GELU
    layer_scale: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    final_norm: bool | None = None
    dist_head: bool = True
    preprocess: Preprocess | None = None
    merge_r: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for name, kind in (("pool", Pool), ("norm_placement", NormPlacement), ("act", Act)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(p.value for p in kind)
                raise SpecError(
                    f"{name} must be one of {choices}, got {getattr(self, name)!r}"
                ) from None
        if self.final_norm is None:
            object.__setattr__(self, "final_norm", not self.fc_norm)
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess.from_dict(self.preprocess))
        if self.preprocess is not None and not isinstance(self.preprocess, Preprocess):
            raise SpecError(f"preprocess must be a Preprocess, got {self.preprocess!r}")
        for name in ("layer_scale", "no_embed_class", "final_norm", "dist_head", "fc_norm"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
            raise SpecError(f"reg_tokens must be an integer >= 0, got {self.reg_tokens!r}")
        for name in ("img_size", "patch_size", "embed_dim", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise SpecError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if self.img_size % self.patch_size:
            raise SpecError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )
        if not self.blocks:
            raise SpecError("a ViT needs at least one block")
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BlockSpec):
                raise SpecError(f"blocks[{i}] must be a BlockSpec, got {type(block).__name__}")
        if self.dist_token and not self.class_token:
            raise SpecError("a distillation token needs a class token")
        if self.dist_token and self.pool is not Pool.TOKEN:
            raise SpecError("a distilled model pools its class and distillation tokens ('token')")
        if self.pool is Pool.TOKEN and not self.class_token:
            raise SpecError("pool='token' needs a class token; use pool='avg' without one")
        from uvc.arch.merge_schedule import check_merge_r

        object.__setattr__(self, "merge_r", check_merge_r(self))
        if not self.norm_eps > 0:
            raise SpecError(f"norm_eps must be > 0, got {self.norm_eps}")
        if self.preprocess is not None and len(self.preprocess.mean) != self.in_chans:
            raise SpecError(
                f"preprocess has {len(self.preprocess.mean)} channel statistics for "
                f"{self.in_chans} input channels"
            )

    @property
    def num_patches(self) -> int:
        """Patch tokens per image."""
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Class, distillation and register tokens prepended to the patches."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def pos_embed_len(self) -> int:
        """Positions in ``pos_embed``: the patches only with ``no_embed_class``, else all tokens."""
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def post_norm(self) -> bool:
        """Whether blocks are post-norm (``LN(x + f(x))``)."""
        return self.norm_placement is NormPlacement.POST

    @property
    def num_heads_out(self) -> int:
        """Classifier heads: 2 for a distilled model with ``head_dist``, else 1 (0: no classes)."""
        if not self.num_classes:
            return 0
        return 2 if (self.dist_token and self.dist_head) else 1

    @property
    def num_tokens(self) -> int:
        """Sequence length entering the first block (every block, without merging)."""
        return self.num_patches + self.num_prefix_tokens

    def tokens_in(self, i: int) -> int:
        """Tokens entering block ``i`` (``i == depth``: leaving the last block)."""
        return self.num_tokens - sum(self.merge_r[:i])

    def block_merge(self, i: int) -> int:
        """Tokens block ``i`` merges (0 without merging)."""
        return self.merge_r[i] if self.merge_r else 0

    @property
    def depth(self) -> int:
        """Number of blocks."""
        return len(self.blocks)

    def replace(self, **changes: Any) -> ViTSpec:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def uniform(
        cls,
        depth: int,
        embed_dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        **kwargs: Any,
    ) -> ViTSpec:
        """A stock ViT: ``depth`` identical blocks with head dim ``embed_dim // heads``."""
        if heads <= 0 or embed_dim % heads:
            raise SpecError(f"embed_dim {embed_dim} is not divisible by {heads} heads")
        head_dim = embed_dim // heads
        block = BlockSpec(heads, head_dim, head_dim, int(embed_dim * mlp_ratio))
        return cls(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            num_classes=num_classes,
            blocks=(block,) * depth,
            **kwargs,
        )

    # --- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), with the format version."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "merge_r":
                if value:  # a spec without merging writes format 2 exactly as before
                    out["format_version"], out[f.name] = FORMAT_VERSION_MERGE, list(value)
                continue
            if f.name == "blocks":
                value = [dataclasses.asdict(b) for b in value]
            elif f.name == "preprocess":
                value = None if value is None else value.to_dict()
            elif isinstance(value, Enum):
                value = value.value
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTSpec:
        """Build from ``to_dict`` output; raises ``SpecError`` on anything malformed."""
        if not isinstance(data, dict):
            raise SpecError(f"a spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("format_version", None)
        if version not in READABLE_VERSIONS:
            raise SpecError(
                f"unknown spec format_version {version!r} (this uvc reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        if version == 1:
            v1_fields = {f.name for f in dataclasses.fields(cls)} - set(V2_FIELDS)
            newer = sorted(set(data) - v1_fields)
            if newer:
                raise SpecError(f"format_version 1 spec with format-2 field(s): {', '.join(newer)}")
        if version != FORMAT_VERSION_MERGE and "merge_r" in data:
            raise SpecError(f"format_version {version} spec with the format-3 field merge_r")
        if "merge_r" in data:
            if not isinstance(data["merge_r"], list):
                raise SpecError("spec field 'merge_r' must be a list of integers")
            data["merge_r"] = tuple(data["merge_r"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
        blocks = data.get("blocks")
        if not isinstance(blocks, list):
            raise SpecError("spec field 'blocks' must be a list of block objects")
        block_keys = {"heads", "qk_dim", "v_dim", "mlp_dim"}
        parsed = []
        for i, b in enumerate(blocks):
            if not isinstance(b, dict) or not block_keys <= set(b) <= block_keys | {"skip"}:
                raise SpecError(
                    f"blocks[{i}] must have exactly the keys {sorted(block_keys)} (and 'skip')"
                )
            parsed.append(BlockSpec(**b))
        data["blocks"] = tuple(parsed)
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise SpecError(f"incomplete spec: {exc}") from None

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize to a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ViTSpec:
        """Parse a JSON string written by ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (atomically) and return the path."""
        from uvc._fs import atomic_write_text

        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ViTSpec:
        """Read a spec JSON file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read spec {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"{path} is not a text (JSON) file") from None
        return cls.from_json(text)


# Fields format 2 (and 3: merge_r) added (a format-1 file must not carry them).
V2_FIELDS = (
    "merge_r",
    "norm_placement",
    "act",
    "layer_scale",
    "reg_tokens",
    "no_embed_class",
    "final_norm",
    "dist_head",
    "preprocess",
)
