"""Runners compute what the PyTorch model computes, check their inputs, and say why they skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.bench.runners import (
    Backend,
    InputError,
    OrtRunner,
    Precision,
    RunnerConfig,
    TorchRunner,
    TrtEngineRunner,
)

from uvc.errors import BackendUnavailable
from uvc.model import ViT

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


@needs_cuda
@pytest.mark.parametrize("backend", [Backend.EAGER, Backend.CUDAGRAPH])
def test_cuda_runners_match_model(tiny_model: ViT, backend: Backend) -> None:
    with TorchRunner(tiny_model, SHAPE, RunnerConfig(backend, device="cuda")) as r:
        r.prepare(2)
        x = r.make_input(2)
        assert x.is_cuda
        torch.testing.assert_close(r.infer(x).cpu(), _ref(tiny_model, x), atol=1e-4, rtol=1e-4)
