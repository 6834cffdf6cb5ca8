"""INT8 post-training quantization for ONNX Runtime on the CPU: a QDQ graph, ``model.int8.onnx``.

Built with ONNX Runtime's own static quantization: ``quant_pre_process`` (symbolic shape
inference and graph clean-up), then ``quantize_static`` in the QDQ format with per-channel INT8
weights and UINT8 activations (ONNX Runtime's recommendation for x86 CPUs with VNNI), activation
ranges calibrated on real images.

What is quantized, and what stays FP32 (each choice measured on the CIFAR-10 ViT, see README):

- quantized: every MatMul with a weight (q/k/v, projection, MLP) — their inputs get a
  QuantizeLinear, their weights are stored as INT8 with a DequantizeLinear;
- MatMul *outputs* are not re-quantized (``OpTypesToExcludeOutputQuantization``): ONNX Runtime
  then fuses Q -> MatMul -> float into ``MatMulIntegerToFloat`` instead of ``QLinearMatMul`` + a
  DequantizeLinear per layer: in ONNX Runtime's profile of DeiT-Tiny at batch 8 the graph took
  123 ms this way and 198 ms with re-quantized outputs (7% on the CIFAR ViT), no less exact;
- FP32: the two activation x activation products of attention (q.k^T and attn.v: 10% slower in
  INT8 here, no more accurate), LayerNorm and Softmax (never handed to the quantizer: they
  normalise over a whole row, where one 8-bit step is a large error), the classifier head (its
  error goes straight into the logits; ``quantize_head`` turns it on) and the patch-embedding
  Conv (one small op).

The graph is built from the plain ``model.onnx``, which every export has: ONNX Runtime's QDQ
quantizer has no rule for the fused ``Attention`` op of ``model.opt.onnx``, so there the q/k/v
projections stay FP32; that graph was 5% faster on the CIFAR ViT but exists only with
``--optimize cpu`` (``python -m uvc.bench.int8_choices`` measures both).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from torch import Tensor

from uvc.errors import BackendUnavailable, ExportError

log = logging.getLogger(__name__)

INT8_ONNX = "model.int8.onnx"
# The oldest ONNX Runtime whose quantizer has everything used here: quant_pre_process,
# QDQ per-channel weights of MatMul, OpTypesToExcludeOutputQuantization and the Percentile
# calibrator (all present since 1.16).
MIN_ORT = (1, 16)
CALIB_BATCH = 16  # images per calibration run
DEFAULT_PERCENTILE = 99.999


class CalibMethod(str, Enum):
    """How activation ranges are taken from the calibration images.

    PERCENTILE (default) clips each tensor's range at a high percentile of |x| (99.999 %), so a
    few outlier activations — common in ViTs — do not stretch the 256 levels over an empty range;
    MINMAX takes the observed extremes (fastest to calibrate, the most outlier-sensitive).

    ONNX Runtime's Entropy method is not offered: called through ``quantize_static`` it bins
    each tensor into 128 bins for 128 quantized bins (neither settable there), which leaves its
    KL search a single candidate, the full range; its scales came out identical to MinMax's.
    """

    PERCENTILE = "percentile"
    MINMAX = "minmax"


class QuantizationUnavailable(BackendUnavailable):
    """ONNX Runtime (or its quantization tools) here cannot build the INT8 graph."""


@dataclass(frozen=True)
class Int8Options:
    """How the INT8 graph is calibrated and what stays FP32.

    Args:
        method: the calibration method.
        percentile: with ``PERCENTILE``, the percentile of |x| kept (in (90, 100]).
        quantize_head: also quantize the classifier head (off: it stays FP32).
    """

    method: CalibMethod = CalibMethod.PERCENTILE
    percentile: float = DEFAULT_PERCENTILE
    quantize_head: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", CalibMethod(self.method))
        except ValueError:
            names = ", ".join(m.value for m in CalibMethod)
            raise ValueError(
                f"calibration method must be one of {names}, got {self.method!r}"
            ) from None
        if not 90.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (90, 100], got {self.percentile}")


@dataclass(frozen=True)
class Int8Graph:
    """What ``quantize_int8`` wrote.

    Args:
        path: the INT8 QDQ graph.
        quantized: names of the MatMul/Gemm nodes that run in INT8.
        fp32: node name -> why it stays FP32 (weighted ops and attention products only).
        quantize_s: seconds of pre-processing, calibration and quantization.
        options: the options used.
    """

    path: Path
    quantized: tuple[str, ...]
    fp32: dict[str, str]
    quantize_s: float
    options: Int8Options = field(default_factory=Int8Options)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export.json``."""
        reasons: dict[str, int] = {}
        for why in self.fp32.values():
            reasons[why] = reasons.get(why, 0) + 1
        return {
            "file": self.path.name,
            "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
            "weights": "int8, per channel, symmetric",
            "activations": "uint8, per tensor",
            "calibration": self.options.method.value,
            "percentile": (
                self.options.percentile if self.options.method is CalibMethod.PERCENTILE else None
            ),
            "int8_nodes": len(self.quantized),
            "fp32_nodes": reasons,
            "fp32_ops": ["LayerNormalization", "Softmax", "Conv (patch embedding)"],
            "quantize_s": round(self.quantize_s, 3),
        }


