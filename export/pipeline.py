"""``uvc export``: a model -> a validated deployment folder (checkpoint, spec, ONNX, engine).

Every artifact is written into a temporary folder beside the output folder and moved into place
only once everything exported and validated, so a failure (bad input, tolerance exceeded, a
crash) never leaves a half-written or valid-looking folder behind.

Output folder:
    model.pt          dense uvc checkpoint (spec inside), the exact weights that were exported
    spec.json         the architecture
    model.onnx        FP32 graph (one self-contained file under 1.8 GB, else + model.onnx.data)
    model.fp16.onnx   FP16 graph (LayerNorm/Softmax/reductions in FP32), with --fp16
    model.opt.onnx    FP32 graph with ONNX Runtime's CPU fusions, with --optimize cpu
    model.engine      TensorRT engine (FP16 with --fp16), with --trt
    model.int8.onnx   INT8 QDQ graph for ONNX Runtime on CPUs, with --int8 (uvc.export.quant_export)
    model.trt.int8.onnx / model.trt.fp8.onnx (+ model.int8.engine / model.fp8.engine with --trt)
                      ModelOpt QDQ graphs for TensorRT, with --trt-quant int8|fp8
    export.json       what was exported, library versions, validation figures, build times
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from uvc.export.artifacts import (
    check_out,
    library_versions,
    make_staging,
    move_into_place,
    usual_permissions,
    write_json,
)
from uvc.export.calibration import CalibrationPlan

# Loading the model to export lives in ``loading``; re-exported here.
from uvc.export.loading import _keep_of, _read_torch_file, load_export_model  # noqa: F401
from uvc.export.onnx import MIN_OPSET, Exporter, simplify_onnx
from uvc.export.optimize import OptimizeTarget
from uvc.export.quant_export import QuantConfig, calibration_plan, quant_preflight
from uvc.export.tensorrt import TrtBuildConfig
from uvc.export.validate import require_cosine

from uvc.errors import ExportError

log = logging.getLogger(__name__)


class ExportConfigError(ExportError, ValueError):
    """Contradictory or out-of-range export options (a ValueError the CLI reports as exit 2)."""


ONNX_BATCHES = (1, 8)  # two sizes prove the dynamic batch axis on CPU
DEFAULT_FP16_MIN_COSINE = 0.99


@dataclass(frozen=True)
class ExportConfig:
    """What ``export_model`` does.

    Args:
        model: a dense uvc checkpoint, a search checkpoint (``extra["keep"]``: one
            ``BlockKeep.to_dict()`` per block; materialized first), a spec JSON or a timm name.
        out: the output folder (absent, empty, or a previous uvc export, which is replaced).
        weights: a local weights file for a spec JSON / timm name (or to override a checkpoint's).
        onnx: write and validate the FP32 ONNX graph (needed by --fp16 and --trt).
        trt: build and validate a TensorRT engine.
        fp16: also write the FP16 graph; with ``trt`` the engine is FP16.
        opset: ONNX opset (>= 17).
        min_batch, opt_batch, max_batch: the engine's batch profile (opt None: 8 clamped into
            [min, max]).
        simplify: run onnxslim on the FP32 graph before validating it.
        atol: max |logit difference| allowed for FP32 ONNX and FP32 engines.
        fp16_min_cosine: smallest per-sample cosine similarity allowed for FP16 artifacts.
        calib_data: validation images: an ImageFolder folder, "digits", or None (random).
        val_batches: batch sizes the ONNX graphs are validated on (at least two, to prove the
            dynamic batch axis); with ``calib_data``, ``sum(val_batches)`` distinct images.
        exporter: torch.onnx exporter (dynamo or torchscript).
        workspace_mib: TensorRT builder workspace limit.
        tf32: allow TF32 in FP32 engines.
        timing_cache: TensorRT timing cache file reused across builds.
        optimize: also write ``model.opt.onnx``, optimized for this target (``cpu``: ONNX
            Runtime's transformer fusions), checked and validated within ``atol``.
        skip_layer_norm: with ``optimize``, also fuse SkipLayerNormalization.
        quant: quantized artifacts (INT8 for ONNX Runtime, ModelOpt INT8/FP8 for TensorRT),
            calibrated on and checked against ``calib_data`` (required then).
        merge: token merging (ToMe) before export, "8" or "8,8,4,0" (``load_export_model``).
    """

    model: str
    out: Path
    weights: Path | None = None
    onnx: bool = True
    trt: bool = False
    fp16: bool = False
    opset: int = MIN_OPSET
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 32
    simplify: bool = False
    atol: float = 1e-4
    fp16_min_cosine: float = DEFAULT_FP16_MIN_COSINE
    calib_data: str | None = None
    val_batches: tuple[int, ...] = ONNX_BATCHES
    exporter: Exporter = Exporter.DYNAMO
    workspace_mib: int = 4096
    tf32: bool = False
    timing_cache: Path | None = None
    optimize: OptimizeTarget = OptimizeTarget.NONE
    skip_layer_norm: bool = False
    quant: QuantConfig | None = None
    merge: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "exporter", Exporter(self.exporter))
        object.__setattr__(self, "optimize", OptimizeTarget(self.optimize))
        if self.opset < MIN_OPSET:
            raise ExportConfigError(
                f"--opset {self.opset} is too old: LayerNormalization needs opset {MIN_OPSET}+"
            )
        if self.min_batch < 1 or self.max_batch < self.min_batch:
            raise ExportConfigError(
                f"batch range must satisfy 1 <= --min-batch <= --max-batch, got "
                f"{self.min_batch}..{self.max_batch}"
            )
        if self.opt_batch is None:
            object.__setattr__(self, "opt_batch", min(max(8, self.min_batch), self.max_batch))
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ExportConfigError(
                f"--opt-batch {self.opt_batch} is outside [{self.min_batch}, {self.max_batch}]"
            )
        object.__setattr__(self, "val_batches", tuple(int(b) for b in self.val_batches))
        if len(set(self.val_batches)) < 2 or min(self.val_batches) < 1:
            raise ExportConfigError(
                f"--val-batches needs at least two different sizes >= 1, got {self.val_batches}"
            )
        if not self.atol > 0:
            raise ExportConfigError(f"--atol must be positive, got {self.atol}")
        if (self.trt or self.fp16) and not self.onnx:
            raise ExportConfigError(
                "--trt and --fp16 are built from the ONNX graph: drop --no-onnx"
            )
        if self.optimize is not OptimizeTarget.NONE and not self.onnx:
            raise ExportConfigError("--optimize writes an ONNX graph: drop --no-onnx")
        if self.skip_layer_norm and self.optimize is OptimizeTarget.NONE:
            raise ExportConfigError("--skip-layer-norm is a fusion of --optimize cpu")
        if self.quant is not None and (self.calib_data is None or not self.onnx):
            raise ExportConfigError(
                "--int8/--trt-quant calibrate on real images: give --calib-data (and keep ONNX)"
            )
        if not 0 < self.fp16_min_cosine <= 1:
            raise ExportConfigError(
                f"fp16_min_cosine must be in (0, 1], got {self.fp16_min_cosine}"
            )


@dataclass(frozen=True)
class ExportResult:
    """Where the artifacts went and what ``export.json`` says."""

    out: Path
    files: tuple[str, ...]
    summary: dict[str, Any]


def export_model(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.model`` into ``cfg.out``: checkpoint, spec, ONNX (FP32/FP16), TensorRT engine.

    Raises:
        UvcError subclasses: bad input (``CheckpointError``, ``WeightsError``, ``SpecError``),
            an unusable output folder (``ExportError``), a missing backend
            (``BackendUnavailable``), or outputs beyond tolerance (``ValidationError``); in every
            case ``cfg.out`` is left as it was.
    """
    if cfg.trt:
        from uvc.export.tensorrt import require_cuda, require_tensorrt

        # Fail before any work when the engine cannot be built here.
        require_tensorrt()
        require_cuda()
    if cfg.quant is not None:
        quant_preflight(cfg.quant, trt=cfg.trt)
    check_out(cfg.out)
    model, source = load_export_model(cfg.model, cfg.weights, cfg.merge)
    # Bad calibration data (classes, too few images) is refused before any work.
    plan = None if cfg.quant is None else calibration_plan(cfg.quant, cfg.calib_data, model)
    tmp = make_staging(cfg.out)
    try:
        summary = _export_into(cfg, model, source, tmp, plan)
        write_json(tmp / "export.json", summary)
        usual_permissions(tmp)
        files = tuple(sorted(p.name for p in tmp.iterdir() if not p.name.startswith(".")))
        move_into_place(tmp, cfg.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s -> %s (%s)", cfg.model, cfg.out, ", ".join(files))
    return ExportResult(cfg.out, files, summary)


def _export_into(
    cfg: ExportConfig,
    model: torch.nn.Module,
    source: str,
    tmp: Path,
    plan: CalibrationPlan | None = None,
) -> dict[str, Any]:
    """Write every artifact ``cfg`` asks for into ``tmp``, in order; returns ``export.json``."""
    from uvc.export.validate import validation_inputs

    summary = _summary_head(cfg, model, source)
    _write_checkpoint(cfg, model, tmp, summary)
    if not cfg.onnx:
        return summary

    spec = model.spec
    shape = (spec.in_chans, spec.img_size, spec.img_size)
    inputs, where = validation_inputs(
        shape, cfg.val_batches, cfg.calib_data, preprocess=spec.preprocess
    )
    summary["validation_inputs"] = where
    onnx_path = _write_onnx(cfg, model, tmp, inputs, summary)
    if cfg.optimize is OptimizeTarget.CPU:
        _write_opt_onnx(cfg, model, tmp, inputs, summary)
    fp16_path = None
    if cfg.fp16:
        fp16_path = _write_fp16_onnx(cfg, model, onnx_path, tmp, inputs, summary)
    if cfg.trt:
        _write_engine(cfg, model, onnx_path, fp16_path, tmp, summary)
    if cfg.quant is not None:
        from uvc.export.quant_export import write_quantized

        engines = _trt_config(cfg) if cfg.trt else None
        write_quantized(cfg.quant, model, plan, onnx_path, tmp, summary, engines)
    return summary


def _summary_head(cfg: ExportConfig, model: torch.nn.Module, source: str) -> dict[str, Any]:
    """``export.json`` before any artifact: what is exported, its cost, I/O and versions."""
    from uvc.arch.cost import macs, params

    spec = model.spec
    shape = (spec.in_chans, spec.img_size, spec.img_size)
    return {
        "model": str(cfg.model),
        "source": source,
        "weights": str(cfg.weights) if cfg.weights else None,
        "macs": macs(spec),
        "params": params(spec),
        "input": {"name": "images", "shape": ["batch", *shape], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", spec.num_classes]},
        "batch_range": [cfg.min_batch, cfg.opt_batch, cfg.max_batch],
        "atol": cfg.atol,
        "versions": library_versions(),
        "artifacts": {},
        "validation": {},
    }


def _write_checkpoint(
    cfg: ExportConfig, model: torch.nn.Module, tmp: Path, summary: dict[str, Any]
) -> None:
    """``model.pt`` (the dense weights exported) and ``spec.json``."""
    from uvc.files.checkpoint import Checkpoint, save_checkpoint

    spec = model.spec
    save_checkpoint(
        tmp / "model.pt",
        Checkpoint(spec, model.state_dict(), meta={"kind": "dense", "exported_from": cfg.model}),
    )
    spec.save(tmp / "spec.json")
    summary["artifacts"]["checkpoint"] = "model.pt"
    summary["artifacts"]["spec"] = "spec.json"


def _write_onnx(
    cfg: ExportConfig,
    model: torch.nn.Module,
    tmp: Path,
    inputs: list[torch.Tensor],
    summary: dict[str, Any],
) -> Path:
    """``model.onnx``: exported, optionally simplified, checked and validated against PyTorch."""
    from uvc.export.onnx import check_onnx, export_onnx, validate_onnx

    onnx_path = tmp / "model.onnx"
    start = time.perf_counter()
    export_onnx(model, onnx_path, opset=cfg.opset, exporter=cfg.exporter)
    if cfg.simplify:
        simplify_onnx(onnx_path)
    check_onnx(onnx_path, cfg.opset)
    summary["onnx"] = {
        "file": "model.onnx",
        "exporter": cfg.exporter.value,
        "opset": cfg.opset,
        "simplified": cfg.simplify,
        "external_data": (tmp / "model.onnx.data").exists(),
        "export_s": round(time.perf_counter() - start, 3),
    }
    summary["artifacts"]["onnx"] = "model.onnx"
    report = validate_onnx(model, onnx_path, inputs, atol=cfg.atol, name="model.onnx")
    summary["validation"]["onnx"] = report.to_dict()
    return onnx_path


def _write_opt_onnx(
    cfg: ExportConfig,
    model: torch.nn.Module,
    tmp: Path,
    inputs: list[torch.Tensor],
    summary: dict[str, Any],
) -> None:
    """``model.opt.onnx`` (``--optimize cpu``): ONNX Runtime's CPU fusions, validated."""
    from uvc.export.onnx import validate_onnx
    from uvc.export.optimize import OPT_ONNX, OptimizeOptions, optimize_for_cpu

    opts = OptimizeOptions(skip_layer_norm=cfg.skip_layer_norm)
    opt = optimize_for_cpu(
        model, tmp / OPT_ONNX, options=opts, opset=cfg.opset, exporter=cfg.exporter
    )
    summary["optimize"] = opt.to_dict()
    summary["artifacts"]["onnx_opt"] = OPT_ONNX
    report = validate_onnx(model, opt.path, inputs, atol=cfg.atol, name=OPT_ONNX)
    summary["validation"]["onnx_opt"] = report.to_dict()


def _write_fp16_onnx(
    cfg: ExportConfig,
    model: torch.nn.Module,
    onnx_path: Path,
    tmp: Path,
    inputs: list[torch.Tensor],
    summary: dict[str, Any],
) -> Path:
    """``model.fp16.onnx`` (``--fp16``): converted, checked, held to the cosine bound."""
    from uvc.export.fp16 import KEEP_FP32_OPS, convert_to_fp16
    from uvc.export.onnx import check_onnx, validate_onnx

    fp16_path = convert_to_fp16(onnx_path, tmp / "model.fp16.onnx")
    check_onnx(fp16_path, cfg.opset)
    summary["artifacts"]["onnx_fp16"] = "model.fp16.onnx"
    summary["fp16"] = {"fp32_ops": sorted(KEEP_FP32_OPS)}
    report = validate_onnx(model, fp16_path, inputs, name="model.fp16.onnx")
    require_cosine(report, cfg.fp16_min_cosine)
    summary["validation"]["onnx_fp16"] = report.to_dict()
    return fp16_path


def _write_engine(
    cfg: ExportConfig,
    model: torch.nn.Module,
    onnx_path: Path,
    fp16_path: Path | None,
    tmp: Path,
    summary: dict[str, Any],
) -> None:
    """``model.engine`` (``--trt``): built, then validated over the profile's batch sizes."""
    from uvc.export.tensorrt import build_engine, validate_engine
    from uvc.export.validate import validation_inputs

    built = build_engine(onnx_path, tmp / "model.engine", _trt_config(cfg), fp16_onnx=fp16_path)
    summary["tensorrt"] = built.to_dict()
    summary["artifacts"]["engine"] = "model.engine"
    spec = model.spec
    shape = (spec.in_chans, spec.img_size, spec.img_size)
    batches = tuple(sorted({cfg.min_batch, cfg.opt_batch, cfg.max_batch}))
    trt_inputs, _ = validation_inputs(
        shape, batches, cfg.calib_data, seed=1, preprocess=spec.preprocess
    )
    exact = not cfg.fp16 and not cfg.tf32
    report = validate_engine(
        model, tmp / "model.engine", trt_inputs, atol=cfg.atol if exact else None
    )
    if not exact:
        require_cosine(report, cfg.fp16_min_cosine)
    summary["validation"]["tensorrt"] = report.to_dict()


def _trt_config(cfg: ExportConfig) -> TrtBuildConfig:
    """The ``TrtBuildConfig`` of ``cfg``'s engine options."""
    from uvc.export.tensorrt import TrtBuildConfig

    return TrtBuildConfig(
        min_batch=cfg.min_batch,
        opt_batch=cfg.opt_batch,  # type: ignore[arg-type]  # set in __post_init__
        max_batch=cfg.max_batch,
        fp16=cfg.fp16,
        tf32=cfg.tf32,
        workspace_mib=cfg.workspace_mib,
        timing_cache=cfg.timing_cache,
    )
