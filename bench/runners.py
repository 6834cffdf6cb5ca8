"""One small interface over every backend the benchmark runs.

A runner is a context manager: entering it builds what the backend needs (moves the model, creates
the ONNX Runtime session, loads the engine) and records how long that took (``build_s``);
``prepare(batch)`` does per-shape work (``torch.compile`` tracing, CUDA-graph capture) and returns
its time; ``infer(x)`` checks the input's shape, dtype and device, then runs. Heavy libraries are
imported when a runner is opened. A backend that cannot run here raises ``BackendUnavailable`` with
the reason, which the harness reports as a skipped row. ONNX Runtime's runner lives in
``uvc.bench.ort_runner``.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uvc.errors import BackendUnavailable, UvcError


class InputError(UvcError, ValueError):
    """An input tensor does not match what the runner was built for."""


class Backend(str, Enum):
    """Where a model runs."""

    EAGER = "eager"  # PyTorch, eager mode
    COMPILE = "compile"  # PyTorch, torch.compile (inductor)
    CUDAGRAPH = "cudagraph"  # PyTorch, replayed CUDA graphs (GPU)
    ORT = "ort"  # ONNX Runtime: CPU provider, or CUDA provider with --device cuda
    ORT_TRT = "ort-trt"  # ONNX Runtime's TensorRT execution provider
    TRT = "trt"  # a native TensorRT engine (export.tensorrt.TrtRunner)


class Precision(str, Enum):
    """Numeric precision of weights and activations."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype."""
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]


@dataclass(frozen=True)
class RunnerConfig:
    """How to run.

    Args:
        backend: the backend.
        device: ``cpu`` or ``cuda`` (``cuda:N`` accepted).
        precision: fp32 everywhere; fp16/bf16 only on CUDA.
        threads: CPU intra-op threads (torch and ONNX Runtime get the same number).
        include_copies: inputs live on the host and outputs come back to it inside the timed call;
            by default inputs already live where the backend computes (copies excluded).
    """

    backend: Backend = Backend.EAGER
    device: str = "cpu"
    precision: Precision = Precision.FP32
    threads: int = 1
    include_copies: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))
        object.__setattr__(self, "precision", Precision(self.precision))
        try:
            kind = torch.device(self.device).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def torch_device(self) -> torch.device:
        """The compute device."""
        return torch.device(self.device)

    @property
    def on_cuda(self) -> bool:
        """Whether the backend computes on a GPU."""
        return self.torch_device.type == "cuda"


class Runner(ABC):
    """Base class: input checks, build timing, context management.

    Args:
        input_shape: per-sample input shape, e.g. (3, 224, 224); the batch axis is free.
        config: the run configuration.
    """

    def __init__(self, input_shape: tuple[int, ...], config: RunnerConfig) -> None:
        self.input_shape = tuple(input_shape)
        self.config = config
        self.build_s = 0.0

    @property
    def name(self) -> str:
        """Backend label for reports."""
        return self.config.backend.value

    @property
    def input_device(self) -> torch.device:
        """Where ``infer`` expects its input."""
        if self.config.include_copies or not self.config.on_cuda:
            return torch.device("cpu")
        return self.config.torch_device

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype ``infer`` expects."""
        return self.config.precision.dtype

    def make_input(self, batch: int, seed: int = 0) -> Tensor:
        """A random input of ``batch`` samples, where and as ``infer`` wants it."""
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *self.input_shape), generator=g)
        return x.to(device=self.input_device, dtype=self.input_dtype)

    def check_input(self, x: Tensor) -> None:
        """Raise ``InputError`` unless ``x`` has this runner's shape, dtype and device."""
        if not isinstance(x, Tensor):
            raise InputError(f"{self.name}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"{self.name}: input shape {tuple(x.shape)} is not (batch, *{self.input_shape})"
            )
        if x.shape[0] < 1:
            raise InputError(f"{self.name}: empty batch")
        if x.dtype != self.input_dtype:
            raise InputError(f"{self.name}: input dtype {x.dtype}, expected {self.input_dtype}")
        if x.device.type != self.input_device.type:
            raise InputError(f"{self.name}: input on {x.device}, expected {self.input_device}")

    def infer(self, x: Tensor) -> Tensor:
        """Validate ``x`` and run the model on it."""
        self.check_input(x)
        return self._run(x)

    def prepare(self, batch: int) -> float:
        """Per-shape preparation (compilation, graph capture); returns its seconds."""
        t0 = time.perf_counter()
        self.infer(self.make_input(batch))
        self._sync()
        return time.perf_counter() - t0

    def __enter__(self) -> Runner:
        t0 = time.perf_counter()
        self._build()
        self._sync()
        self.build_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _sync(self) -> None:
        if self.config.on_cuda:
            torch.cuda.synchronize(self.config.torch_device)

    @abstractmethod
    def _build(self) -> None: ...

    @abstractmethod
    def _run(self, x: Tensor) -> Tensor: ...

    def _close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing)
        """Release backend resources (default: nothing)."""


def require_cuda(config: RunnerConfig, what: str) -> None:
    """Raise ``BackendUnavailable`` unless ``config`` targets an available CUDA device."""
    if not config.on_cuda:
        raise BackendUnavailable(f"{what} needs --device cuda")
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device")


