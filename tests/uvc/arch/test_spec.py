from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import TIMM_MODELS, tiny_spec
from uvc.arch.spec import FORMAT_VERSION, BlockSpec, Pool, ViTSpec
from uvc.errors import SpecError
from uvc.files.weights import spec_from_timm


def test_json_round_trip_keeps_every_field(tmp_path):
    spec = tiny_spec(dist_token=True, qkv_bias=False, norm_eps=1e-5)
    assert ViTSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "spec.json")
    assert ViTSpec.load(path) == spec
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION


def test_uniform_deit_tiny_shape():
    spec = ViTSpec.uniform(12, 192, 3)
    assert spec.num_tokens == 197
    assert set(spec.blocks) == {BlockSpec(3, 64, 64, 768)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": 30}, "not divisible by patch_size"),
        ({"embed_dim": 0}, "embed_dim must be a positive integer"),
        ({"blocks": ()}, "at least one block"),
        ({"pool": "max"}, "pool must be one of"),
        ({"class_token": False}, "pool='token' needs a class token"),
        ({"dist_token": True, "pool": "avg"}, "distilled model"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(**kwargs)


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ((-1, 8, 8, 8), "heads must be >= 0"),
        ((2, 0, 8, 8), "qk_dim and v_dim >= 1"),
        ((2, 8, 8, 1.5), "must be an integer"),
    ],
)
def test_invalid_blocks(widths, message):
    with pytest.raises(SpecError, match=message):
        BlockSpec(*widths)


def test_removed_parts_are_valid_blocks():
    assert not BlockSpec(0, 0, 0, 16).has_attn
    assert not BlockSpec(2, 8, 8, 0).has_mlp


def test_unknown_version_and_fields_are_refused():
    data = tiny_spec().to_dict()
    with pytest.raises(SpecError, match="unknown spec format_version 99"):
        ViTSpec.from_dict({**data, "format_version": 99})
    with pytest.raises(SpecError, match="unknown spec field"):
        ViTSpec.from_dict({**data, "colour": "red"})
    with pytest.raises(SpecError, match="not valid JSON"):
        ViTSpec.from_json("{nope")
    bad_block = {**data, "blocks": [{"heads": 1}]}
    with pytest.raises(SpecError, match=r"blocks\[0\]"):
        ViTSpec.from_dict(bad_block)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_spec_from_timm_names(name):
    spec = spec_from_timm(name)
    assert spec.img_size == 224 and spec.num_classes == 1000
    assert spec.dist_token == ("distilled" in name)
    assert spec.patch_size == (32 if "patch32" in name else 16)
    assert len({b for b in spec.blocks}) == 1  # uniform


def test_spec_from_timm_avg_pool_and_fc_norm():
    spec = spec_from_timm("vit_small_patch16_224", num_classes=7)
    assert spec.num_classes == 7
    import timm

    m = timm.create_model("vit_small_patch16_224", pretrained=False, global_pool="avg")
    avg = spec_from_timm(m)
    assert avg.pool is Pool.AVG and avg.fc_norm


@pytest.mark.parametrize(
    ("name", "kwargs", "feature"),
    [
        ("vit_small_patch16_224", {"pre_norm": True}, "pre_norm"),
        ("vit_small_patch16_224", {"pool_include_prefix": True, "global_pool": "avg"}, "prefix"),
        ("vit_small_patch16_224", {"act_layer": "silu"}, "activation"),
        ("vit_small_patch16_224", {"qk_norm": True}, "QK-norm"),
        ("vit_small_patch16_224", {"global_pool": "map"}, "attention pooling"),
    ],
)
def test_unsupported_timm_variants_are_refused(name, kwargs, feature):
    import timm

    with torch_meta():
        model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(SpecError, match=feature):
        spec_from_timm(model)


def test_non_vit_is_refused():
    with pytest.raises(SpecError, match="only timm VisionTransformer"):
        spec_from_timm("resnet18")


def test_unknown_timm_name():
    with pytest.raises(SpecError, match="unknown timm model"):
        spec_from_timm("not_a_model_at_all")


def torch_meta():
    import torch

    return torch.device("meta")


# --- format 2 ----------------------------------------------------------------------------------


def test_v2_fields_round_trip(tmp_path):
    from uvc.arch.preprocess import Preprocess

    spec = tiny_spec(
        blocks=(BlockSpec(2, 8, 8, 16), BlockSpec(0, 0, 0, 0, skip=True)),
        norm_placement="post",
        act="quick_gelu",
        layer_scale=True,
        reg_tokens=3,
        no_embed_class=True,
        fc_norm=True,
        final_norm=True,
        dist_token=True,
        dist_head=False,
        preprocess=Preprocess(mean=(0.1, 0.2, 0.3), std=(1, 2, 3), resize=36, crop=32),
    )
    again = ViTSpec.load(spec.save(tmp_path / "spec.json"))
    assert again == spec
    assert again.preprocess.std == (1.0, 2.0, 3.0) and again.blocks[1].skip
    assert spec.num_prefix_tokens == 5 and spec.pos_embed_len == spec.num_patches
    assert spec.num_heads_out == 1


def test_format_1_files_still_load():
    v1 = tiny_spec().to_dict()
    for key in ("norm_placement", "act", "layer_scale", "reg_tokens", "no_embed_class"):
        v1.pop(key)
    for key in ("final_norm", "dist_head", "preprocess"):
        v1.pop(key)
    v1["format_version"] = 1
    v1["blocks"] = [
        {k: b[k] for k in ("heads", "qk_dim", "v_dim", "mlp_dim")} for b in v1["blocks"]
    ]
    spec = ViTSpec.from_dict(v1)
    assert spec == tiny_spec() and spec.final_norm and spec.preprocess is None
    # Format 1's rule: fc_norm replaces the final norm.
    assert ViTSpec.from_dict({**v1, "fc_norm": True, "pool": "avg"}).final_norm is False
    with pytest.raises(SpecError, match="format-2 field"):
        ViTSpec.from_dict({**v1, "act": "relu"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"act": "swish"}, "act must be one of"),
        ({"norm_placement": "sandwich"}, "norm_placement must be one of"),
        ({"reg_tokens": -1}, "reg_tokens"),
        ({"preprocess": {"mean": [0.5], "std": [0.5]}}, "channel statistics"),
        ({"preprocess": {"mean": [0.5] * 3, "std": [0, 1, 1]}}, "std must be > 0"),
        ({"preprocess": {"mean": [0.5] * 3, "std": [1] * 3, "crop": 0}}, "crop"),
        ({"preprocess": {"interpolation": "magic"}}, "interpolation"),
    ],
)
def test_invalid_v2_fields(kwargs, message):
    with pytest.raises(SpecError, match=message):
        tiny_spec(**kwargs)


def test_skip_needs_an_empty_block():
    with pytest.raises(SpecError, match="skipped block"):
        BlockSpec(2, 8, 8, 0, skip=True)


def test_eval_transform_uses_the_model_statistics():
    from PIL import Image

    from uvc.arch.preprocess import Preprocess, eval_transform

    pre = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), resize=40, crop=32)
    x = eval_transform(pre, 32)(Image.new("RGB", (48, 48), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 3.0, 1.0]), atol=1e-6)
