"""Runners compute what the PyTorch model computes, check their inputs, and say why they skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.bench.ort_runner import OrtRunner
from uvc.bench.runners import (
    Backend,
    InputError,
    Precision,
    RunnerConfig,
    TorchRunner,
    TrtEngineRunner,
)

from uvc.arch.model import ViT
from uvc.errors import BackendUnavailable

SHAPE = (3, 32, 32)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def _ref(model: ViT, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x.float().cpu())


@pytest.mark.parametrize("batch", [1, 3])
def test_eager_runner_equals_model(tiny_model: ViT, batch: int) -> None:
    with TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.EAGER)) as r:
        x = r.make_input(batch)
        assert torch.equal(r.infer(x), _ref(tiny_model, x))
        assert r.build_s >= 0 and r.prepare(batch) >= 0


def test_runner_does_not_touch_the_callers_model(tiny_model: ViT) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.EAGER)) as r:
        r.infer(r.make_input(2))
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("batch", [1, 4])
def test_ort_runner_matches_model(tiny_model: ViT, tiny_onnx: Path, batch: int) -> None:
    with OrtRunner(tiny_onnx, SHAPE, RunnerConfig(Backend.ORT, threads=1)) as r:
        x = r.make_input(batch)
        out = r.infer(x)
    assert out.shape == (batch, tiny_model.spec.num_classes)
    torch.testing.assert_close(out, _ref(tiny_model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(2, 3, 16, 16), "shape"),
        (torch.zeros(3, 32, 32), "shape"),
        (torch.zeros(0, 3, 32, 32), "empty"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.float64), "dtype"),
        ([[0.0]], "torch.Tensor"),
    ],
    ids=["hw", "no-batch", "empty", "dtype", "list"],
)
def test_infer_rejects_bad_inputs(tiny_model: ViT, x: object, match: str) -> None:
    r = TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.EAGER))
    with r, pytest.raises(InputError, match=match):
        r.infer(x)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda m: TorchRunner(m, SHAPE, RunnerConfig(Backend.CUDAGRAPH)), "needs --device cuda"),
        (
            lambda m: TorchRunner(m, SHAPE, RunnerConfig(Backend.EAGER, precision=Precision.FP16)),
            "CUDA only",
        ),
        (lambda m: TrtEngineRunner(None, SHAPE, RunnerConfig(Backend.TRT)), "needs --device cuda"),
        (
            lambda m: OrtRunner(Path("/nonexistent.onnx"), SHAPE, RunnerConfig(Backend.ORT)),
            "no ONNX",
        ),
        (lambda m: OrtRunner(Path("x.onnx"), SHAPE, RunnerConfig(Backend.ORT_TRT)), "cuda"),
    ],
    ids=["cudagraph-cpu", "fp16-cpu", "trt-cpu", "ort-missing-file", "ort-trt-cpu"],
)
def test_unavailable_backends_say_why(tiny_model: ViT, make: object, reason: str) -> None:
    with pytest.raises(BackendUnavailable, match=reason):
        make(tiny_model)  # type: ignore[operator]


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_request_without_gpu_is_skipped_with_reason(tiny_model: ViT) -> None:
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.EAGER, device="cuda"))


def test_runner_config_validation() -> None:
    with pytest.raises(ValueError):
        RunnerConfig(Backend.EAGER, device="tpu")
    with pytest.raises(ValueError):
        RunnerConfig(Backend.EAGER, threads=0)
    with pytest.raises(ValueError):
        RunnerConfig("nope")  # type: ignore[arg-type]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", [Backend.EAGER, Backend.CUDAGRAPH])
def test_cuda_runners_match_model(tiny_model: ViT, backend: Backend) -> None:
    with TorchRunner(tiny_model, SHAPE, RunnerConfig(backend, device="cuda")) as r:
        r.prepare(2)
        x = r.make_input(2)
        assert x.is_cuda
        torch.testing.assert_close(r.infer(x).cpu(), _ref(tiny_model, x), atol=1e-4, rtol=1e-4)


def test_ort_fp16_graph_is_fed_its_own_io_dtype(tiny_model: ViT, tiny_onnx: Path, tmp_path):
    """model.fp16.onnx keeps FP32 I/O: feeding it float16 was ONNX Runtime's INVALID_ARGUMENT."""
    from uvc.export.fp16 import convert_to_fp16

    fp16 = convert_to_fp16(tiny_onnx, tmp_path / "m.fp16.onnx")
    cfg = RunnerConfig(Backend.ORT, precision=Precision.FP16, threads=1)
    with OrtRunner(fp16, SHAPE, cfg) as r:
        assert r.input_dtype == torch.float32 and not r.copies_included
        x = r.make_input(2)
        assert x.dtype == torch.float32
        torch.testing.assert_close(r.infer(x), _ref(tiny_model, x), atol=2e-2, rtol=2e-2)
        with pytest.raises(InputError, match="dtype"):
            r.infer(x.half())


