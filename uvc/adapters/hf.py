"""Hugging Face ``ViTForImageClassification``, ``DeiTForImageClassification`` and
``DeiTForImageClassificationWithTeacher``: pre-norm, class token on the head, eps 1e-12 by default.

``transformers`` is imported only here, lazily. Both key namings load: transformers 5
(``layers.N.attention.q_proj``, ``mlp.fc1``) and 4 (``encoder.layer.N.attention.attention.query``,
``intermediate.dense``). A DeiT without teacher keeps its distillation token in the sequence but
classifies from the class token alone (``dist_head=False``); with teacher both heads are averaged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uvc.adapters.common import (
    DEFAULT_ATOL,
    Conversion,
    build,
    check_parity,
    measure_parity,
    refuse,
)
from uvc.arch.preprocess import INTERPOLATIONS, Preprocess
from uvc.arch.spec import Act, BlockSpec, ViTSpec
from uvc.errors import BackendUnavailable, SpecError, WeightsError

SOURCE = "hf"
CLASSES = {
    "ViTForImageClassification": ("vit", False, False),  # (base, dist token, dist head)
    "DeiTForImageClassification": ("deit", True, False),
    "DeiTForImageClassificationWithTeacher": ("deit", True, True),
}
ACTS = {
    "gelu": Act.GELU,
    "gelu_new": Act.GELU_TANH,
    "gelu_fast": Act.GELU_TANH,
    "gelu_pytorch_tanh": Act.GELU_TANH,
    "quick_gelu": Act.QUICK_GELU,
    "relu": Act.RELU,
}
# (transformers 5 | transformers 4) per-layer names -> uvc names; q/k/v are packed afterwards.
_LAYER_KEYS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_proj": "q",
    "attention.attention.query": "q",
    "attention.k_proj": "k",
    "attention.attention.key": "k",
    "attention.v_proj": "v",
    "attention.attention.value": "v",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_LAYER_RE = re.compile(r"^(?:layers|encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$")
# PIL resampling codes used by image processors.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _kind(module: nn.Module) -> tuple[str, bool, bool]:
    name = type(module).__name__
    if name not in CLASSES:
        raise refuse(f"model class {name} (only {', '.join(CLASSES)})", SOURCE)
    return CLASSES[name]


def spec_from_hf(module: nn.Module, preprocess: Preprocess | None = None) -> ViTSpec:
    """Describe a Hugging Face ViT/DeiT classifier from its config."""
    _, dist, dist_head = _kind(module)
    c = module.config
    if c.hidden_act not in ACTS:
        raise refuse(f"activation {c.hidden_act!r}", SOURCE)
    heads = c.num_attention_heads
    if c.hidden_size % heads:
        raise refuse(f"hidden_size {c.hidden_size} not divisible by {heads} heads", SOURCE)
    size, patch = c.image_size, c.patch_size
    if not isinstance(size, int) or not isinstance(patch, int):
        raise refuse(f"non-square image {size} or patch {patch}", SOURCE)
    hd = c.hidden_size // heads
    return ViTSpec(
        img_size=size,
        patch_size=patch,
        in_chans=c.num_channels,
        embed_dim=c.hidden_size,
        num_classes=c.num_labels,
        blocks=(BlockSpec(heads, hd, hd, c.intermediate_size),) * c.num_hidden_layers,
        dist_token=dist,
        dist_head=dist_head,
        qkv_bias=bool(getattr(c, "qkv_bias", True)),
        norm_eps=c.layer_norm_eps,
        act=ACTS[c.hidden_act],
        preprocess=preprocess or _default_preprocess(module, size),
    )


def _default_preprocess(module: nn.Module, size: int) -> Preprocess:
    """The image processor defaults of the model's family (when no processor config is given)."""
    if _kind(module)[0] == "deit":  # DeiTImageProcessor: resize 256, crop 224, bicubic, ImageNet
        return Preprocess(resize=round(size * 256 / 224), crop=size, interpolation="bicubic")
    # ViTImageProcessor: resize to 224, mean = std = 0.5, bilinear.
    return Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


