"""torchvision ``VisionTransformer`` (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ``vit_l_32``,
``vit_h_14``): pre-norm, exact GELU, eps 1e-6, packed ``in_proj``, class token on the head.

A ``heads.pre_logits`` + Tanh head (``representation_size``) and a convolutional stem are refused.
Older checkpoints name the MLP ``linear_1``/``linear_2``; both namings load.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from uvc.adapters.common import (
    DEFAULT_ATOL,
    Conversion,
    build,
    check_parity,
    measure_parity,
    refuse,
    square_side,
)
from uvc.arch.preprocess import Preprocess
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import SpecError, WeightsError

SOURCE = "torchvision"
# torchvision's builders: heads per architecture (not visible in the weights' shapes).
ARCH_HEADS = {"vit_b_16": 12, "vit_b_32": 12, "vit_l_16": 16, "vit_l_32": 16, "vit_h_14": 16}
_LAYER = "encoder.layers.encoder_layer_{}."
_LAYER_KEYS = {
    "ln_1": "norm1",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}


def _preprocess(img_size: int) -> Preprocess:
    """torchvision's ImageNet eval preset (resize 256, crop 224, bilinear) at ``img_size``."""
    return Preprocess(resize=round(img_size * 256 / 224), crop=img_size, interpolation="bilinear")


def spec_from_torchvision(module: nn.Module) -> ViTSpec:
    """Describe a torchvision ``VisionTransformer``; refuses what uvc's ViT cannot reproduce."""
    from torchvision.models.vision_transformer import VisionTransformer

    if not isinstance(module, VisionTransformer):
        raise refuse(f"model class {type(module).__name__}", SOURCE)
    if not isinstance(module.conv_proj, nn.Conv2d):
        raise refuse("a convolutional stem (conv_stem_configs)", SOURCE)
    if hasattr(module.heads, "pre_logits"):
        raise refuse("a pre_logits + Tanh head (representation_size)", SOURCE)
    head = getattr(module.heads, "head", None)
    if not isinstance(head, nn.Linear) or len(module.heads) != 1:
        raise refuse(f"head {module.heads}", SOURCE)
    blocks, eps = [], {module.encoder.ln.eps}
    for layer in module.encoder.layers:
        attn, mlp = layer.self_attention, layer.mlp
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None:
            raise refuse("attention without a packed, biased in_proj", SOURCE)
        if not isinstance(mlp[1], nn.GELU) or mlp[1].approximate != "none":
            raise refuse(f"MLP activation {mlp[1]!r}", SOURCE)
        eps |= {layer.ln_1.eps, layer.ln_2.eps}
        d = module.hidden_dim
        blocks.append(
            BlockSpec(attn.num_heads, d // attn.num_heads, d // attn.num_heads, mlp[0].out_features)
        )
    if len(eps) != 1:
        raise refuse("LayerNorms with different eps", SOURCE)
    return ViTSpec(
        img_size=module.image_size,
        patch_size=module.patch_size,
        in_chans=module.conv_proj.in_channels,
        embed_dim=module.hidden_dim,
        num_classes=head.out_features,
        blocks=tuple(blocks),
        norm_eps=eps.pop(),
        preprocess=_preprocess(module.image_size),
    )


def convert_state(state: dict[str, Tensor], spec: ViTSpec) -> dict[str, Tensor]:
    """torchvision names -> uvc names (both MLP namings); every key must be used."""
    state = rename_legacy_mlp(state)
    out = {
        "patch_embed.proj.weight": state["conv_proj.weight"],
        "patch_embed.proj.bias": state["conv_proj.bias"],
        "cls_token": state["class_token"],
        "pos_embed": state["encoder.pos_embedding"],
        "norm.weight": state["encoder.ln.weight"],
        "norm.bias": state["encoder.ln.bias"],
        "head.weight": state["heads.head.weight"],
        "head.bias": state["heads.head.bias"],
    }
    for i in range(spec.depth):
        src = _LAYER.format(i)
        for k, v in state.items():
            if not k.startswith(src):
                continue
            rest = k[len(src) :]
            for old, new in _LAYER_KEYS.items():
                if rest == old or rest.startswith(old + "."):
                    out[f"blocks.{i}.{new}{rest[len(old) :]}"] = v
                    break
    if len(out) != len(state):
        raise refuse(f"{len(state) - len(out)} parameters uvc's ViT has no place for", SOURCE)
    return out


def rename_legacy_mlp(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Older torchvision checkpoints: ``mlp.linear_1``/``linear_2`` -> ``mlp.0``/``mlp.3``."""
    pattern = re.compile(r"\.mlp\.linear_([12])\.")
    return {
        pattern.sub(lambda m: ".mlp.0." if m[1] == "1" else ".mlp.3.", k): v
        for k, v in state.items()
    }


def from_torchvision_module(
    module: nn.Module, atol: float = DEFAULT_ATOL, **hints: Any
) -> Conversion:
    """Convert a live torchvision ViT; parity against its own forward."""
    if hints:
        raise SpecError(
            f"{SOURCE}: unexpected options {sorted(hints)} (the model describes itself)"
        )
    spec = spec_from_torchvision(module)
    model = build(spec, convert_state(dict(module.state_dict()), spec))
    diff = measure_parity(module.eval(), model)
    check_parity(diff, atol, SOURCE)
    return Conversion(model, SOURCE, diff)


def convert_torchvision_source(
    source: str | Path,
    *,
    arch: str | None = None,
    heads: int | None = None,
    img_size: int | None = None,
    atol: float = DEFAULT_ATOL,
) -> Conversion:
    """Convert a torchvision ViT weights file; heads from ``arch`` (vit_b_16, ...) or ``heads``."""
    from torchvision.models.vision_transformer import VisionTransformer

    from uvc.files.weights import read_state_dict

    state = rename_legacy_mlp(read_state_dict(source))
    if any(k.startswith("heads.pre_logits") for k in state):
        raise refuse("a pre_logits + Tanh head (representation_size)", SOURCE)
    if heads is None:
        if arch not in ARCH_HEADS:
            raise SpecError(
                f"{SOURCE}: the head count is not in the weights; pass --arch "
                f"({', '.join(ARCH_HEADS)}) or --heads"
            )
        heads = ARCH_HEADS[arch]
    try:
        conv = state["conv_proj.weight"]
        dim, patch = conv.shape[0], conv.shape[-1]
        layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
        mlp_dim = state[_LAYER.format(0) + "mlp.0.weight"].shape[0]
        classes = state["heads.head.weight"].shape[0]
        seq = state["encoder.pos_embedding"].shape[1]
    except KeyError as exc:
        raise WeightsError(f"{source}: not a torchvision ViT state dict (no {exc})") from None
    side = img_size or square_side(seq - 1, SOURCE) * patch
    module = VisionTransformer(side, patch, layers, heads, dim, mlp_dim, num_classes=classes)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: {str(exc).splitlines()[0]}") from None
    return from_torchvision_module(module, atol=atol)