def test_ort_fallback_to_another_provider_is_refused(tiny_onnx: Path) -> None:
    import onnxruntime as ort
    from uvc.bench.ort_runner import create_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider: no fallback to provoke here")
    # Asked for CUDA, ONNX Runtime quietly builds a CPU session: that must not be timed as CUDA.
    with pytest.raises(BackendUnavailable, match="fell back from CUDAExecutionProvider to CPU"):
        create_session(tiny_onnx, ort.SessionOptions(), [("CUDAExecutionProvider", {})])
    ok = create_session(tiny_onnx, ort.SessionOptions(), [("CPUExecutionProvider", {})])
    assert ok.get_providers()[0] == "CPUExecutionProvider"


def test_ort_provider_options() -> None:
    from uvc.bench.ort_runner import ort_provider_options

    assert ort_provider_options("CPUExecutionProvider", 0) == {}
    assert ort_provider_options("CUDAExecutionProvider", 1) == {"device_id": "1"}
    trt = ort_provider_options(
        "TensorrtExecutionProvider",
        2,
        fp16=True,
        batch_sizes=(8, 1, 64),
        input_shape=(3, 32, 32),
        cache_dir=Path("/c"),
    )
    assert trt == {
        "device_id": "2",
        "trt_fp16_enable": "True",
        "trt_profile_min_shapes": "images:1x3x32x32",
        "trt_profile_opt_shapes": "images:64x3x32x32",
        "trt_profile_max_shapes": "images:64x3x32x32",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/c",
    }


def test_onnxruntime_and_onnxruntime_gpu_together_are_reported() -> None:
    from uvc.bench.ort_runner import ort_install_problem

    both = ort_install_problem({"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.21.0"})
    assert both is not None and "share one folder" in both and "pip uninstall" in both
    assert ort_install_problem({"onnxruntime-gpu": "1.21.0"}) is None
    assert ort_install_problem({"onnxruntime": "1.20.0"}) is None


def test_compile_without_a_compiler_is_skipped_with_reason(
    tiny_model: ViT, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uvc.bench.runners import compile_toolchain_problem

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # as in python:3.11-slim: no compiler on PATH
    assert "C++ compiler" in (compile_toolchain_problem(on_cuda=False) or "")
    assert "Triton needs a C compiler" in (compile_toolchain_problem(on_cuda=True) or "")
    with pytest.raises(BackendUnavailable, match="inductor needs a C"):
        TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.COMPILE))


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_cuda(), reason="needs a CUDA GPU and onnxruntime-gpu")
@pytest.mark.parametrize("copies", [False, True])
def test_ort_cuda_iobinding_matches_model(tiny_model: ViT, tiny_onnx: Path, copies: bool) -> None:
    cfg = RunnerConfig(Backend.ORT, device="cuda", include_copies=copies)
    with OrtRunner(tiny_onnx, SHAPE, cfg) as r:
        x = r.make_input(4)
        assert x.is_cuda is not copies and r.copies_included is copies
        out = r.infer(x)
        assert out.is_cuda is not copies
        torch.testing.assert_close(out.cpu(), _ref(tiny_model, x), atol=1e-3, rtol=1e-3)
        again = r.infer(x)  # the cached binding is reused and still right
        torch.testing.assert_close(again.cpu(), _ref(tiny_model, x), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (cuda:1)")
def test_cudagraph_on_a_second_device(tiny_model: ViT) -> None:
    with TorchRunner(tiny_model, SHAPE, RunnerConfig(Backend.CUDAGRAPH, device="cuda:1")) as r:
        r.prepare(2)
        x = r.make_input(2)
        assert x.device == torch.device("cuda:1")
        torch.testing.assert_close(r.infer(x).cpu(), _ref(tiny_model, x), atol=1e-4, rtol=1e-4)