def convert_state(module: nn.Module, spec: ViTSpec) -> dict[str, Tensor]:
    """Hugging Face names -> uvc names (q, k, v packed into ``qkv``); every key must be used."""
    base, _, dist_head = _kind(module)
    state = dict(module.state_dict())
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def move(src: str, dst: str) -> None:
        if src not in state:
            raise WeightsError(f"{SOURCE}: missing key {src!r}")
        out[dst] = state[src]
        used.add(src)

    emb = f"{base}.embeddings."
    move(emb + "cls_token", "cls_token")
    move(emb + "position_embeddings", "pos_embed")
    move(emb + "patch_embeddings.projection.weight", "patch_embed.proj.weight")
    move(emb + "patch_embeddings.projection.bias", "patch_embed.proj.bias")
    if spec.dist_token:
        move(emb + "distillation_token", "dist_token")
    move(f"{base}.layernorm.weight", "norm.weight")
    move(f"{base}.layernorm.bias", "norm.bias")
    if spec.num_classes:
        head = "cls_classifier" if dist_head else "classifier"
        for p in ("weight", "bias"):
            move(f"{head}.{p}", f"head.{p}")
            if dist_head:
                move(f"distillation_classifier.{p}", f"head_dist.{p}")
    parts: dict[tuple[int, str, str], Tensor] = {}
    for key, value in state.items():
        m = _LAYER_RE.match(key[len(base) + 1 :]) if key.startswith(base + ".") else None
        if m and m[2] in _LAYER_KEYS:
            parts[(int(m[1]), _LAYER_KEYS[m[2]], m[3])] = value
            used.add(key)
    for (i, name, p), value in parts.items():
        if name not in ("q", "k", "v"):
            out[f"blocks.{i}.{name}.{p}"] = value
    for i in range(spec.depth):
        for p in ("weight", "bias") if spec.qkv_bias else ("weight",):
            try:
                qkv = [parts[(i, n, p)] for n in ("q", "k", "v")]
            except KeyError:
                raise WeightsError(f"{SOURCE}: layer {i} lacks a q/k/v {p}") from None
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(qkv, dim=0)
    left = sorted(set(state) - used)
    if left:
        raise refuse(f"parameters uvc's ViT has no place for ({', '.join(left[:6])})", SOURCE)
    return out


def from_hf_module(
    module: nn.Module,
    atol: float = DEFAULT_ATOL,
    preprocess: Preprocess | None = None,
    **hints: Any,
) -> Conversion:
    """Convert a live Hugging Face ViT/DeiT classifier; parity against its own forward."""
    if hints:
        raise SpecError(f"{SOURCE}: unexpected options {sorted(hints)} (the config describes it)")
    spec = spec_from_hf(module, preprocess)
    model = build(spec, convert_state(module, spec))
    module.eval()
    diff = measure_parity(lambda x: module(pixel_values=x).logits, model)
    check_parity(diff, atol, f"{SOURCE} {type(module).__name__}")
    return Conversion(model, SOURCE, diff, {"class": type(module).__name__})


def read_processor_config(folder: Path, img_size: int) -> Preprocess | None:
    """The preprocessing in a ``preprocessor_config.json`` (None when the folder has none)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None

    def side(value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("shortest_edge") or value.get("height")
        return int(value) if value else None

    interp = _RESAMPLE.get(cfg.get("resample", 2), "bilinear")
    crop = side(cfg.get("crop_size")) if cfg.get("do_center_crop") else None
    return Preprocess(
        mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
        resize=side(cfg.get("size")) if cfg.get("do_resize", True) else None,
        crop=crop or img_size,
        interpolation=interp if interp in INTERPOLATIONS else "bilinear",
    )


def convert_hf_source(source: str | Path, *, atol: float = DEFAULT_ATOL) -> Conversion:
    """Convert a local ``save_pretrained`` folder (config.json + weights); never downloads."""
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise BackendUnavailable(
            "converting Hugging Face models needs transformers: pip install 'uvc[hf]'"
        ) from None
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    if "DeiTForImageClassificationWithTeacher" in archs:
        from transformers import DeiTForImageClassificationWithTeacher as cls
    else:
        cls = AutoModelForImageClassification
    module = cls.from_pretrained(folder, local_files_only=True)
    pre = read_processor_config(folder, config.image_size)
    return from_hf_module(module, atol=atol, preprocess=pre)
