"""The quantization step of ``uvc export``: calibrate, quantize, and hold each artifact to an
accuracy bound on held-out images.

``QuantConfig`` says what to build: the ONNX Runtime INT8 graph (``model.int8.onnx``,
``uvc.export.quantize``) and/or ModelOpt's QDQ graphs for TensorRT (``model.trt.int8.onnx``,
``model.trt.fp8.onnx``, ``uvc.export.trt_quant``), and with ``--trt`` their engines.
``quant_preflight`` refuses, before any work, what cannot be built here (an ONNX Runtime too old,
no ModelOpt, no FP8 GPU); ``uvc.export.calibration.plan_calibration`` refuses bad calibration data.
``write_quantized`` then writes every artifact into the export's staging folder and checks each
against the FP32 PyTorch model on the held-out images: top-1 agreement and top-1 accuracy drop;
a drop beyond ``max_drop`` points raises ``AccuracyDropError`` (exit 1) and nothing is moved into
place.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from uvc.export.calibration import CalibrationPlan, load_calibration
from uvc.export.quantize import INT8_ONNX, Int8Options, quantize_int8, require_ort_quantization
from uvc.export.trt_quant import TrtQuantMode
from uvc.export.validate import AccuracyCheck, accuracy_check

if TYPE_CHECKING:
    from uvc.export.tensorrt import TrtBuildConfig

log = logging.getLogger(__name__)

DEFAULT_CALIB_IMAGES = 256
DEFAULT_MAX_DROP = 1.0  # top-1 points
EVAL_BATCH = 64


@dataclass(frozen=True)
class QuantConfig:
    """What the quantization step of an export builds and how it is checked.

    Args:
        int8: write ``model.int8.onnx`` (ONNX Runtime's static INT8, for CPUs).
        trt_modes: ModelOpt QDQ graphs for TensorRT to write (``int8``, ``fp8``); with ``--trt``
            each also becomes an engine.
        calib_images: calibration images (N).
        val_images: held-out images for the accuracy check (None: all, at most 1000).
        max_drop: the largest top-1 drop (points) an artifact may show on the held-out images.
        options: calibration method and what stays FP32 in ``model.int8.onnx``.
        seed: seeds the choice of images.
    """

    int8: bool = True
    trt_modes: tuple[TrtQuantMode, ...] = ()
    calib_images: int = DEFAULT_CALIB_IMAGES
    val_images: int | None = None
    max_drop: float = DEFAULT_MAX_DROP
    options: Int8Options = field(default_factory=Int8Options)
    seed: int = 0

    def __post_init__(self) -> None:
        modes = tuple(dict.fromkeys(TrtQuantMode(m) for m in self.trt_modes))
        object.__setattr__(self, "trt_modes", modes)
        if not self.int8 and not modes:
            raise ValueError("nothing to quantize: ask for --int8 and/or --trt-quant")
        if self.calib_images < 1:
            raise ValueError(f"--calib-images must be at least 1, got {self.calib_images}")
        if not self.max_drop >= 0:
            raise ValueError(f"--max-int8-drop must be >= 0 points, got {self.max_drop}")


def quant_preflight(cfg: QuantConfig, trt: bool) -> None:
    """Refuse, before any work, a quantization this machine cannot do.

    Raises:
        BackendUnavailable: ONNX Runtime too old (``QuantizationUnavailable``), ModelOpt
            missing for ``trt_modes``, or an FP8 engine asked on a GPU without FP8.
    """
    require_ort_quantization()  # ModelOpt calibrates with ONNX Runtime too
    if cfg.trt_modes:
        from uvc.export.trt_quant import require_fp8_gpu, require_modelopt

        require_modelopt()
        if trt and TrtQuantMode.FP8 in cfg.trt_modes:
            require_fp8_gpu()


def calibration_plan(cfg: QuantConfig, calib_data: Any, model: torch.nn.Module) -> CalibrationPlan:
    """The calibration / held-out split of ``calib_data`` for ``model`` (checked, nothing read).

    Raises:
        DataError: wrong classes, too few images, a missing folder.
    """
    from uvc.export.calibration import plan_calibration

    return plan_calibration(
        calib_data, model.spec.num_classes, cfg.calib_images, cfg.val_images, cfg.seed
    )


def write_quantized(
    cfg: QuantConfig,
    model: torch.nn.Module,
    plan: CalibrationPlan,
    onnx_path: Path,
    tmp: Path,
    summary: dict[str, Any],
    engine_config: TrtBuildConfig | None = None,
) -> None:
    """Write the quantized artifacts of ``onnx_path`` into ``tmp``, each checked for accuracy.

    Args:
        cfg: what to build.
        model: the FP32 PyTorch model (the reference).
        plan: the calibration and held-out images (``plan_calibration``).
        onnx_path: the validated FP32 graph.
        tmp: the staging folder.
        summary: ``export.json``; gets ``quantization`` and ``validation.<artifact>`` entries.
        engine_config: a ``TrtBuildConfig`` to build an engine of each ModelOpt graph (None: no
            engines).

    Raises:
        AccuracyDropError: an artifact loses more than ``cfg.max_drop`` points.
    """
    spec = model.spec
    images = load_calibration(plan, spec.img_size, spec.in_chans, spec.preprocess, cfg.seed)
    ref = _torch_logits(model, images.held_out)
    section: dict[str, Any] = {"data": plan.describe(), "max_drop": cfg.max_drop}
    summary["quantization"] = section
    check = _checker(ref, images.labels, cfg.max_drop, summary)
    if cfg.int8:
        graph = quantize_int8(onnx_path, tmp / INT8_ONNX, images.calib, cfg.options)
        section["int8"] = graph.to_dict()
        summary["artifacts"]["onnx_int8"] = INT8_ONNX
        check(INT8_ONNX, "onnxruntime-cpu", onnx_logits(graph.path, images.held_out))
    for mode in cfg.trt_modes:
        from uvc.export.trt_quant import quantize_for_tensorrt

        qdq = quantize_for_tensorrt(onnx_path, tmp / mode.onnx_name, images.calib, mode)
        section[f"trt_{mode.value}"] = qdq.to_dict()
        summary["artifacts"][f"onnx_trt_{mode.value}"] = mode.onnx_name
        check(mode.onnx_name, "onnxruntime-cpu", onnx_logits(qdq.path, images.held_out))
        if engine_config is not None:
            logits = _build_engine(qdq.path, tmp / mode.engine_name, mode, engine_config, summary)
            check(mode.engine_name, "tensorrt", logits(images.held_out))


def _checker(
    ref: Tensor, labels: Tensor, max_drop: float, summary: dict[str, Any]
) -> Callable[[str, str, Tensor], AccuracyCheck]:
    """``check(name, runtime, logits)``: the accuracy check of one artifact, into ``summary``."""

    def check(name: str, runtime: str, logits: Tensor) -> AccuracyCheck:
        result = accuracy_check(ref, logits, labels, name=name, runtime=runtime, max_drop=max_drop)
        summary["validation"][name.replace("model.", "").replace(".", "_")] = result.to_dict()
        log.info(
            "%s: top-1 %.2f%% (FP32 %.2f%%, drop %.2f points), agreement %.2f%% on %d "
            "held-out images",
            name, result.top1, result.top1_fp32, result.drop, result.agreement, result.images,
        )  # fmt: skip
        return result

    return check


def _build_engine(
    qdq: Path, engine: Path, mode: TrtQuantMode, base: TrtBuildConfig, summary: dict[str, Any]
) -> Callable[[Tensor], Tensor]:
    """Build the engine of one ModelOpt graph; returns a function running it on images."""
    import dataclasses

    from uvc.export.tensorrt import TrtRunner, build_engine, require_cuda

    trt_cfg = dataclasses.replace(base, fp16=False, tf32=False, quantized=mode.value)
    built = build_engine(qdq, engine, trt_cfg)
    summary.setdefault("tensorrt_quantized", {})[mode.value] = built.to_dict()
    summary["artifacts"][f"engine_{mode.value}"] = engine.name

    def run(images: Tensor) -> Tensor:
        device = require_cuda()
        out = []
        with TrtRunner(engine) as runner:
            step = max(1, min(EVAL_BATCH, runner.max_batch))
            for i in range(0, len(images), step):
                x = images[i : i + step]
                if len(x) < runner.min_batch:  # a ragged last batch below the profile
                    pad = x[-1:].expand(runner.min_batch - len(x), *x.shape[1:])
                    got = runner.infer(torch.cat([x, pad]).to(device))[: len(x)]
                else:
                    got = runner.infer(x.to(device))
                out.append(got.cpu())
        return torch.cat(out)

    return run


def _torch_logits(model: torch.nn.Module, images: Tensor) -> Tensor:
    """The FP32 PyTorch model's logits on ``images`` (CPU, eval mode, in batches)."""
    ref_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        batches = [ref_model(images[i : i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)]
    return torch.cat(batches)


def onnx_logits(path: Path, images: Tensor, threads: int | None = None) -> Tensor:
    """An ONNX graph's logits on ``images``, run by ONNX Runtime on the CPU in batches."""
    import numpy as np
    from uvc.export.onnx import INPUT_NAME, OUTPUT_NAME, ort_session

    sess = ort_session(path, threads)
    out = []
    for i in range(0, len(images), EVAL_BATCH):
        x = images[i : i + EVAL_BATCH].detach().float().cpu().numpy()
        (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        out.append(torch.from_numpy(np.asarray(y, dtype=np.float32)))
    return torch.cat(out)


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_model`` wrote and measured.

    Args:
        path: the INT8 graph.
        accuracy: its check against the FP32 model on the held-out images.
        details: the ``quantization`` section an export would write (data split, what stays FP32,
            calibration method, timings).
    """

    path: Path
    accuracy: AccuracyCheck
    details: dict[str, Any]


def quantize_model(
    model: torch.nn.Module,
    path: Path,
    calib_data: str | Path,
    cfg: QuantConfig | None = None,
    opset: int = 17,
) -> QuantizeResult:
    """Write ``model``'s ONNX Runtime INT8 graph to ``path``, checked on held-out images.

    Everything is built in a temporary folder beside ``path``; ``path`` is written only when the
    accuracy check passed.

    Raises:
        DataError: bad calibration data (checked first); QuantizationUnavailable: ONNX Runtime
            too old; AccuracyDropError: the drop exceeds ``cfg.max_drop``.
    """
    import os
    import tempfile

    from uvc.export.onnx import check_onnx, export_onnx

    cfg = cfg or QuantConfig()
    if cfg.trt_modes or not cfg.int8:
        raise ValueError("quantize_model writes the ONNX Runtime INT8 graph only (int8=True)")
    quant_preflight(cfg, trt=False)
    plan = calibration_plan(cfg, calib_data, model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.tmp-", dir=path.parent) as work:
        tmp = Path(work)
        onnx_path = export_onnx(model, tmp / "model.onnx", opset=opset)
        check_onnx(onnx_path, opset)
        summary: dict[str, Any] = {"artifacts": {}, "validation": {}}
        write_quantized(cfg, model, plan, onnx_path, tmp, summary)
        os.replace(tmp / INT8_ONNX, path)
    check = summary["validation"]["int8_onnx"]
    accuracy = AccuracyCheck(**{**check, "drop_ci": tuple(check["drop_ci"])})
    return QuantizeResult(path, accuracy, summary["quantization"])