def require_ort_quantization() -> str:
    """ONNX Runtime's version, or ``QuantizationUnavailable`` when it is too old for INT8.

    Raises:
        QuantizationUnavailable: onnxruntime is missing, older than ``MIN_ORT``, or has no
            ``onnxruntime.quantization``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise QuantizationUnavailable("--int8 needs onnxruntime: pip install onnxruntime") from None
    version = str(ort.__version__)
    if _version_tuple(version) < MIN_ORT:
        raise QuantizationUnavailable(
            f"--int8 needs onnxruntime >= {'.'.join(map(str, MIN_ORT))} for its static "
            f"quantization; this is {version} (pip install -U onnxruntime)"
        )
    try:
        from onnxruntime.quantization import quantize_static  # noqa: F401
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: F401
    except ImportError as exc:
        raise QuantizationUnavailable(
            f"onnxruntime {version} has no usable quantization tools ({exc})"
        ) from None
    return version


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def quantize_int8(
    onnx_path: Path, out_path: Path, calib: Tensor, options: Int8Options | None = None
) -> Int8Graph:
    """Write the INT8 QDQ graph of ``onnx_path`` (FP32, from ``export_onnx``) to ``out_path``.

    Args:
        onnx_path: the FP32 graph (input ``images``).
        out_path: where the INT8 graph goes (one self-contained file).
        calib: (N, C, H, W) calibration images, preprocessed as the model expects.
        options: calibration method and what stays FP32.

    Raises:
        QuantizationUnavailable: ONNX Runtime is too old.
        ExportError: the quantizer failed.
    """
    require_ort_quantization()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or Int8Options()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uvc-int8-") as work:
        pre = Path(work) / "pre.onnx"
        fp32 = {}
        try:
            with _quiet_quantizer():
                quant_pre_process(str(onnx_path), str(pre))
                fp32 = fp32_nodes(pre, options)
                quantize_static(
                    str(pre),
                    str(Path(work) / "int8.onnx"),
                    CalibrationReader(calib),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=sorted(fp32),
                    per_channel=True,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=_ort_method(options.method),
                    extra_options=_extra_options(options),
                )
        except Exception as exc:  # the quantizer raises many unrelated types
            raise ExportError(f"ONNX Runtime's quantization failed: {_first_line(exc)}") from exc
        shutil.move(str(Path(work) / "int8.onnx"), str(out_path))
    quantized = _quantized_nodes(out_path)
    took = time.perf_counter() - start
    log.info("INT8 graph %s: %d nodes in INT8 (%.1f s)", out_path.name, len(quantized), took)
    return Int8Graph(Path(out_path), quantized, fp32, took, options)


def fp32_nodes(path: Path, options: Int8Options | None = None) -> dict[str, str]:
    """Node name -> why it stays FP32, for the MatMul/Gemm nodes of ``path`` left unquantized.

    Activation x activation MatMuls (q.k^T, attn.v) have no weight; the head is the last
    MatMul/Gemm before ``logits`` (kept unless ``options.quantize_head``).
    """
    import onnx

    options = options or Int8Options()
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    out: dict[str, str] = {}
    linear = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    for n in linear:
        if not any(i in weights for i in n.input[:2]):
            out[n.name] = "attention product (activation x activation)"
    weighted = [n for n in linear if n.name not in out]
    if weighted and not options.quantize_head:
        out[weighted[-1].name] = "classifier head"
    return out


def _quantized_nodes(path: Path) -> tuple[str, ...]:
    """MatMul/Gemm nodes of a QDQ graph whose weight comes through a DequantizeLinear."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return tuple(
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm") and all(i in dq_out for i in n.input[:2])
    )


def _ort_method(method: CalibMethod) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        CalibMethod.PERCENTILE: CalibrationMethod.Percentile,
        CalibMethod.MINMAX: CalibrationMethod.MinMax,
    }[method]


def _extra_options(options: Int8Options) -> dict[str, Any]:
    extra: dict[str, Any] = {
        # Q -> MatMul -> float fuses into MatMulIntegerToFloat; re-quantizing every MatMul output
        # (QLinearMatMul + DequantizeLinear) was slower (see the module docstring).
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        # One scale per output channel of a (K, N) MatMul weight.
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    if options.method is CalibMethod.PERCENTILE:
        extra["CalibPercentile"] = options.percentile
    return extra


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a tensor of images."""

    def __init__(self, images: Tensor, batch: int = CALIB_BATCH) -> None:
        arr = images.detach().float().cpu().numpy()
        self._batches = [arr[i : i + batch] for i in range(0, len(arr), batch)]
        self._it: Iterator[Any] = iter(self._batches)

    def get_next(self) -> dict[str, Any] | None:
        """The next batch as ``{"images": array}``, None when done."""
        batch = next(self._it, None)
        return None if batch is None else {"images": batch}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = iter(self._batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer prints progress to stdout and warns at the root logger: keep both out of the
    user's output (debug log instead)."""
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        root.setLevel(level)
        if buffer.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", buffer.getvalue().strip())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
