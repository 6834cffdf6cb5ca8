"""TensorRT engines: build one from an ONNX graph, run it on torch CUDA tensors, validate it.

Written against the TensorRT 10 and 11 Python APIs. Both build with ``build_serialized_network``
and run with name-based tensor I/O (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). They differ in precision: TensorRT 10 makes FP16 engines from the FP32 graph
with ``BuilderFlag.FP16``; TensorRT 11 removed that flag (networks are strongly typed), so its FP16
engines are built from the FP16 ONNX graph of ``uvc.export.fp16``.

I/O buffers are torch CUDA tensors: no pycuda (source-only, needs the CUDA headers to build) and
no cuda-python needed. The engine runs on a stream of its own, ordered against the caller's current
torch stream with events: torch's current stream is usually the legacy default stream (handle 0),
on which TensorRT documents extra device synchronisations.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

# Timing caches and atomic writes live in ``trt_cache``; re-exported here.
from uvc.export.trt_cache import (
    _write_bytes,
    read_timing_cache,
    use_timing_cache,
    write_timing_cache,
)
from uvc.export.validate import Comparison, ValidationReport, compare, require_tolerance

from uvc.errors import BackendUnavailable, ExportError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the GPU extra (pip install 'uvc[gpu]') on a machine with an NVIDIA GPU, or run the "
    "GPU Docker image (docker/Dockerfile.gpu: docker run --gpus all ...)"
)


def require_tensorrt() -> ModuleType:
    """Import TensorRT, or raise ``BackendUnavailable`` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {INSTALL_HINT}") from None
    return trt


