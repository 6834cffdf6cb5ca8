"""Specs and weights from timm models and local files (no hub downloads, ever).

Reads timm ``VisionTransformer`` objects and names, official DeiT checkpoints (``{"model": ...}``),
plain state dicts, ``.safetensors`` files and uvc checkpoints. Layer scale (DeiT-III), register
tokens and ``no_embed_class`` (DINOv2), avg pooling, ``fc_norm`` and the GELU/ReLU/QuickGELU
activations are described by the spec; timm variants that ``uvc.arch.model.ViT`` cannot reproduce
exactly
(QK-norm, a norm before the blocks, attention pooling, ...) are refused, by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uvc.arch.preprocess import Preprocess
from uvc.arch.spec import Act, BlockSpec, Pool, ViTSpec
from uvc.errors import SpecError, WeightsError


def _refuse(name: str, what: str) -> SpecError:
    return SpecError(f"{name}: {what} is not supported by uvc's ViT; refusing to build it")


def create_timm_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised timm model by name (``pretrained=False`` always)."""
    import timm

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        raise SpecError(f"unknown timm model {name!r}: {exc}") from None


def spec_from_timm(model: nn.Module | str, num_classes: int | None = None) -> ViTSpec:
    """Describe a timm ``VisionTransformer`` (or ``deit_*_distilled_*``) as a ``ViTSpec``.

    Args:
        model: a timm model object, or a timm model name (built on the meta device, no weights).
        num_classes: override the classifier width (only with a name).

    Raises:
        SpecError: the model is not a ViT this class can represent faithfully.
    """
    if isinstance(model, str):
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        with torch.device("meta"):
            model = create_timm_model(model, **kwargs)
    name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise _refuse(name, f"model class {type(model).__name__} (only timm VisionTransformer)")
    _check_supported(model, name)

    blocks = []
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        heads = attn.num_heads
        qkv_out = attn.qkv.out_features
        if qkv_out % (3 * heads):
            raise _refuse(name, "a qkv projection not split evenly into heads")
        head_dim = qkv_out // (3 * heads)
        blocks.append(BlockSpec(heads, head_dim, head_dim, mlp.fc1.out_features))

    pe = model.patch_embed
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    if img[0] != img[1] or patch[0] != patch[1]:
        raise _refuse(name, f"non-square image {img} or patch {patch}")
    eps = model.blocks[0].norm1.eps
    dist = getattr(model, "dist_token", None) is not None
    head = model.head
    ls = not isinstance(getattr(model.blocks[0], "ls1", nn.Identity()), nn.Identity)
    return ViTSpec(
        img_size=img[0],
        patch_size=patch[0],
        in_chans=pe.proj.in_channels,
        embed_dim=model.embed_dim,
        num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        blocks=tuple(blocks),
        class_token=model.cls_token is not None,
        dist_token=dist,
        pool=Pool(model.global_pool) if model.global_pool else Pool.TOKEN,
        fc_norm=isinstance(model.fc_norm, nn.LayerNorm),
        final_norm=isinstance(model.norm, nn.LayerNorm),
        qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        norm_eps=eps,
        act=_timm_act(model.blocks[0].mlp.act, name),
        layer_scale=ls,
        reg_tokens=int(getattr(model, "num_reg_tokens", 0)),
        no_embed_class=bool(getattr(model, "no_embed_class", False)),
        preprocess=timm_preprocess(model, img[0]),
    )


