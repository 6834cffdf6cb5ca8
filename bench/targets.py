"""What a benchmark runs: a loaded model and the exported files it came with.

``BenchModel`` pairs a model with its ONNX / FP16 ONNX / TensorRT files; ``load_target`` loads
what ``uvc bench`` is given (a timm name, spec JSON, checkpoint or export folder), and
``ensure_onnx`` / ``ensure_fp16_onnx`` export the graphs a backend needs when the target had none.
``uvc.bench.harness`` times these and re-exports them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from uvc.arch.model import ViT
from uvc.errors import BackendUnavailable, UvcError

INT8_ONNX = "model.int8.onnx"  # uvc.export.quantize writes it (bench must import without export)


@dataclass
class BenchModel:
    """A model to benchmark and the artifacts it came with.

    Args:
        label: name in reports.
        model: the PyTorch model (fp32, CPU).
        onnx / onnx_fp16 / engine: exported files, when the target was an export folder.
        load_s: seconds to load the model; export_s: seconds spent exporting ONNX here.
        onnx_opt: ``model.opt.onnx`` (``uvc export --optimize cpu``): ONNX Runtime on the CPU in
            FP32 runs it instead of ``onnx`` and its rows say ``ort+opt``.
        onnx_int8: ``model.int8.onnx`` (``uvc export --int8``): ONNX Runtime on the CPU runs it
            as extra rows, ``ort+int8``, paired against the baseline's FP32 rows.
    """

    label: str
    model: ViT
    onnx: Path | None = None
    onnx_fp16: Path | None = None
    engine: Path | None = None
    load_s: float = 0.0
    export_s: float | None = None
    onnx_opt: Path | None = None
    onnx_int8: Path | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image input shape."""
        s = self.model.spec
        return (s.in_chans, s.img_size, s.img_size)


def load_target(target: str | Path, weights: str | Path | None = None) -> BenchModel:
    """Load what ``uvc bench`` is given: a timm name, spec JSON, checkpoint or export folder."""
    from uvc.files.source import load_model

    t0 = time.perf_counter()
    path = Path(target)
    if path.is_dir():
        ckpt, spec = path / "model.pt", path / "spec.json"
        if ckpt.is_file() and weights is None:
            model = load_model(ckpt)
        elif spec.is_file():
            model = load_model(spec, weights if weights is not None else None)
        else:
            raise UvcError(f"{path} is a folder without model.pt or spec.json (not an export)")
        names = ("model.onnx", "model.fp16.onnx", "model.engine", "model.opt.onnx", INT8_ONNX)
        found = {n: path / n for n in names}
        found = {n: p if p.is_file() else None for n, p in found.items()}
        bm = BenchModel(
            str(target),
            model,
            found["model.onnx"],
            found["model.fp16.onnx"],
            found["model.engine"],
            onnx_opt=found["model.opt.onnx"],
            onnx_int8=found[INT8_ONNX],
        )
    else:
        bm = BenchModel(str(target), load_model(target, weights))
    bm.model.eval()
    bm.load_s = time.perf_counter() - t0
    return bm


def ensure_onnx(bm: BenchModel, workdir: Path) -> Path:
    """The model's ONNX file, exported with ``uvc.export.onnx.export_onnx`` when it has none."""
    if bm.onnx is not None:
        return bm.onnx
    try:
        from uvc.export.onnx import export_onnx
    except ImportError as exc:
        raise BackendUnavailable(f"ONNX export is unavailable: {exc}") from None
    t0 = time.perf_counter()
    out = workdir / f"{_safe(bm.label)}.onnx"
    # onnx_ir logs every graph rewrite at INFO; that would bury the benchmark's own output.
    ir_log = logging.getLogger("onnx_ir")
    level = ir_log.level
    ir_log.setLevel(max(level, logging.WARNING))
    try:
        bm.onnx = Path(export_onnx(bm.model, out))
    finally:
        ir_log.setLevel(level)
    bm.export_s = time.perf_counter() - t0
    return bm.onnx


def ensure_fp16_onnx(bm: BenchModel, workdir: Path) -> Path:
    """The model's FP16 ONNX graph, converted from its FP32 one when it has none."""
    if bm.onnx_fp16 is not None:
        return bm.onnx_fp16
    from uvc.export.fp16 import convert_to_fp16

    src = ensure_onnx(bm, workdir)
    bm.onnx_fp16 = Path(convert_to_fp16(src, workdir / f"{_safe(bm.label)}.fp16.onnx"))
    return bm.onnx_fp16


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
