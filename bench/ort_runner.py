"""ONNX Runtime as a benchmark runner: CPU, CUDA (IOBinding on torch tensors), TensorRT providers.

The session gets the benchmark's thread settings and, on a GPU, provider options (device, and for
TensorRT precision, an engine cache and a batch profile). Whatever provider ONNX Runtime actually
chose is checked: it falls back silently, and a row must not time one provider under another's
name. The input dtype is the graph's own: ``model.fp16.onnx`` keeps FP32 inputs and outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from uvc.bench.runners import Backend, Precision, Runner, RunnerConfig, require_cuda

from uvc.errors import BackendUnavailable

ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def ort_install_problem(installed: dict[str, str] | None = None) -> str | None:
    """Why ONNX Runtime's GPU providers may be missing, or None.

    ``onnxruntime`` and ``onnxruntime-gpu`` install into the same ``onnxruntime/`` folder; with
    both installed the one installed last wins and the CUDA/TensorRT providers may vanish.

    Args:
        installed: distribution name -> version (default: what is installed here).
    """
    if installed is None:
        import importlib.metadata as md

        installed = {}
        for dist in ("onnxruntime", "onnxruntime-gpu"):
            try:
                installed[dist] = md.version(dist)
            except md.PackageNotFoundError:
                continue
    if "onnxruntime" in installed and "onnxruntime-gpu" in installed:
        return (
            f"both onnxruntime {installed['onnxruntime']} and onnxruntime-gpu "
            f"{installed['onnxruntime-gpu']} are installed and share one folder: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    return None


def onnx_io(path: str | Path) -> tuple[str, torch.dtype, torch.dtype]:
    """An ONNX graph's first input name, and the torch dtypes of its first input and output
    (weights not loaded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    table = {
        onnx.TensorProto.FLOAT: torch.float32,
        onnx.TensorProto.FLOAT16: torch.float16,
        onnx.TensorProto.BFLOAT16: torch.bfloat16,
    }
    types = [graph.input[0].type.tensor_type.elem_type, graph.output[0].type.tensor_type.elem_type]
    if any(t not in table for t in types):
        raise BackendUnavailable(f"{path}: I/O element types {types} are not float/float16")
    return graph.input[0].name, table[types[0]], table[types[1]]


def ort_provider_options(
    provider: str,
    device_index: int,
    *,
    fp16: bool = False,
    batch_sizes: tuple[int, ...] = (1,),
    input_name: str = "images",
    input_shape: tuple[int, ...] = (3, 224, 224),
    cache_dir: Path | None = None,
) -> dict[str, str]:
    """ONNX Runtime provider options: the device, and for TensorRT precision, engine cache and a
    batch profile spanning ``batch_sizes`` (so no engine is rebuilt between timed calls)."""
    if provider == ORT_PROVIDERS["cpu"]:
        return {}
    opts = {"device_id": str(device_index)}
    if provider == ORT_PROVIDERS["trt"]:
        dims = "x".join(str(d) for d in input_shape)
        lo, hi = min(batch_sizes), max(batch_sizes)
        opts.update(
            trt_fp16_enable="True" if fp16 else "False",
            trt_profile_min_shapes=f"{input_name}:{lo}x{dims}",
            trt_profile_opt_shapes=f"{input_name}:{hi}x{dims}",
            trt_profile_max_shapes=f"{input_name}:{hi}x{dims}",
        )
        if cache_dir is not None:
            opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir))
    return opts


