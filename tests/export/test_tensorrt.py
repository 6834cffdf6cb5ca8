"""TensorRT: config validation and clear errors everywhere; engine build and run on a GPU only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.export.tensorrt import TrtBuildConfig, TrtRunner, require_tensorrt

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.errors import BackendUnavailable


def test_build_config_validates_batch_range() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        TrtBuildConfig(min_batch=8, opt_batch=4, max_batch=16)
    with pytest.raises(ValueError, match="workspace"):
        TrtBuildConfig(workspace_mib=0)
    assert TrtBuildConfig().tf32 is False  # "FP32" engines really are FP32 unless asked


def test_missing_tensorrt_names_the_extra_and_image() -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message where it is absent")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match=r"uvc\[gpu\].*Dockerfile\.gpu"):
        require_tensorrt()
    with pytest.raises(BackendUnavailable), TrtRunner("missing.engine"):
        pass


def test_timing_cache_from_another_version_is_not_read(tmp_path: Path) -> None:
    from uvc.export.tensorrt import read_timing_cache, write_timing_cache

    cache = tmp_path / "new" / "dir" / "timing.cache"  # parent folders do not exist yet
    assert read_timing_cache(cache, "10.8.0") == b""
    write_timing_cache(cache, b"tactics", "10.8.0")
    assert cache.read_bytes() == b"tactics"
    assert read_timing_cache(cache, "10.8.0") == b"tactics"
    assert read_timing_cache(cache, "11.0.0") == b""  # written by another TensorRT
    (tmp_path / "old.cache").write_bytes(b"untagged")  # from before tags: version unknown
    assert read_timing_cache(tmp_path / "old.cache", "10.8.0") == b""


class _BuilderConfig:
    """Stands in for trt.IBuilderConfig's timing-cache calls: rejects caches it did not make."""

    def __init__(self, accept_empty: bool = True) -> None:
        self.accept_empty = accept_empty
        self.set: list[bytes] = []

    def create_timing_cache(self, data: bytes) -> bytes:
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        ok = cache == b"" and self.accept_empty
        if ok:
            self.set.append(cache)
        return ok


def test_rejected_timing_cache_falls_back_to_an_empty_one() -> None:
    from uvc.export.tensorrt import use_timing_cache

    from uvc.errors import ExportError

    cfg = _BuilderConfig()
    assert use_timing_cache(cfg, b"stale") == b"" and cfg.set == [b""]
    with pytest.raises(ExportError, match="could not set a timing cache"):
        use_timing_cache(_BuilderConfig(accept_empty=False), b"stale")


def test_no_tf32_restores_the_flags() -> None:
    from uvc.export.tensorrt import no_tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with no_tf32():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture
def gpu_trt():
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (pip install 'uvc[gpu]' on a GPU machine)"
    )
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch: TensorRT engines cannot be built here")
    return trt


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_run_validate(gpu_trt, tmp_path: Path, fp16: bool) -> None:
    from uvc.export.fp16 import convert_to_fp16
    from uvc.export.onnx import Exporter, export_onnx
    from uvc.export.tensorrt import build_engine, validate_engine
    from uvc.export.validate import validation_inputs

    model = ViT(tiny_spec()).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    fp16_path = convert_to_fp16(onnx_path, tmp_path / "m.fp16.onnx") if fp16 else None
    cache = tmp_path / "timing.cache"
    cfg = TrtBuildConfig(min_batch=1, opt_batch=4, max_batch=8, fp16=fp16, timing_cache=cache)
    built = build_engine(onnx_path, tmp_path / "m.engine", cfg, fp16_onnx=fp16_path)
    assert built.engine.is_file() and built.build_s > 0 and cache.is_file()
    xs, _ = validation_inputs((3, 32, 32), (1, 8))
    report = validate_engine(model, built.engine, xs, atol=None if fp16 else 1e-4)
    assert report.min_cosine > 0.999
    with TrtRunner(built.engine) as run:
        x = torch.randn(3, 3, 32, 32, device="cuda")
        out = run.infer(x)
        assert out.shape == (3, 10) and out.is_cuda
        with pytest.raises(Exception, match="outside the engine's range"):
            run.infer(torch.randn(9, 3, 32, 32, device="cuda"))
        with pytest.raises(Exception, match="CUDA"):
            run.infer(torch.randn(1, 3, 32, 32))
        # Called from a side stream: the engine's own stream is ordered against it with events.
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            xs = torch.randn(4, 3, 32, 32, device="cuda")
            got = run.infer(xs).clone()
        side.synchronize()
        with torch.no_grad():
            ref = model.cuda()(xs)
        torch.testing.assert_close(got, ref, atol=5e-2 if fp16 else 1e-3, rtol=1e-2)
    from uvc.export.tensorrt import trt_logger

    assert trt_logger() is trt_logger()  # one logger per process
