"""INT8 / FP8 QDQ graphs for TensorRT, built with NVIDIA's ModelOpt ONNX quantization.

``modelopt.onnx.quantization.quantize`` (package ``nvidia-modelopt``, extra ``uvc[quant-gpu]``,
imported only here) inserts Q/DQ nodes where TensorRT's explicit quantization expects them and
calibrates the activation ranges on the given images with ONNX Runtime (here always on the CPU
provider, which every install has). Written against its documented API: ``quantize(onnx_path,
quantize_mode="int8"|"fp8", calibration_data=..., calibration_method=..., calibration_eps=...,
output_path=...)``; the calibration method is ModelOpt's default (entropy), the layers left
unquantized are FP16 (``high_precision_dtype``'s default), as TensorRT runs them fastest.

The graph only pays off as a TensorRT engine (``uvc export --trt``: ``model.int8.engine``,
``model.fp8.engine``). FP8 engines need a GPU of compute capability 8.9 or newer (Ada, Hopper).
Both graphs also run in ONNX Runtime (simulated quantization), which is how they are checked for
accuracy where no engine is built.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor

from uvc.errors import BackendUnavailable, ExportError

log = logging.getLogger(__name__)

MODELOPT_HINT = "pip install 'uvc[quant-gpu]' (NVIDIA's nvidia-modelopt with its ONNX extra)"
FP8_MIN_CAPABILITY = (8, 9)


class TrtQuantMode(str, Enum):
    """The low precision of a TensorRT QDQ graph."""

    INT8 = "int8"
    FP8 = "fp8"

    @property
    def onnx_name(self) -> str:
        """The QDQ graph's file name in an export folder."""
        return f"model.trt.{self.value}.onnx"

    @property
    def engine_name(self) -> str:
        """The engine's file name in an export folder."""
        return f"model.{self.value}.engine"


@dataclass(frozen=True)
class TrtQuantGraph:
    """What ``quantize_for_tensorrt`` wrote.

    Args:
        path: the QDQ graph.
        mode: int8 or fp8.
        modelopt_version: the ModelOpt that built it.
        quantize_s: seconds of calibration and quantization.
        qdq_nodes: QuantizeLinear + DequantizeLinear nodes in it.
    """

    path: Path
    mode: TrtQuantMode
    modelopt_version: str
    quantize_s: float
    qdq_nodes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export.json``."""
        return {
            "file": self.path.name,
            "mode": self.mode.value,
            "quantizer": "modelopt.onnx.quantization.quantize",
            "modelopt": self.modelopt_version,
            "calibration": "entropy (ModelOpt's default), on ONNX Runtime's CPU provider",
            "unquantized_layers": "fp16",
            "qdq_nodes": self.qdq_nodes,
            "quantize_s": round(self.quantize_s, 3),
        }


def require_modelopt() -> ModuleType:
    """ModelOpt's ONNX quantization module, or ``BackendUnavailable`` naming the extra."""
    try:
        from modelopt.onnx import quantization
    except ImportError as exc:
        raise BackendUnavailable(
            f"--trt-quant needs NVIDIA ModelOpt's ONNX quantization ({exc}): {MODELOPT_HINT}"
        ) from None
    return quantization


def require_fp8_gpu() -> None:
    """``BackendUnavailable`` unless torch sees a GPU that runs FP8 (compute capability >= 8.9)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("an FP8 engine needs a CUDA GPU and torch sees none")
    cap = torch.cuda.get_device_capability()
    if tuple(cap) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name()
        raise BackendUnavailable(
            f"{name} (compute capability {cap[0]}.{cap[1]}) has no FP8: TensorRT FP8 engines need "
            f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+ (Ada, Hopper); use --trt-quant int8"
        )


def quantize_for_tensorrt(
    onnx_path: Path, out_path: Path, calib: Tensor, mode: TrtQuantMode
) -> TrtQuantGraph:
    """Write ModelOpt's ``mode`` QDQ graph of the FP32 graph ``onnx_path`` to ``out_path``.

    ModelOpt writes intermediate files beside its input, so it works on a copy in a private
    temporary folder.

    Raises:
        BackendUnavailable: ModelOpt is not installed.
        ExportError: ModelOpt failed or wrote nothing.
    """
    import importlib.metadata as md

    quantization = require_modelopt()
    mode = TrtQuantMode(mode)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uvc-modelopt-") as work:
        src = Path(work) / "model.onnx"
        shutil.copyfile(onnx_path, src)
        if Path(f"{onnx_path}.data").is_file():
            shutil.copyfile(f"{onnx_path}.data", f"{src}.data")
        dst = Path(work) / out_path.name
        try:
            quantization.quantize(
                str(src),
                quantize_mode=mode.value,
                calibration_data={"images": calib.detach().float().cpu().numpy()},
                calibration_eps=["cpu"],
                output_path=str(dst),
                log_level="WARNING",
            )
        except Exception as exc:  # ModelOpt raises many unrelated types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"ModelOpt {mode.value} quantization failed: {first}") from exc
        if not dst.is_file():
            raise ExportError(f"ModelOpt wrote no {mode.value} graph")
        shutil.move(str(dst), str(out_path))
    import onnx

    graph = onnx.load(str(out_path), load_external_data=False).graph
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    took = time.perf_counter() - start
    log.info("ModelOpt %s graph %s: %d Q/DQ nodes (%.1f s)", mode.value, out_path.name, qdq, took)
    return TrtQuantGraph(Path(out_path), mode, md.version("nvidia-modelopt"), took, qdq)