def require_cuda() -> torch.device:
    """The current CUDA device, or ``BackendUnavailable`` when torch sees no GPU."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"TensorRT needs a CUDA GPU and torch sees none: {INSTALL_HINT}")
    return torch.device("cuda", torch.cuda.current_device())


@functools.cache
def trt_logger() -> Any:
    """The one TensorRT logger of this process (TensorRT expects a single logger instance, and
    every builder/runtime created with it must not outlive it)."""
    trt = require_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def trt_major(trt: ModuleType) -> int:
    """TensorRT's major version (10, 11, ...)."""
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class TrtBuildConfig:
    """How to build an engine.

    Args:
        min_batch, opt_batch, max_batch: the optimization profile of the batch axis
            (min <= opt <= max); the engine runs any batch in [min, max], fastest at opt.
        fp16: build an FP16 engine (TensorRT 10: FP16 flag on the FP32 graph; TensorRT 11: the
            FP16 graph is required).
        tf32: allow TF32 for FP32 math. Off by default so an "FP32" engine really is FP32
            (TensorRT enables TF32 unless the flag is cleared).
        workspace_mib: the builder's scratch-memory limit.
        timing_cache: a file reused across builds (read if present, updated after the build).
        quantized: ``"int8"`` or ``"fp8"`` when the ONNX graph is a Q/DQ graph
            (``uvc.export.trt_quant``): TensorRT 10 needs the INT8 (and FP8) flag to take its
            Q/DQ nodes, plus FP16 for the layers ModelOpt left in FP16; TensorRT 11 is strongly
            typed and reads it all from the graph.
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    fp16: bool = False
    tf32: bool = False
    workspace_mib: int = 4096
    timing_cache: Path | None = None
    quantized: str | None = None

    def __post_init__(self) -> None:
        if self.quantized not in (None, "int8", "fp8"):
            raise ValueError(f"quantized must be None, 'int8' or 'fp8', got {self.quantized!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "batch range must satisfy 1 <= min <= opt <= max, got "
                f"min {self.min_batch}, opt {self.opt_batch}, max {self.max_batch}"
            )
        if self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be positive, got {self.workspace_mib}")


@dataclass(frozen=True)
class TrtBuildResult:
    """What a build produced, for ``export.json``."""

    engine: Path
    tensorrt_version: str
    precision: str
    source_onnx: str
    build_s: float
    engine_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "engine": self.engine.name,
            "tensorrt_version": self.tensorrt_version,
            "precision": self.precision,
            "source_onnx": self.source_onnx,
            "build_s": round(self.build_s, 3),
            "engine_bytes": self.engine_bytes,
        }


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    cfg: TrtBuildConfig,
    *,
    fp16_onnx: Path | None = None,
) -> TrtBuildResult:
    """Build and write a serialized TensorRT engine.

    Args:
        onnx_path: the FP32 ONNX graph (one input with a dynamic batch axis: ``images`` for a
            model, any name for a latency table's sub-layer).
        engine_path: where to write the engine.
        cfg: profile, precision, workspace, timing cache.
        fp16_onnx: the FP16 graph of ``uvc.export.fp16``; required for ``cfg.fp16`` on TensorRT 11.

    Raises:
        BackendUnavailable: no TensorRT or no GPU.
        ExportError: the graph does not parse or the build fails.
    """
    trt = require_tensorrt()
    require_cuda()
    major = trt_major(trt)
    source = _source_graph(onnx_path, cfg, fp16_onnx, major)
    logger = trt_logger()
    builder = trt.Builder(logger)
    # The parser is held until the build is done: it owns the weights the network refers to.
    network, _parser = _parse_network(trt, builder, logger, source)
    config = _builder_config(trt, builder, network, cfg, major, source)

    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {source} (see the log above)")
    data = bytes(plan)
    _write_bytes(Path(engine_path), data)
    if cfg.timing_cache is not None:
        serialized = bytes(config.get_timing_cache().serialize())
        write_timing_cache(Path(cfg.timing_cache), serialized, str(trt.__version__))
    precision = cfg.quantized or ("fp16" if cfg.fp16 else ("tf32" if cfg.tf32 else "fp32"))
    log.info(
        "built %s engine %s in %.1f s (TensorRT %s)",
        precision,
        engine_path,
        build_s,
        trt.__version__,
    )
    return TrtBuildResult(
        Path(engine_path), str(trt.__version__), precision, Path(source).name, build_s, len(data)
    )


def _source_graph(onnx_path: Path, cfg: TrtBuildConfig, fp16_onnx: Path | None, major: int) -> Path:
    """The ONNX graph TensorRT parses: the FP16 one for an FP16 engine on TensorRT >= 11."""
    source = onnx_path
    if cfg.fp16 and major >= 11:
        # Strongly typed: the graph's own types decide the precision.
        if fp16_onnx is None:
            raise ExportError("TensorRT 11 builds FP16 engines from the FP16 ONNX graph; pass it")
        source = fp16_onnx
    return source


def _parse_network(trt: ModuleType, builder: Any, logger: Any, source: Path) -> tuple[Any, Any]:
    """The network parsed from ``source``, and its parser (keep it alive until the build ends)."""
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (model.onnx.data) relative to the graph.
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {source}: {errors}")
    return network, parser


def _builder_config(
    trt: ModuleType, builder: Any, network: Any, cfg: TrtBuildConfig, major: int, source: Path
) -> Any:
    """The builder config: workspace, precision flags, the batch profile and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if cfg.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if cfg.fp16 and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.quantized is not None and major < 11:
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers are INT8 (or FP8) only with it
        config.set_flag(trt.BuilderFlag.FP16)
        if cfg.quantized == "fp8":
            config.set_flag(trt.BuilderFlag.FP8)
    if network.num_inputs != 1:
        raise ExportError(f"{source}: expected one input, the network has {network.num_inputs}")
    inp = network.get_input(0)  # its batch axis is dynamic (-1); the rest is fixed
    per_sample = tuple(int(d) for d in tuple(inp.shape)[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(
        inp.name,
        (cfg.min_batch, *per_sample),
        (cfg.opt_batch, *per_sample),
        (cfg.max_batch, *per_sample),
    )
    config.add_optimization_profile(profile)
    cache_bytes = b""
    if cfg.timing_cache is not None:
        cache_bytes = read_timing_cache(Path(cfg.timing_cache), str(trt.__version__))
    use_timing_cache(config, cache_bytes)
    return config


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise ExportError(f"engine tensor type {dtype} is not supported by TrtRunner")
    return table[dtype]


class TrtRunner:
    """Run a serialized engine on torch CUDA tensors, on a stream of its own.

    Use as a context manager::

        with TrtRunner("model.engine") as run:
            logits = run.infer(images.cuda())

    ``infer`` queues the work and returns without synchronizing (like any CUDA op): the engine's
    stream waits for the caller's current stream (the input is ready), and the caller's stream
    waits for the engine's (the output is ready), both with events. Read the result with
    ``.cpu()``, or time it with CUDA events on the caller's stream.
    """

    def __init__(self, engine_path: str | Path) -> None:
        self.engine_path = Path(engine_path)
        self._engine: Any = None
        self._context: Any = None

    def __enter__(self) -> TrtRunner:
        trt = require_tensorrt()
        self.device = require_cuda()
        if not self.engine_path.is_file():
            raise ExportError(f"engine not found: {self.engine_path}")
        self._trt = trt
        self._runtime = trt.Runtime(trt_logger())
        self._stream = torch.cuda.Stream(self.device)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ExportError(
                f"{self.engine_path} is not an engine for this TensorRT ({trt.__version__}) and GPU"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise ExportError(f"expected one input and one output, engine has {ins} -> {outs}")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self.output_name))
        lo, _, hi = self._engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.sample_shape = tuple(int(d) for d in hi[1:])
        return self

    def __exit__(self, *exc: object) -> None:
        # Release in reverse order of creation: the context uses the engine.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) on the GPU -> logits (B, classes) on the GPU, in float32.

        Raises:
            ExportError: not entered, input not on CUDA, wrong shape, or batch outside the
                engine's profile.
        """
        if self._context is None:
            raise ExportError("TrtRunner.infer called outside its `with` block")
        if not x.is_cuda:
            raise ExportError("TrtRunner.infer takes CUDA tensors; move the input with .cuda()")
        if x.device != self.device:
            raise ExportError(f"input on {x.device}, the engine was loaded on {self.device}")
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ExportError(f"input shape {tuple(x.shape)} != engine's (B, {self.sample_shape})")
        b = int(x.shape[0])
        if not self.min_batch <= b <= self.max_batch:
            raise ExportError(
                f"batch {b} is outside the engine's range [{self.min_batch}, {self.max_batch}]"
            )
        with torch.cuda.device(x.device):
            caller = torch.cuda.current_stream(x.device)
            x = x.to(self.input_dtype).contiguous()  # queued on the caller's stream
            ctx = self._context
            if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
                raise ExportError(f"the engine rejects input shape {tuple(x.shape)}")
            out_shape = tuple(ctx.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self.output_dtype, device=x.device)
            ctx.set_tensor_address(self.input_name, x.data_ptr())
            ctx.set_tensor_address(self.output_name, out.data_ptr())
            stream = self._stream
            stream.wait_stream(caller)  # an event: the engine starts once the input is written
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise ExportError("TensorRT execute_async_v3 failed (see the log above)")
            # The caching allocator must not hand these buffers out while the engine uses them.
            x.record_stream(stream)
            out.record_stream(stream)
            caller.wait_stream(stream)  # the caller's later work sees the finished output
            return out.float()


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Inside: cuBLAS matmuls and cuDNN convolutions in true FP32 (TF32 off); restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def validate_engine(
    model: torch.nn.Module,
    engine_path: Path,
    inputs: list[torch.Tensor],
    *,
    atol: float | None = None,
    name: str = "engine",
) -> ValidationReport:
    """Compare an engine's logits with the PyTorch FP32 model's, both on the GPU.

    The reference is true FP32: torch's cuDNN allows TF32 by default (the patch-embedding conv
    would run in TF32), so TF32 is switched off while the reference is computed.
    """
    import copy

    device = require_cuda()
    ref_model = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    rows: list[Comparison] = []
    with TrtRunner(engine_path) as runner, torch.no_grad():
        for x in inputs:
            x = x.to(device=device, dtype=torch.float32)
            with no_tf32():
                ref = ref_model(x)
            out = runner.infer(x)
            torch.cuda.current_stream(device).synchronize()
            rows.append(compare(ref, out))
    report = ValidationReport(name=name, runtime="tensorrt", comparisons=tuple(rows))
    if atol is not None:
        require_tolerance(report, atol)
    return report