def compile_toolchain_problem(on_cuda: bool) -> str | None:
    """Why ``torch.compile`` (inductor) cannot build kernels here, or None.

    On a CPU inductor compiles C++ (a C++ compiler and Python's headers); on CUDA Triton builds
    its launcher with a C compiler against Python's headers. Slim images (python:3.11-slim) have
    neither compiler, and the failure would otherwise surface as a long traceback mid-benchmark.
    """
    import os
    import shutil
    import sysconfig

    if on_cuda:
        names, var, what = ("cc", "gcc", "clang"), "CC", "Triton needs a C compiler"
    else:
        names, var, what = ("c++", "g++", "clang++"), "CXX", "inductor needs a C++ compiler"
    env = os.environ.get(var)
    found = (
        shutil.which(env)
        if env
        else next((shutil.which(n) for n in names if shutil.which(n)), None)
    )
    if found is None:
        return f"compile: {what} ({var} or one of {', '.join(names)} on PATH) and none is here"
    include = sysconfig.get_paths().get("include", "")
    if not Path(include, "Python.h").is_file():
        return f"compile: Python's headers (Python.h) are missing from {include} (python3-dev)"
    return None


class TorchRunner(Runner):
    """PyTorch: eager, ``torch.compile`` or CUDA-graph replay of an ``nn.Module``."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], config: RunnerConfig):
        super().__init__(input_shape, config)
        backend = config.backend
        if backend not in (Backend.EAGER, Backend.COMPILE, Backend.CUDAGRAPH):
            raise ValueError(f"TorchRunner cannot run backend {backend.value}")
        if config.on_cuda or backend is Backend.CUDAGRAPH:
            require_cuda(config, backend.value)
        if config.precision is not Precision.FP32 and not config.on_cuda:
            raise BackendUnavailable(f"{config.precision.value} runs on CUDA only")
        if backend is Backend.COMPILE:
            problem = compile_toolchain_problem(config.on_cuda)
            if problem is not None:
                raise BackendUnavailable(problem)
        self._source = module
        self._fn: Any = None
        self._graphs: dict[int, tuple[Any, Tensor, Tensor]] = {}

    def _build(self) -> None:
        from uvc.bench.timer import set_threads

        set_threads(self.config.threads)
        dev, dtype = self.config.torch_device, self.config.precision.dtype
        # A copy: the caller's model keeps its device and dtype.
        self._module = copy.deepcopy(self._source).eval().to(device=dev, dtype=dtype)
        self._module.requires_grad_(False)
        if self.config.backend is Backend.COMPILE:
            self._fn = torch.compile(self._module, dynamic=False)
        else:
            self._fn = self._module

    def prepare(self, batch: int) -> float:
        """Compile or capture for ``batch`` (eager: one untimed call)."""
        if self.config.backend is not Backend.CUDAGRAPH:
            return super().prepare(batch)
        t0 = time.perf_counter()
        dev = self.config.torch_device
        # torch.cuda.graph captures on the *current* device: on cuda:N it must be made current.
        with torch.cuda.device(dev):
            static_in = self.make_input(batch).to(dev)
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):  # warm the allocator and kernels on a side stream first
                    self._module(static_in)
            torch.cuda.current_stream(dev).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self._module(static_in)
        self._graphs[batch] = (graph, static_in, static_out)
        self._sync()
        return time.perf_counter() - t0

    def _run(self, x: Tensor) -> Tensor:
        dev = self.config.torch_device
        if x.device != dev:
            x = x.to(dev, non_blocking=False)
        if self.config.backend is Backend.CUDAGRAPH:
            if x.shape[0] not in self._graphs:
                self.prepare(x.shape[0])
            graph, static_in, static_out = self._graphs[x.shape[0]]
            with torch.cuda.device(dev):
                static_in.copy_(x)
                graph.replay()
            out = static_out
        else:
            with torch.inference_mode():
                out = self._fn(x)
        if self.config.include_copies and out.device.type != "cpu":
            out = out.cpu()  # a blocking copy: the host has the result when this returns
        return out

    def _close(self) -> None:
        self._graphs.clear()
        self._fn = None


class TrtEngineRunner(Runner):
    """A native TensorRT engine, through ``uvc.export.tensorrt.TrtRunner``."""

    def __init__(
        self, engine_path: str | Path | None, input_shape: tuple[int, ...], config: RunnerConfig
    ):
        super().__init__(input_shape, config)
        require_cuda(config, "trt")
        if engine_path is None:
            raise BackendUnavailable("no model.engine (benchmark an export folder made with trt)")
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise BackendUnavailable(f"no TensorRT engine at {self.engine_path} (run uvc export)")
        self._trt: Any = None

    @property
    def input_dtype(self) -> torch.dtype:
        """Engines take fp32 inputs; precision is a build-time property of the engine."""
        return torch.float32

    def _build(self) -> None:
        try:
            from uvc.export.tensorrt import TrtRunner
        except ImportError as exc:
            raise BackendUnavailable(f"TensorRT runner unavailable: {exc}") from None
        self._trt = TrtRunner(self.engine_path)
        self._trt.__enter__()

    def prepare(self, batch: int) -> float:
        """Refuse (skip, not fail) a batch outside the engine's optimization profile."""
        lo, hi = self._trt.min_batch, self._trt.max_batch
        if not lo <= batch <= hi:
            raise BackendUnavailable(
                f"batch {batch} is outside the engine's profile [{lo}, {hi}] "
                "(rebuild with uvc export --min-batch/--max-batch)"
            )
        return super().prepare(batch)

    def _run(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            x = x.to(self.config.torch_device)
        out = self._trt.infer(x)
        if self.config.include_copies:
            out = out.cpu()
        return out

    def _close(self) -> None:
        if self._trt is not None:
            self._trt.__exit__(None, None, None)
            self._trt = None
