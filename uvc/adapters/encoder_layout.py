"""Where the parts of a plain PyTorch ViT live, and what its weights cannot tell.

``EncoderLayout`` names the state-dict prefixes of the patch embedding, tokens, encoder layers,
norms and head of a ViT built on ``nn.TransformerEncoderLayer``; ``detect_layout`` recognises the
common layouts from the keys and shapes; ``EncoderConfig`` holds what the user states (heads and
layer options). ``uvc.adapters.torch_encoder`` converts with them and re-exports all three.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor

from uvc.adapters.common import refuse
from uvc.errors import SpecError

SOURCE = "torch-encoder"
_LAYER_RE = re.compile(r"^(.*)\.(\d+)\.self_attn\.in_proj_weight$")
_CLS_NAMES = ("cls_token", "class_token", "cls_embedding", "cls")
_FINAL_NORM_NAMES = ("norm", "ln", "final_norm", "norm_final", "layernorm", "encoder_norm", "ln_f")
_POS_NAMES = (
    "pos_embed",
    "pos_embedding",
    "position_embedding",
    "position_embeddings",
    "positional_embedding",
)


@dataclass(frozen=True)
class EncoderLayout:
    """Where each part of a plain ViT lives in its state dict (key prefixes, without ``.weight``).

    Args:
        patch_embed: the patch ``Conv2d`` (kernel == stride).
        encoder: the list of ``TransformerEncoderLayer`` (e.g. ``transformer.layers``).
        head: the classifier ``Linear`` (None: no classifier, features out).
        cls_token: the class token parameter (None: no class token, avg pooling).
        pos_embed: the learned position embedding parameter.
        final_norm: a LayerNorm over all tokens after the encoder (``TransformerEncoder.norm``).
        head_norm: a LayerNorm on the pooled vector before the head (``mlp_head.0``).
        pool: ``token`` (the class token) or ``avg`` (mean of the patch tokens).
    """

    patch_embed: str
    encoder: str
    pos_embed: str
    head: str | None = None
    cls_token: str | None = None
    final_norm: str | None = None
    head_norm: str | None = None
    pool: str = "token"

    @classmethod
    def parse(cls, source: str | dict[str, Any]) -> EncoderLayout:
        """From a dict, a JSON string or a JSON file; unknown keys are refused."""
        data: Any = source
        if isinstance(source, str):
            path = Path(source)
            text = path.read_text() if path.is_file() else source
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SpecError(f"layout is neither a JSON file nor JSON text: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError("a layout must be a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"unknown layout key(s): {', '.join(unknown)} (known: {sorted(names)})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise SpecError(f"incomplete layout: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


@dataclass(frozen=True)
class EncoderConfig:
    """What the weights of a ``TransformerEncoderLayer`` stack cannot tell.

    Args:
        heads: attention heads per layer (``nhead``).
        norm_first: pre-norm layers (PyTorch's default False: post-norm).
        activation: ``relu`` (PyTorch's default), ``gelu``, ``gelu_tanh`` or ``quick_gelu``.
        eps: LayerNorm epsilon (PyTorch's default 1e-5).
        img_size: input side (None: from the position embedding, assuming a square grid).
    """

    heads: int
    norm_first: bool = False
    activation: str = "relu"
    eps: float = 1e-5
    img_size: int | None = None


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _prefix(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def detect_layout(state: dict[str, Tensor]) -> EncoderLayout:
    """Recognise a common plain-ViT layout from the state dict's keys and shapes.

    Raises:
        SpecError: naming what could not be found or was ambiguous (pass a layout then).
    """
    layer_prefixes = {m.group(1) for k in state if (m := _LAYER_RE.match(k))}
    if len(layer_prefixes) != 1:
        found = sorted(layer_prefixes) or "none"
        raise SpecError(
            f"{SOURCE}: expected one stack of TransformerEncoderLayer keys "
            f"('<prefix>.N.self_attn.in_proj_weight'), found {found}"
        )
    encoder = layer_prefixes.pop()
    outside = {k: v for k, v in state.items() if not k.startswith(encoder + ".")}
    convs = [_prefix(k) for k, v in outside.items() if _leaf(k) == "weight" and v.ndim == 4]
    if len(convs) != 1:
        raise SpecError(f"{SOURCE}: expected one Conv2d patch embedding, found {convs or 'none'}")
    cls_keys = [k for k in outside if _leaf(k) in _CLS_NAMES]
    pos_keys = [k for k in outside if _leaf(k) in _POS_NAMES]
    if len(pos_keys) != 1 or len(cls_keys) > 1:
        raise SpecError(
            f"{SOURCE}: cannot tell the position embedding {pos_keys} / class token {cls_keys} "
            "apart; pass a layout"
        )
    rest = [
        k for k in outside if _prefix(k) != convs[0] and k not in cls_keys and k not in pos_keys
    ]
    linears = sorted({_prefix(k) for k in rest if _leaf(k) == "weight" and state[k].ndim == 2})
    norms = sorted({_prefix(k) for k in rest if _leaf(k) == "weight" and state[k].ndim == 1})
    if len(linears) > 1:
        raise refuse(f"more than one linear layer after the encoder ({', '.join(linears)})", SOURCE)
    head = linears[0] if linears else None
    head_norm = final_norm = None
    container = _prefix(encoder)  # "transformer" for "transformer.layers"
    for norm in norms:
        # A norm beside the head (mlp_head.0 next to mlp_head.1) acts on the pooled vector; the
        # encoder's own norm (transformer.norm) or a top-level "norm"/"ln" acts on every token.
        if head is not None and _prefix(norm) and _prefix(norm) == _prefix(head):
            head_norm = _one(head_norm, norm, "head norms")
        elif (container and _prefix(norm) == container) or norm in _FINAL_NORM_NAMES:
            final_norm = _one(final_norm, norm, "final norms")
        else:
            raise SpecError(
                f"{SOURCE}: cannot tell what the norm {norm!r} normalises; pass a layout "
                "(final_norm / head_norm), or convert the live module"
            )
    return EncoderLayout(
        patch_embed=convs[0],
        encoder=encoder,
        pos_embed=pos_keys[0],
        head=head,
        cls_token=cls_keys[0] if cls_keys else None,
        final_norm=final_norm,
        head_norm=head_norm,
        pool="token" if cls_keys else "avg",
    )


def _one(current: str | None, new: str, what: str) -> str:
    if current is not None:
        raise SpecError(f"{SOURCE}: two {what} ({current}, {new}); pass a layout")
    return new
