"""ONNX export: graph contract, dynamic batch, exactness vs PyTorch, typed failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.export.fp16 import convert_to_fp16
from uvc.export.materialize import materialize
from uvc.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    Exporter,
    check_onnx,
    export_onnx,
    input_shape_of,
    validate_onnx,
)
from uvc.export.validate import AtolError, compare, require_tolerance, validation_inputs

from tests.helpers import tiny_spec
from uvc.arch.keep import random_keep
from uvc.arch.model import ViT
from uvc.arch.spec import Pool
from uvc.errors import ExportError, ValidationError


def _model(**overrides: object) -> ViT:
    return ViT(tiny_spec(**overrides)).eval()


def test_export_contract_torchscript(tmp_path: Path) -> None:
    model = _model()
    path = export_onnx(model, tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    import onnx

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert input_shape_of(path) == (3, 32, 32)
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}
    assert not (tmp_path / "m.onnx.data").exists()  # small model: one self-contained file
    check_onnx(path, opset=17)
    xs, _ = validation_inputs((3, 32, 32), (1, 8))
    report = validate_onnx(model, path, xs, atol=1e-4)
    assert [c.batch for c in report.comparisons] == [1, 8]
    assert report.max_abs < 1e-5 and report.top1 == 1.0 and report.min_cosine > 0.99999


def test_export_dynamo_materialized_distilled(tmp_path: Path) -> None:
    """The default (dynamo) exporter on a materialized model with a removed attention/MLP."""
    full = _model(dist_token=True)
    keep = random_keep(full.spec, 0.6, seed=3, drop_attn=(1,), drop_mlp=(2,))
    dense = materialize(full, keep).eval()
    path = export_onnx(dense, tmp_path / "d.onnx")
    check_onnx(path, opset=17)
    xs, _ = validation_inputs((3, 32, 32), (1, 5))
    report = validate_onnx(dense, path, xs, atol=1e-4)
    assert report.max_abs < 1e-5
    # The dynamo graph (opset-converted, no Constant nodes) converts to FP16 as well.
    fp16 = convert_to_fp16(path, tmp_path / "d.fp16.onnx")
    check_onnx(fp16, opset=17)
    assert validate_onnx(dense, fp16, xs).min_cosine > 0.999


def test_export_avg_pool_and_train_mode_untouched(tmp_path: Path) -> None:
    model = ViT(tiny_spec(pool=Pool.AVG, class_token=False, fc_norm=True)).train()
    path = export_onnx(model, tmp_path / "a.onnx", exporter="torchscript")
    assert model.training  # export works on a copy
    xs, _ = validation_inputs((3, 32, 32), (2, 3))
    assert validate_onnx(model, path, xs, atol=1e-4).max_abs < 1e-5


def test_opset_below_17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx(_model(), tmp_path / "m.onnx", opset=16)
    assert not (tmp_path / "m.onnx").exists()


def test_non_vit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="ViT"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")


def test_validation_catches_a_different_model(tmp_path: Path) -> None:
    model = _model()
    path = export_onnx(model, tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    other = _model()
    with torch.no_grad():
        other.head.bias.add_(0.5)  # a shifted head: same shapes, different logits
    xs, _ = validation_inputs((3, 32, 32), (1, 2))
    with pytest.raises(AtolError, match="--atol") as info:
        validate_onnx(other, path, xs, atol=1e-4)
    assert isinstance(info.value, ValidationError)


def test_compare_figures() -> None:
    ref = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])
    out = ref.clone()
    out[1, 1] = 4.0  # changes sample 1's arg-max
    c = compare(ref, out)
    assert c.batch == 2 and c.max_abs == pytest.approx(4.0)
    assert c.max_rel == pytest.approx(4.0 / 3.0)
    assert c.top1 == pytest.approx(0.5)
    assert c.cosine < 0.7
    with pytest.raises(ValidationError, match="shape"):
        compare(ref, out[:1])


def test_require_tolerance_rejects_nan() -> None:
    from uvc.export.validate import ValidationReport

    c = compare(torch.ones(1, 3), torch.full((1, 3), float("nan")))
    with pytest.raises(AtolError):
        require_tolerance(ValidationReport("m", "ort", (c,)), atol=1.0)


def test_validation_inputs_digits() -> None:
    xs, where = validation_inputs((3, 32, 32), (1, 4), "digits")
    assert [x.shape for x in xs] == [(1, 3, 32, 32), (4, 3, 32, 32)]
    assert "digits" in where
    assert not torch.equal(xs[1][0], xs[1][1])


def test_validation_inputs_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from uvc.errors import DataError

    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(3):
            color = (40 * i, 200 if cls == "cat" else 0, 90)
            Image.new("RGB", (40, 40), color).save(tmp_path / "val" / cls / f"{i}.png")
    xs, where = validation_inputs((3, 32, 32), (1, 4), tmp_path)
    assert [tuple(x.shape) for x in xs] == [(1, 3, 32, 32), (4, 3, 32, 32)]
    assert str(tmp_path) in where
    with pytest.raises(DataError, match="6 images"):
        validation_inputs((3, 32, 32), (4, 4), tmp_path)
    with pytest.raises(DataError, match="not found"):
        validation_inputs((3, 32, 32), (1,), tmp_path / "missing")


def test_external_data_beyond_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the threshold the weights go to <name>.data; the pair checks, runs and converts."""
    import uvc.export.onnx as onnx_mod

    monkeypatch.setattr(onnx_mod, "EXTERNAL_DATA_THRESHOLD", 0)
    model = _model()
    path = export_onnx(model, tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    check_onnx(path, opset=17)
    xs, _ = validation_inputs((3, 32, 32), (1, 2))
    assert validate_onnx(model, path, xs, atol=1e-4).max_abs < 1e-5
    fp16 = convert_to_fp16(path, tmp_path / "m.fp16.onnx")
    assert (tmp_path / "m.fp16.onnx.data").is_file()
    assert validate_onnx(model, fp16, xs).min_cosine > 0.999


def test_unloadable_graph_is_an_export_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    xs, _ = validation_inputs((3, 32, 32), (1,))
    with pytest.raises(ExportError, match=r"ONNX Runtime cannot load bad\.onnx"):
        validate_onnx(_model(), bad, xs)
    with pytest.raises(ExportError, match=r"onnx\.checker"):
        check_onnx(bad)
