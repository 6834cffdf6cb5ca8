"""Adapters for timm, torchvision and Hugging Face ViTs: exact parity on random weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from uvc.adapters import convert_module, convert_source, detect_kind, from_module
from uvc.arch.cost import macs, params
from uvc.arch.model import ViT
from uvc.arch.spec import Act, Pool
from uvc.errors import SpecError, WeightsError

ATOL = 1e-5


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, norms and layer scales far from their init (so a misplaced
    norm, gamma or bias shows in the logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise * 0.3 if p.ndim > 1 else 1.0 + 0.5 * noise)
    return module.eval()


def assert_parity(original, conv, x_size: int, call=None) -> None:
    x = torch.randn(3, 3, x_size, x_size)
    with torch.no_grad():
        want = call(x) if call else original(x)
        got = conv.model(x)
    assert want.std() > 0.1  # real logits, not a degenerate constant
    assert (want - got).abs().max().item() <= ATOL
    assert conv.max_abs_diff is not None and conv.max_abs_diff <= ATOL
    # The uvc model's own cost matches its parameters.
    assert params(conv.spec) == sum(p.numel() for p in conv.model.parameters())


# --- timm -----------------------------------------------------------------------------------

TIMM_CASES = [
    ("deit3_small_patch16_224", {}),  # layer scale + no_embed_class
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "num_classes": 7}),  # registers
    ("vit_small_patch16_224", {"global_pool": "avg"}),  # avg pool + fc_norm
    ("vit_small_patch16_224", {"global_pool": "avg", "fc_norm": False}),
    ("vit_small_patch16_224", {"act_layer": "quick_gelu", "final_norm": False}),
    (
        "vit_small_patch16_224",
        {"act_layer": "gelu_tanh", "class_token": False, "global_pool": "avg"},
    ),
    ("deit_tiny_distilled_patch16_224", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), TIMM_CASES)
def test_timm_variants_convert_exactly(name, kwargs):
    import timm

    kwargs = {"img_size": 32, "embed_dim": 64, "depth": 2, "num_heads": 2, **kwargs}
    original = randomize(timm.create_model(name, pretrained=False, **kwargs))
    assert detect_kind(original) == "timm"
    conv = convert_module(original)
    assert_parity(original, conv, kwargs["img_size"])
    spec = conv.spec
    assert spec.layer_scale == ("deit3" in name or "dinov2" in name)
    assert spec.no_embed_class == ("deit3" in name or "dinov2" in name)
    assert spec.reg_tokens == (4 if "reg4" in name else 0)
    if kwargs.get("global_pool") == "avg":
        assert spec.pool is Pool.AVG
    if "act_layer" in kwargs:
        assert spec.act is Act(kwargs["act_layer"])
    # Same state-dict keys as timm: timm checkpoints load unchanged.
    assert set(conv.model.state_dict()) == set(original.state_dict())


def test_timm_weights_file_with_arch(tmp_path):
    import timm

    name = "vit_small_patch14_reg4_dinov2"
    original = randomize(timm.create_model(name, pretrained=False, img_size=28, num_classes=3))
    torch.save(original.state_dict(), tmp_path / "dino.pth")
    conv = convert_source(tmp_path / "dino.pth", "timm", arch=name, img_size=28)
    assert conv.max_abs_diff <= ATOL and conv.spec.layer_scale and conv.spec.num_classes == 3
    assert conv.spec.preprocess.crop == 28 and conv.spec.preprocess.interpolation == "bicubic"
    with pytest.raises(SpecError, match="--arch"):
        convert_source(tmp_path / "dino.pth", "timm")


def test_timm_qk_norm_is_refused_by_name():
    import timm

    with torch.device("meta"):
        m = timm.create_model("vit_small_patch16_224", pretrained=False, qk_norm=True)
    with pytest.raises(SpecError, match="QK-norm"):
        from_module(m)


# --- torchvision ----------------------------------------------------------------------------


def _tv(**kwargs):
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(32, 8, 2, 4, 32, 64, num_classes=10, **kwargs)


def test_torchvision_vit_converts_exactly():
    original = randomize(_tv())
    conv = convert_module(original)
    assert conv.kind == "torchvision"
    assert_parity(original, conv, 32)
    assert conv.spec.norm_eps == 1e-6 and conv.spec.preprocess.interpolation == "bilinear"


def test_torchvision_legacy_mlp_names_and_heads_from_arch(tmp_path):
    original = randomize(_tv())
    state = {
        k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
        for k, v in original.state_dict().items()
    }
    assert any("linear_1" in k for k in state)
    torch.save(state, tmp_path / "old.pth")
    conv = convert_source(tmp_path / "old.pth", "torchvision", heads=4)
    assert conv.max_abs_diff <= ATOL
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert (conv.model(x) - original(x)).abs().max() <= ATOL
    with pytest.raises(SpecError, match="--arch"):
        convert_source(tmp_path / "old.pth", "torchvision")


def test_torchvision_pre_logits_is_refused_by_name(tmp_path):
    with pytest.raises(SpecError, match="pre_logits"):
        from_module(_tv(representation_size=16))
    torch.save(_tv(representation_size=16).state_dict(), tmp_path / "pl.pth")
    with pytest.raises(SpecError, match="pre_logits"):
        convert_source(tmp_path / "pl.pth", "torchvision", heads=4)


# --- Hugging Face ---------------------------------------------------------------------------

HF_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_labels": 10,
}


@pytest.mark.parametrize(
    ("cls_name", "extra"),
    [
        ("ViTForImageClassification", {}),
        ("ViTForImageClassification", {"hidden_act": "gelu_new", "qkv_bias": False}),
        ("DeiTForImageClassification", {}),
        ("DeiTForImageClassificationWithTeacher", {}),
    ],
)
def test_hugging_face_vit_and_deit_convert_exactly(cls_name, extra):
    transformers = pytest.importorskip("transformers")
    base = "DeiTConfig" if cls_name.startswith("DeiT") else "ViTConfig"
    config = getattr(transformers, base)(**HF_CONFIG, **extra)
    original = randomize(getattr(transformers, cls_name)(config))
    conv = convert_module(original)
    assert conv.kind == "hf" and conv.spec.norm_eps == 1e-12
    assert_parity(original, conv, 32, call=lambda x: original(pixel_values=x).logits)
    assert conv.spec.dist_token == cls_name.startswith("DeiT")
    assert conv.spec.dist_head == cls_name.endswith("WithTeacher")


def test_hugging_face_folder_with_processor_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    original = randomize(
        transformers.ViTForImageClassification(transformers.ViTConfig(**HF_CONFIG))
    )
    original.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.1, 0.2, 0.3],
                "image_std": [0.4, 0.5, 0.6],
                "size": {"height": 32},
                "resample": 3,
                "do_resize": True,
            }
        )
    )
    conv = convert_source(tmp_path, "hf")
    assert conv.max_abs_diff <= ATOL
    pre = conv.spec.preprocess
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == (0.4, 0.5, 0.6)
    assert pre.interpolation == "bicubic" and pre.resize == 32


# --- detection and errors -------------------------------------------------------------------


def test_unknown_modules_are_refused():
    with pytest.raises(SpecError, match="cannot tell what kind"):
        from_module(nn.Sequential(nn.Linear(2, 2)))


def test_a_converted_model_is_a_plain_uvc_vit():
    import timm

    original = randomize(
        timm.create_model(
            "deit3_small_patch16_224",
            pretrained=False,
            img_size=32,
            embed_dim=64,
            depth=2,
            num_heads=2,
        )
    )
    model = from_module(original)
    assert isinstance(model, ViT)
    assert macs(model.spec) > 0


def test_parity_failure_raises():
    from uvc.adapters.common import check_parity

    with pytest.raises(WeightsError, match="differs from the original"):
        check_parity(1e-3, ATOL, "test")
    with pytest.raises(WeightsError):
        check_parity(float("nan"), ATOL, "test")


def test_hugging_face_transformers_4_key_names():
    """Checkpoints saved by transformers 4 name layers encoder.layer.N.attention.attention.query."""
    transformers = pytest.importorskip("transformers")
    original = randomize(
        transformers.ViTForImageClassification(transformers.ViTConfig(**HF_CONFIG))
    )
    v5_to_v4 = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }

    def v4_name(key: str) -> str:
        key = key.replace("vit.layers.", "vit.encoder.layer.")
        for new, old in v5_to_v4.items():
            key = key.replace(f".{new}.", f".{old}.")
        return key

    state = {v4_name(k): v for k, v in original.state_dict().items()}
    assert "vit.encoder.layer.0.attention.attention.query.weight" in state
    original.state_dict = lambda: state  # what a transformers-4 model would list
    conv = convert_module(original)
    assert_parity(original, conv, 32, call=lambda x: original(pixel_values=x).logits)