def timm_preprocess(model: nn.Module, img_size: int) -> Preprocess | None:
    """The eval preprocessing of a timm model's ``pretrained_cfg`` (None when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        return None
    crop_pct = float(cfg.get("crop_pct", 1.0) or 1.0)
    interp = cfg.get("interpolation", "bicubic")
    return Preprocess(
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize=int(img_size / crop_pct),  # timm: floor(size / crop_pct)
        crop=img_size,
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic",
    )


def _timm_act(act: nn.Module, name: str) -> Act:
    """The spec activation of a timm MLP activation module (refused by name otherwise)."""
    from timm.layers import activations as timm_act

    if isinstance(act, nn.GELU):
        return Act.GELU if act.approximate == "none" else Act.GELU_TANH
    if isinstance(act, timm_act.GELU):
        return Act.GELU
    if isinstance(act, timm_act.GELUTanh):
        return Act.GELU_TANH
    if isinstance(act, timm_act.QuickGELU):
        return Act.QUICK_GELU
    if isinstance(act, nn.ReLU):
        return Act.RELU
    raise _refuse(name, f"MLP activation {act!r} (only GELU, tanh-GELU, QuickGELU, ReLU)")


def _check_supported(model: nn.Module, name: str) -> None:
    """Raise ``SpecError`` for every timm ViT feature ``uvc.arch.model.ViT`` does not reproduce."""
    if getattr(model, "pos_embed", None) is None:
        raise _refuse(name, "a model without learned position embeddings")
    if not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity):
        raise _refuse(name, "a norm before the blocks (pre_norm, CLIP-style)")
    if getattr(model, "attn_pool", None) is not None:
        raise _refuse(name, "attention pooling (global_pool='map')")
    if model.global_pool not in ("token", "avg", ""):
        raise _refuse(name, f"global_pool={model.global_pool!r}")
    if model.global_pool == "" and model.cls_token is None:
        raise _refuse(name, "no pooling without a class token")
    if getattr(model, "pool_include_prefix", False):
        raise _refuse(name, "pooling that includes the prefix tokens (pool_include_prefix)")
    if getattr(model, "dist_token", None) is not None and getattr(model, "num_reg_tokens", 0):
        raise _refuse(name, "a distillation token together with register tokens")
    pe = model.patch_embed
    if not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        raise _refuse(name, "a norm inside the patch embedding")
    if not isinstance(pe.proj, nn.Conv2d) or pe.proj.bias is None:
        raise _refuse(name, "a patch embedding other than a biased Conv2d")
    if tuple(pe.proj.kernel_size) != tuple(pe.proj.stride):
        raise _refuse(name, "overlapping patches")
    if not isinstance(model.norm, (nn.LayerNorm, nn.Identity)):
        raise _refuse(name, f"final norm {type(model.norm).__name__}")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        raise _refuse(name, f"head {type(model.head).__name__}")
    eps = model.norm.eps if isinstance(model.norm, nn.LayerNorm) else None
    if isinstance(getattr(model, "fc_norm", None), nn.LayerNorm):
        if eps is not None and model.fc_norm.eps != eps:
            raise _refuse(name, "LayerNorms with different eps")
        eps = model.fc_norm.eps
    has_ls = None
    for i, blk in enumerate(model.blocks):
        where = f"block {i}"
        if type(blk).__name__ != "Block":
            raise _refuse(name, f"{where}: block type {type(blk).__name__} (only pre-norm Block)")
        ls = [getattr(blk, k, nn.Identity()) for k in ("ls1", "ls2")]
        if any(type(m).__name__ not in ("Identity", "LayerScale") for m in ls):
            raise _refuse(name, f"{where}: layer scale of type {type(ls[0]).__name__}")
        block_ls = [type(m).__name__ == "LayerScale" for m in ls]
        if block_ls[0] != block_ls[1] or (has_ls is not None and block_ls[0] != has_ls):
            raise _refuse(name, "layer scale on some residual branches only")
        has_ls = block_ls[0]
        attn, mlp = blk.attn, blk.mlp
        for sub in ("q_norm", "k_norm", "norm"):
            if not isinstance(getattr(attn, sub, nn.Identity()), nn.Identity):
                raise _refuse(name, f"{where}: attention {sub} (QK-norm / scale-norm)")
        if type(mlp).__name__ != "Mlp" or not isinstance(
            getattr(mlp, "norm", nn.Identity()), nn.Identity
        ):
            raise _refuse(name, f"{where}: MLP type {type(mlp).__name__} (only a plain Mlp)")
        if type(mlp.act) is not type(model.blocks[0].mlp.act):
            raise _refuse(name, f"{where}: a different MLP activation per block")
        _timm_act(mlp.act, name)
        if mlp.fc1.bias is None or mlp.fc2.bias is None or attn.proj.bias is None:
            raise _refuse(name, f"{where}: a linear layer without bias")
        for norm in (blk.norm1, blk.norm2):
            if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
                raise _refuse(name, f"{where}: norm {type(norm).__name__} (only affine LayerNorm)")
            if eps is not None and norm.eps != eps:
                raise _refuse(name, "LayerNorms with different eps")
            eps = norm.eps


# --- state dicts --------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from a local weights file.

    Accepts ``.safetensors``, and ``.pth``/``.pt``/``.bin`` files holding a plain state dict, an
    official DeiT ``{"model": state_dict}``, a ``{"state_dict": ...}`` or a uvc checkpoint. Files
    are read with ``weights_only=True``: a file that would need to run code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"cannot read {path} as safetensors: {exc}") from None
    from uvc.files.checkpoint import safe_torch_load

    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "uvc_format" in obj:
        return obj["state_dict"]
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    # DataParallel / DDP prefixes.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, source: nn.Module | dict[str, Tensor] | str | Path) -> None:
    """Copy weights into ``model`` from a module, a state dict or a local file, strictly.

    Raises:
        WeightsError: listing every missing, unexpected and shape-mismatched key.
    """
    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, dict):
        state = source
    else:
        state = read_state_dict(source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_short(shapes)}")
        raise WeightsError("weights do not match the model spec; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _short(items: list[str], n: int = 8) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def vit_from_timm(model: nn.Module) -> nn.Module:
    """A ``uvc.arch.model.ViT`` with the architecture and weights of a timm ViT object."""
    from uvc.arch.model import ViT

    ours = ViT(spec_from_timm(model))
    load_weights(ours, model)
    return ours
