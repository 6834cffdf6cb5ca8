"""The package face's small tools: load, save, cost, export_onnx, quantize, benchmark.

Thin, typed wrappers over the library (``uvc.files.source``, ``uvc.files.checkpoint``,
``uvc.arch.cost``,
``uvc.export``, ``uvc.bench``), re-exported lazily by ``uvc/__init__.py``. Like ``uvc.api`` this
sits above the core: it may import ``uvc.export`` and ``uvc.bench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from uvc.api import as_vit
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError


def load(target: str | Path, weights: str | Path | None = None) -> ViT:
    """A ``uvc`` ViT from a checkpoint, an export folder, a spec JSON or a timm name.

    Args:
        target: ``final.pt`` / ``model.pt`` / ``uvc convert`` output, an export folder, a spec
            JSON (random weights) or a timm model name (timm's initialisation; never downloaded).
        weights: a local weights file for ``target`` (timm/DeiT/uvc formats).
    """
    from uvc.files.source import load_model

    return load_model(target, weights)


def save(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a ``uvc`` ViT, or one ``as_vit`` converts) as a uvc checkpoint, atomically.

    The spec travels inside, so ``uvc.load``, ``uvc export`` and ``uvc bench`` need nothing else.
    """
    from uvc.files.checkpoint import Checkpoint, save_checkpoint

    vit = as_vit(model)
    return save_checkpoint(path, Checkpoint(vit.spec, vit.state_dict(), dict(meta or {})))


def cost(target: nn.Module | ViTSpec | str | Path) -> Any:
    """MACs and parameters (``uvc.arch.cost.ModelCost``: ``.macs``, ``.params``, per block) of a
    model, a spec, or anything ``uvc.load`` takes (only its spec is read)."""
    from uvc.arch.cost import model_cost

    if isinstance(target, ViTSpec):
        return model_cost(target)
    if isinstance(target, nn.Module):
        spec = getattr(target, "spec", None)
        if not isinstance(spec, ViTSpec):
            from uvc.adapters import from_module

            spec = from_module(target).spec
        return model_cost(spec)
    from uvc.files.source import resolve_spec

    return model_cost(resolve_spec(target))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = 17,
    atol: float = 1e-4,
    validate: bool = True,
) -> Path:
    """Export ``model`` to one ONNX file with a dynamic batch axis, checked by ``onnx.checker``
    and (``validate``) compared with PyTorch in ONNX Runtime on batches 1 and 2.

    Raises:
        ValidationError: the outputs differ by more than ``atol``.
    """
    from uvc.errors import ValidationError
    from uvc.export.onnx import check_onnx, validate_onnx
    from uvc.export.onnx import export_onnx as _export

    vit = as_vit(model).eval()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _export(vit, out, opset=opset)
    check_onnx(out, opset)
    if validate:
        s = vit.spec
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(b, s.in_chans, s.img_size, s.img_size, generator=gen) for b in (1, 2)]
        report = validate_onnx(vit, out, inputs)
        if report.max_abs > atol:
            raise ValidationError(
                f"{out}: ONNX Runtime differs from PyTorch by {report.max_abs:.2e} > {atol}"
            )
    return out


def quantize(
    model: nn.Module,
    path: str | Path,
    calib_data: str | Path,
    *,
    calib_images: int = 256,
    val_images: int | None = None,
    method: str = "percentile",
    max_drop: float = 1.0,
    quantize_head: bool = False,
) -> Any:
    """Write ``model``'s INT8 graph for ONNX Runtime on CPUs (``uvc export --int8``) to ``path``.

    ONNX Runtime's static quantization (QDQ, per-channel INT8 weights, UINT8 activations),
    calibrated on ``calib_images`` images of ``calib_data`` with the model's own preprocessing,
    then checked against the FP32 model on held-out images of the same source.

    Args:
        model: a ``uvc`` ViT (or one ``as_vit`` converts).
        path: the ``.onnx`` file to write (only once the check passed).
        calib_data: an ImageFolder folder (``train/`` calibrates, ``val/``|``test/`` is held
            out; a single tree is split) or ``"digits"``; its classes must be the model's.
        calib_images: calibration images.
        val_images: held-out images compared (None: all, at most 1000; at least 100).
        method: ``percentile`` (99.999 % of |x|) or ``minmax``.
        max_drop: the largest top-1 drop (points) allowed on the held-out images.
        quantize_head: also quantize the classifier head (kept FP32 by default).

    Returns:
        ``uvc.export.quant_export.QuantizeResult``: ``.path``, ``.accuracy`` (top-1 FP32 and
        INT8, agreement, drop with its 95% interval), ``.details``.

    Raises:
        DataError: bad calibration data; QuantizationUnavailable: ONNX Runtime too old;
        AccuracyDropError: the drop exceeds ``max_drop`` (nothing written).
    """
    from uvc.export.quant_export import QuantConfig, quantize_model
    from uvc.export.quantize import Int8Options

    try:
        cfg = QuantConfig(
            calib_images=calib_images,
            val_images=val_images,
            max_drop=max_drop,
            options=Int8Options(method=method, quantize_head=quantize_head),
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None
    return quantize_model(as_vit(model).eval(), Path(path), calib_data, cfg)


def benchmark(
    models: dict[str, nn.Module | str | Path],
    *,
    baseline: str | None = None,
    backends: tuple[str, ...] = ("eager", "ort"),
    batch_sizes: tuple[int, ...] = (1, 8),
    device: str = "cpu",
    threads: int | None = None,
    rounds: int = 5,
) -> Any:
    """Time ``models`` (label -> model or ``uvc bench`` target) against ``baseline`` (default:
    the first), round-robin, per backend and batch; returns ``uvc.bench.report.BenchResult``
    (``.rows`` with latency, speedup and efficiency; ``.to_dict()`` for JSON)."""
    from uvc.bench.harness import BenchConfig, BenchModel, load_target, run_benchmark
    from uvc.bench.timer import TimingConfig

    loaded = []
    for label, m in models.items():
        if isinstance(m, nn.Module):
            loaded.append(BenchModel(label, as_vit(m).eval()))
        else:
            bm = load_target(m)
            bm.label = label
            loaded.append(bm)
    try:
        config = BenchConfig(
            backends=tuple(backends),  # type: ignore[arg-type]
            batch_sizes=tuple(batch_sizes),
            device=device,
            threads=threads or torch.get_num_threads(),
            timing=TimingConfig(rounds=rounds),
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None
    return run_benchmark(loaded, config, baseline)