def create_session(path: str | Path, options: Any, providers: list[tuple[str, dict]]) -> Any:
    """An ``InferenceSession`` whose first provider is the one asked for, or ``BackendUnavailable``.

    ONNX Runtime falls back silently (a warning) to the next provider, or to the CPU, when the
    first cannot be created; a row would then time another provider under this one's name.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), options, providers=providers)
    wanted, got = providers[0][0], session.get_providers()[0]
    if got != wanted:
        hint = ort_install_problem() or "see ONNX Runtime's warnings above"
        raise BackendUnavailable(f"ONNX Runtime fell back from {wanted} to {got} ({hint})")
    return session


class OrtRunner(Runner):
    """ONNX Runtime on an exported model (first input, first output).

    CPU: the CPU provider with ``intra_op_num_threads = config.threads``. CUDA: the CUDA or
    TensorRT execution provider (onnxruntime-gpu). On CUDA the input is a torch CUDA tensor bound
    with IOBinding and the output a preallocated torch CUDA tensor, so nothing crosses the bus
    unless ``include_copies`` (then the input is fed from host memory and the output comes back).
    The input dtype is the graph's own (``model.fp16.onnx`` keeps FP32 I/O), whatever the
    precision.

    Args:
        onnx_path: the graph.
        input_shape: per-sample input shape.
        config: the run configuration.
        batch_sizes: the batches that will be run (the TensorRT provider's profile spans them).
        cache_dir: the TensorRT provider's engine cache (none: engines are rebuilt per session).
    """

    def __init__(
        self,
        onnx_path: str | Path,
        input_shape: tuple[int, ...],
        config: RunnerConfig,
        *,
        batch_sizes: tuple[int, ...] = (1,),
        cache_dir: Path | None = None,
    ):
        super().__init__(input_shape, config)
        self.onnx_path = Path(onnx_path)
        if config.backend not in (Backend.ORT, Backend.ORT_TRT):
            raise ValueError(f"OrtRunner cannot run backend {config.backend.value}")
        if config.backend is Backend.ORT_TRT or config.on_cuda:
            require_cuda(config, config.backend.value)
        if config.precision is Precision.BF16:
            raise BackendUnavailable("ONNX Runtime runs fp32 or fp16 models here, not bf16")
        if not self.onnx_path.is_file():
            raise BackendUnavailable(f"no ONNX model at {self.onnx_path}")
        self.batch_sizes = tuple(batch_sizes)
        self.cache_dir = cache_dir
        self._in_name, self._in_dtype, self._out_dtype = onnx_io(self.onnx_path)
        self._session: Any = None
        self._bound: dict[tuple[int, tuple[int, ...]], tuple[Any, Tensor]] = {}

    @property
    def copies_included(self) -> bool:
        """Whether the timed call moves data between host and device."""
        return self.config.on_cuda and self.config.include_copies

    @property
    def input_dtype(self) -> torch.dtype:
        """The graph's input type (precision is a property of the graph)."""
        return self._in_dtype

    def providers(self) -> list[str]:
        """The execution providers this runner asks for, best first."""
        if self.config.backend is Backend.ORT_TRT:
            return [ORT_PROVIDERS["trt"], ORT_PROVIDERS["cuda"]]
        if self.config.on_cuda:
            return [ORT_PROVIDERS["cuda"]]
        return [ORT_PROVIDERS["cpu"]]

    def _build(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                "onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        wanted = self.providers()
        if wanted[0] not in ort.get_available_providers():
            why = ort_install_problem() or "install onnxruntime-gpu"
            raise BackendUnavailable(f"ONNX Runtime has no {wanted[0]} here ({why})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT worker threads spin for a while after each run; with several sessions open and
        # timed in turn, one session's spinning would steal cores from the next one's run.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        dev = self.config.torch_device
        index = (dev.index or 0) if dev.type == "cuda" else 0
        if self.cache_dir is not None and self.config.backend is Backend.ORT_TRT:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        providers = [
            (
                p,
                ort_provider_options(
                    p,
                    index,
                    fp16=self.config.precision is Precision.FP16,
                    batch_sizes=self.batch_sizes,
                    input_name=self._in_name,
                    input_shape=self.input_shape,
                    cache_dir=self.cache_dir,
                ),
            )
            for p in wanted
        ]
        self._session = create_session(self.onnx_path, opts, providers)
        self._in = self._session.get_inputs()[0].name
        self._out = self._session.get_outputs()[0].name
        self._classes = self._session.get_outputs()[0].shape[1:]

    def _run(self, x: Tensor) -> Tensor:
        if x.device.type == "cuda":
            return self._run_bound(x)
        (out,) = self._session.run([self._out], {self._in: x.numpy()})
        return torch.from_numpy(out)

    def _run_bound(self, x: Tensor) -> Tensor:
        """IOBinding on torch CUDA memory: no host round trip. One binding per input buffer."""
        import numpy as np

        x = x.contiguous()
        key = (x.data_ptr(), tuple(x.shape))
        if key not in self._bound:
            dev = x.device
            out_shape = (x.shape[0], *(int(d) for d in self._classes))
            out = torch.empty(out_shape, dtype=self._out_dtype, device=dev)
            np_dtype = {torch.float32: np.float32, torch.float16: np.float16}
            binding = self._session.io_binding()
            binding.bind_input(
                self._in, "cuda", dev.index or 0, np_dtype[x.dtype], tuple(x.shape), x.data_ptr()
            )
            binding.bind_output(
                self._out, "cuda", dev.index or 0, np_dtype[out.dtype], out_shape, out.data_ptr()
            )
            self._bound[key] = (binding, out)
        binding, out = self._bound[key]
        # ONNX Runtime computes on its own stream: the input must be complete on torch's first.
        torch.cuda.current_stream(x.device).synchronize()
        self._session.run_with_iobinding(binding)  # returns once the output is written
        return out

    def _close(self) -> None:
        self._bound.clear()
        self._session = None
