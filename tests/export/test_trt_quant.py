"""ModelOpt INT8/FP8 QDQ graphs for TensorRT: where ModelOpt is installed the graphs are built and
checked in ONNX Runtime; engines only on a GPU with TensorRT. Everywhere: the clear refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from uvc.export.quant_export import onnx_logits
from uvc.export.tensorrt import TrtBuildConfig
from uvc.export.trt_quant import TrtQuantMode

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.train.data import DigitsDataset

needs_modelopt = pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is None,
    reason="nvidia-modelopt is not installed (pip install 'uvc[quant-gpu]'; not in the CPU setup)",
)


def test_modes_name_their_files_and_build_configs_check_the_precision() -> None:
    assert TrtQuantMode("int8").onnx_name == "model.trt.int8.onnx"
    assert TrtQuantMode.FP8.engine_name == "model.fp8.engine"
    assert TrtBuildConfig(quantized="fp8").quantized == "fp8"
    with pytest.raises(ValueError, match="quantized must be"):
        TrtBuildConfig(quantized="int4")


def test_fp8_engine_needs_a_gpu_with_fp8() -> None:
    from uvc.export.trt_quant import FP8_MIN_CAPABILITY, require_fp8_gpu

    from uvc.errors import BackendUnavailable

    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= FP8_MIN_CAPABILITY:
        pytest.skip("this GPU runs FP8: the refusal cannot be observed")
    with pytest.raises(BackendUnavailable, match="FP8"):
        require_fp8_gpu()


@needs_modelopt
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_modelopt_graph_runs_and_keeps_the_predictions(tmp_path: Path, mode: str) -> None:
    from uvc.export.onnx import Exporter, export_onnx
    from uvc.export.trt_quant import quantize_for_tensorrt

    torch.manual_seed(0)
    model = ViT(tiny_spec()).eval()
    src = export_onnx(model, tmp_path / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    calib = DigitsDataset(32, train=True).images[:32]
    out = tmp_path / TrtQuantMode(mode).onnx_name
    graph = quantize_for_tensorrt(src, out, calib, TrtQuantMode(mode))
    assert graph.path == out and out.is_file() and graph.qdq_nodes > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", out.name])
    x = DigitsDataset(32, train=False).images[:64]
    with torch.no_grad():
        ref = model(x)
    got = onnx_logits(out, x)  # simulated quantization in ONNX Runtime (FP16 elsewhere)
    cosine = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    assert got.shape == ref.shape and cosine.min() > 0.9


@pytest.mark.gpu
@needs_modelopt
def test_int8_engine_from_the_modelopt_graph(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'uvc[gpu]')")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch: TensorRT engines cannot be built here")
    from uvc.export.onnx import Exporter, export_onnx
    from uvc.export.tensorrt import TrtRunner, build_engine
    from uvc.export.trt_quant import quantize_for_tensorrt

    model = ViT(tiny_spec()).eval()
    src = export_onnx(model, tmp_path / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    calib = DigitsDataset(32, train=True).images[:32]
    qdq = quantize_for_tensorrt(src, tmp_path / "q.onnx", calib, TrtQuantMode.INT8)
    cfg = TrtBuildConfig(min_batch=1, opt_batch=8, max_batch=8, quantized="int8")
    built = build_engine(qdq.path, tmp_path / "m.int8.engine", cfg)
    assert built.precision == "int8" and built.engine.is_file()
    x = DigitsDataset(32, train=False).images[:8]
    with TrtRunner(built.engine) as run:
        got = run.infer(x.cuda()).cpu()
    with torch.no_grad():
        ref = model(x)
    assert torch.nn.functional.cosine_similarity(got, ref, dim=1).min() > 0.9
