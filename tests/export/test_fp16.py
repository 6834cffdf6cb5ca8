"""FP16 graph: FP16 weights, LayerNorm/Softmax in FP32, FP32 I/O, close to PyTorch FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from uvc.export.fp16 import convert_to_fp16
from uvc.export.onnx import Exporter, check_onnx, export_onnx, validate_onnx
from uvc.export.validate import validation_inputs

from tests.helpers import tiny_spec
from uvc.arch.model import ViT


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ViT, Path, Path]:
    import torch

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("fp16")
    model = ViT(tiny_spec()).eval()
    fp32 = export_onnx(model, tmp / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    fp16 = convert_to_fp16(fp32, tmp / "m.fp16.onnx")
    return model, fp32, fp16


def test_fp16_graph_types(graphs: tuple[ViT, Path, Path]) -> None:
    import onnx
    from onnx import TensorProto

    _, _, fp16 = graphs
    check_onnx(fp16, opset=17)
    proto = onnx.load(str(fp16))
    g = proto.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, set[str]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, set()).add(n.op_type)
    ln = [i for i in g.initializer if consumers.get(i.name) == {"LayerNormalization"}]
    ln_names = {i.name for i in ln}
    rest = [i for i in g.initializer if np.prod(i.dims) >= 64 and i.name not in ln_names]
    assert ln and rest
    assert all(i.data_type == TensorProto.FLOAT for i in ln)  # LN scale/bias stay FP32
    assert all(i.data_type == TensorProto.FLOAT16 for i in rest)  # every weight matrix is FP16
    # Every LayerNorm / Softmax reads an FP32 cast of an FP16 activation.
    producers = {o: n for n in g.node for o in n.output}
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for n in g.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            x = n.input[0]
            assert x not in inits
            assert producers[x].op_type == "Cast"
            assert types[x] == TensorProto.FLOAT
    assert sum(n.op_type == "Softmax" for n in g.node) == 3


def test_fp16_close_to_pytorch_fp32(graphs: tuple[ViT, Path, Path]) -> None:
    model, fp32, fp16 = graphs
    xs, _ = validation_inputs((3, 32, 32), (1, 8), "digits")
    report = validate_onnx(model, fp16, xs, name="fp16")
    assert report.min_cosine > 0.999
    assert 1e-6 < report.max_abs < 1e-2  # really reduced precision, yet close
    assert report.top1 >= 8 / 9
    assert _weight_bytes(fp16) < 0.6 * _weight_bytes(fp32)  # weights (nearly) halved


def _weight_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)
