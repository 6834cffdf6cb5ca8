"""Plain PyTorch ViTs built on ``nn.TransformerEncoder`` / ``nn.TransformerEncoderLayer``.

Such models have no fixed key names, so a short ``EncoderLayout`` says where the patch embedding,
tokens, encoder layers, norms and head live; ``detect_layout`` recognises the common layouts
(``patch_embed.proj``/``cls_token``/``pos_embed``/``transformer.layers``/``mlp_head.0,1``, ...).
Both (and ``EncoderConfig``) are defined in ``uvc.adapters.encoder_layout`` and re-exported here.
What the weights cannot say is stated by the user (``EncoderConfig``): the head count, and the layer
options when they differ from PyTorch's defaults (post-norm, ReLU, eps 1e-5). A live module tells
all of that itself.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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

# The layout (where the parts live) and the stated config are defined in ``encoder_layout`` and
# re-exported here, where users and tests import them from.
from uvc.adapters.encoder_layout import SOURCE, EncoderConfig, EncoderLayout, detect_layout
from uvc.arch.preprocess import Preprocess
from uvc.arch.spec import Act, BlockSpec, NormPlacement, Pool, ViTSpec
from uvc.errors import SpecError


def _act(name: str) -> Act:
    try:
        return Act(name)
    except ValueError:
        raise refuse(f"activation {name!r}", SOURCE) from None


def spec_from_state(
    state: dict[str, Tensor],
    layout: EncoderLayout,
    cfg: EncoderConfig,
    preprocess: Preprocess | None = None,
) -> ViTSpec:
    """The ``ViTSpec`` of a plain ViT's state dict under ``layout`` and ``cfg``."""
    conv = _get(state, layout.patch_embed + ".weight")
    if layout.patch_embed + ".bias" not in state:
        raise refuse("a patch embedding without bias", SOURCE)
    dim, in_chans, p, p2 = conv.shape
    if p != p2:
        raise refuse(f"non-square patches {p}x{p2}", SOURCE)
    n = 0
    while f"{layout.encoder}.{n}.self_attn.in_proj_weight" in state:
        n += 1
    if n == 0:
        raise SpecError(f"{SOURCE}: no layers under {layout.encoder!r}")
    prefix = int(layout.cls_token is not None)
    pos_len = _get(state, layout.pos_embed).reshape(-1, dim).shape[0]
    if cfg.img_size is not None:
        patches = (cfg.img_size // p) ** 2
        if pos_len not in (patches, patches + prefix):
            raise SpecError(
                f"{SOURCE}: position embedding has {pos_len} positions; img_size {cfg.img_size} "
                f"with patch {p} needs {patches} (+{prefix} class token)"
            )
    else:
        patches = pos_len - prefix
    side = square_side(patches, SOURCE)
    if cfg.heads <= 0 or dim % cfg.heads:
        raise SpecError(f"{SOURCE}: embed width {dim} is not divisible by {cfg.heads} heads")
    blocks = []
    for i in range(n):
        hidden = _get(state, f"{layout.encoder}.{i}.linear1.weight").shape[0]
        blocks.append(BlockSpec(cfg.heads, dim // cfg.heads, dim // cfg.heads, hidden))
    head = state.get(f"{layout.head}.weight") if layout.head else None
    return ViTSpec(
        img_size=side * p,
        patch_size=p,
        in_chans=in_chans,
        embed_dim=dim,
        num_classes=0 if head is None else head.shape[0],
        blocks=tuple(blocks),
        class_token=layout.cls_token is not None,
        pool=Pool(layout.pool),
        fc_norm=layout.head_norm is not None,
        final_norm=layout.final_norm is not None,
        qkv_bias=f"{layout.encoder}.0.self_attn.in_proj_bias" in state,
        norm_eps=cfg.eps,
        norm_placement=NormPlacement.PRE if cfg.norm_first else NormPlacement.POST,
        act=_act(cfg.activation),
        no_embed_class=pos_len == patches,
        preprocess=preprocess,
    )


def _get(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise SpecError(f"{SOURCE}: missing key {key!r} (check the layout)")
    return state[key]


_LAYER_KEYS = {
    "self_attn.in_proj_weight": "attn.qkv.weight",
    "self_attn.in_proj_bias": "attn.qkv.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "linear1.weight": "mlp.fc1.weight",
    "linear1.bias": "mlp.fc1.bias",
    "linear2.weight": "mlp.fc2.weight",
    "linear2.bias": "mlp.fc2.bias",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
}


def convert_state(
    state: dict[str, Tensor], layout: EncoderLayout, spec: ViTSpec
) -> dict[str, Tensor]:
    """Rename a plain ViT's tensors to uvc's (timm's) names; every source key must be used.

    ``in_proj_weight`` packs q, k, v head-major exactly like timm's ``qkv``, so it is copied as is.
    """
    d = spec.embed_dim
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def move(src: str, dst: str, shape: tuple[int, ...] | None = None) -> None:
        t = _get(state, src)
        out[dst] = t.reshape(shape) if shape else t
        used.add(src)

    move(layout.patch_embed + ".weight", "patch_embed.proj.weight")
    move(layout.patch_embed + ".bias", "patch_embed.proj.bias")
    move(layout.pos_embed, "pos_embed", (1, spec.pos_embed_len, d))
    if layout.cls_token:
        move(layout.cls_token, "cls_token", (1, 1, d))
    for i in range(spec.depth):
        for src, dst in _LAYER_KEYS.items():
            key = f"{layout.encoder}.{i}.{src}"
            if key in state or not src.endswith("in_proj_bias"):
                move(key, f"blocks.{i}.{dst}")
    for part, dst in ((layout.final_norm, "norm"), (layout.head_norm, "fc_norm")):
        if part:
            move(part + ".weight", dst + ".weight")
            move(part + ".bias", dst + ".bias")
    if layout.head:
        move(layout.head + ".weight", "head.weight")
        move(layout.head + ".bias", "head.bias")
    left = sorted(set(state) - used)
    if left:
        shown = ", ".join(left[:6]) + (f", ... (+{len(left) - 6})" if len(left) > 6 else "")
        raise refuse(f"parameters outside the described layout ({shown})", SOURCE)
    return out


class ReferenceViT(nn.Module):
    """The plain ViT a layout describes, on PyTorch's own ``TransformerEncoderLayer``.

    Its state-dict keys are the original model's, so an original weights file loads into it
    strictly; converted models are compared with it.
    """

    def __init__(self, layout: EncoderLayout, spec: ViTSpec, cfg: EncoderConfig) -> None:
        super().__init__()
        self.layout, self.spec = layout, spec
        d, p = spec.embed_dim, spec.patch_size
        activation: Any = {
            Act.RELU: F.relu,
            Act.GELU: F.gelu,
            Act.GELU_TANH: nn.GELU(approximate="tanh"),
            Act.QUICK_GELU: lambda x: x * torch.sigmoid(1.702 * x),
        }[spec.act]
        self._conv = nn.Conv2d(spec.in_chans, d, p, p)
        self._place(layout.patch_embed, self._conv)
        self._pos = nn.Parameter(torch.zeros(1, spec.pos_embed_len, d))
        self._place(layout.pos_embed, self._pos)
        self._cls = nn.Parameter(torch.zeros(1, 1, d)) if layout.cls_token else None
        if layout.cls_token:
            self._place(layout.cls_token, self._cls)
        self._layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d,
                cfg.heads,
                b.mlp_dim,
                dropout=0.0,
                activation=activation,
                layer_norm_eps=cfg.eps,
                batch_first=True,
                norm_first=cfg.norm_first,
                bias=True,
            )
            for b in spec.blocks
        )
        self._place(layout.encoder, self._layers)
        self._norms = {}
        for name in ("final_norm", "head_norm"):
            key = getattr(layout, name)
            self._norms[name] = nn.LayerNorm(d, eps=cfg.eps) if key else nn.Identity()
            if key:
                self._place(key, self._norms[name])
        self._head = nn.Linear(d, spec.num_classes) if layout.head else nn.Identity()
        if layout.head:
            self._place(layout.head, self._head)

    def _place(self, path: str, obj: nn.Module | nn.Parameter) -> None:
        """Register ``obj`` at a dotted ``path`` (creating plain containers on the way)."""
        *parents, leaf = path.split(".")
        node: nn.Module = self
        for name in parents:
            if not hasattr(node, name) or not isinstance(getattr(node, name), nn.Module):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        if isinstance(obj, nn.Parameter):
            node.register_parameter(leaf, obj)
        else:
            node.add_module(leaf, obj)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # type: ignore[override]
        """Only the original model's keys (the underscore aliases are the same tensors)."""
        full = super().state_dict(*args, **kwargs)
        return type(full)((k, v) for k, v in full.items() if not k.split(".")[0].startswith("_"))

    def load_original(self, state: dict[str, Tensor]) -> None:
        """Load the original state dict (reshaping flat tokens), strictly."""
        own = self.state_dict()
        fixed = {k: v.reshape(own[k].shape) if k in own else v for k, v in state.items()}
        missing = sorted(set(own) - set(fixed))
        extra = sorted(set(fixed) - set(own))
        if missing or extra:
            raise refuse(f"keys outside the layout (missing {missing}, unexpected {extra})", SOURCE)
        with torch.no_grad():
            for k, v in fixed.items():
                own[k].copy_(v)

    def forward(self, x: Tensor) -> Tensor:
        """The plain ViT forward: patches, tokens, positions, layers, norms, pooled head."""
        x = self._conv(x).flatten(2).transpose(1, 2)
        if self.spec.no_embed_class:
            x = x + self._pos
        if self._cls is not None:
            x = torch.cat([self._cls.expand(x.shape[0], -1, -1), x], dim=1)
        if not self.spec.no_embed_class:
            x = x + self._pos
        for layer in self._layers:
            x = layer(x)
        x = self._norms["final_norm"](x)
        x = x[:, 0] if self.spec.pool is Pool.TOKEN else x[:, self.spec.num_prefix_tokens :].mean(1)
        return self._head(self._norms["head_norm"](x))


def convert_encoder_state(
    state: dict[str, Tensor],
    cfg: EncoderConfig,
    layout: EncoderLayout | None = None,
    preprocess: Preprocess | None = None,
    atol: float = DEFAULT_ATOL,
) -> Conversion:
    """Convert a plain ViT's state dict; parity is measured against ``ReferenceViT``."""
    layout = layout or detect_layout(state)
    spec = spec_from_state(state, layout, cfg, preprocess)
    model = build(spec, convert_state(state, layout, spec))
    ref = ReferenceViT(layout, spec, cfg).eval()
    ref.load_original(state)
    diff = measure_parity(ref, model)
    check_parity(diff, atol, SOURCE)
    return Conversion(model, SOURCE, diff, {"layout": layout.to_dict(), "config": asdict(cfg)})


def encoder_config_of(module: nn.Module, img_size: int | None = None) -> EncoderConfig:
    """Read heads, norm placement, activation and eps from a live module's encoder layers."""
    layers = [m for m in module.modules() if isinstance(m, nn.TransformerEncoderLayer)]
    if not layers:
        raise SpecError(f"{SOURCE}: the module has no nn.TransformerEncoderLayer")
    configs = {_layer_config(layer) for layer in layers}
    if len(configs) != 1:
        raise refuse("encoder layers with different options", SOURCE)
    heads, norm_first, act, eps = configs.pop()
    return EncoderConfig(heads, norm_first, act, eps, img_size)


def _layer_config(layer: nn.TransformerEncoderLayer) -> tuple[int, bool, str, float]:
    attn = layer.self_attn
    if not attn._qkv_same_embed_dim or attn.bias_k is not None:
        raise refuse("attention with separate q/k/v widths or bias_k/bias_v", SOURCE)
    if attn.out_proj.bias is None or layer.linear1.bias is None or layer.norm1.bias is None:
        raise refuse("encoder layers without biases (bias=False)", SOURCE)
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        name = "relu"
    elif act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        name = "gelu"
    elif isinstance(act, nn.GELU):
        name = "gelu_tanh"
    else:
        raise refuse(f"activation {act!r}", SOURCE)
    return attn.num_heads, bool(layer.norm_first), name, float(layer.norm1.eps)


def from_encoder_module(
    module: nn.Module,
    layout: EncoderLayout | dict[str, Any] | str | None = None,
    img_size: int | None = None,
    preprocess: Preprocess | None = None,
    atol: float = DEFAULT_ATOL,
) -> Conversion:
    """Convert a live plain ViT; parity is measured against the module's own forward."""
    cfg = encoder_config_of(module, img_size)
    state = dict(module.state_dict())
    lay = detect_layout(state) if layout is None else _as_layout(layout)
    spec = spec_from_state(state, lay, cfg, preprocess)
    model = build(spec, convert_state(state, lay, spec))
    diff = measure_parity(module.eval(), model)
    check_parity(diff, atol, SOURCE)
    return Conversion(model, SOURCE, diff, {"layout": lay.to_dict(), "config": asdict(cfg)})


def _as_layout(layout: EncoderLayout | dict[str, Any] | str) -> EncoderLayout:
    return layout if isinstance(layout, EncoderLayout) else EncoderLayout.parse(layout)


def convert_encoder_source(
    source: str | Path,
    *,
    heads: int | None = None,
    layout: EncoderLayout | dict[str, Any] | str | None = None,
    norm_first: bool = False,
    activation: str = "relu",
    eps: float = 1e-5,
    img_size: int | None = None,
    atol: float = DEFAULT_ATOL,
) -> Conversion:
    """Convert a plain ViT's weights file (``uvc convert --from torch-encoder``)."""
    from uvc.files.weights import read_state_dict

    if heads is None:
        raise SpecError(
            f"{SOURCE}: the number of attention heads cannot be read from the weights; "
            "state it (--heads N)"
        )
    state = read_state_dict(source)
    cfg = EncoderConfig(heads, norm_first, activation, eps, img_size)
    lay = None if layout is None else _as_layout(layout)
    return convert_encoder_state(state, cfg, lay, atol=atol)
