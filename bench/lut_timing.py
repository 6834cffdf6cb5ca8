"""Timing modules for latency tables: runners per backend, graph export and engine builds.

``time_modules`` times a list of modules (sub-layers, whole ViTs) round-robin with the runner a
``LutConfig`` names: the PyTorch runners directly, ``ort`` and ``trt`` on each module exported to
its own ONNX graph (``export_module``; ``trt`` builds an engine per graph). ``CallOverhead`` is the
near-empty module whose latency is a call's own cost. ``uvc.bench.lut`` builds the tables from
these and re-exports them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from uvc.bench.ort_runner import OrtRunner
from uvc.bench.runners import Backend, Precision, Runner, TorchRunner, TrtEngineRunner
from uvc.bench.timer import Stopwatch, summarize, take_samples

from uvc.arch.model import ViT

if TYPE_CHECKING:
    from uvc.bench.lut_config import LutConfig

# The records keep the name the timing was logged under before it moved here.
log = logging.getLogger("uvc.bench.lut")


def time_modules(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], config: LutConfig
) -> list[float]:
    """Median milliseconds per call of each (module, per-sample input shape), interleaved.

    All modules are timed round-robin (``config.timing.rounds`` passes), so a burst of load from
    another process spreads over every grid point instead of corrupting one of them. With the
    ``ort`` backend each module is first exported to ONNX and run by ONNX Runtime.
    """
    rc = config.runner_config()
    watch = Stopwatch(rc.torch_device if rc.on_cuda and rc.backend is not Backend.ORT else "cpu")
    t = config.timing
    live: list[tuple[Runner, torch.Tensor, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="uvc-lut-") as tmp:
        runners = _runners(modules, config, Path(tmp))
        try:
            for r in runners:
                r.__enter__()
                r.prepare(config.batch)
                live.append((r, r.make_input(config.batch), []))
            for k in range(t.rounds):
                # A table can take minutes: say where it is (one line per round).
                log.info("timing round %d/%d over %d modules", k + 1, t.rounds, len(live))
                for r, x, samples in live:
                    samples += take_samples(lambda r=r, x=x: r.infer(x), t.reps, watch, t.warmup)
        finally:
            for r, *_ in live:
                r.__exit__(None, None, None)
    stats = [summarize(samples, config.batch, "lut") for _, _, samples in live]
    return [s.min_ms if config.statistic == "min" else s.median_ms for s in stats]


def _runners(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], config: LutConfig, workdir: Path
) -> list[Runner]:
    """Unopened runners of ``modules``: PyTorch ones, or ONNX Runtime / TensorRT engines on
    exported graphs."""
    rc = config.runner_config()
    if config.backend not in (Backend.ORT, Backend.TRT):
        return [TorchRunner(m, shape, rc) for m, shape in modules]
    out: list[Runner] = []
    for i, (m, shape) in enumerate(modules):
        log.info("exporting graph %d/%d (%s)", i + 1, len(modules), config.exporter)
        path = export_module(m, shape, workdir / f"m{i}.onnx", config.exporter)
        if config.backend is Backend.ORT:
            if config.precision is Precision.FP16:  # what ORT deploys: the FP16 graph
                from uvc.export.fp16 import convert_to_fp16

                path = convert_to_fp16(path, path.with_suffix(".fp16.onnx"))
            out.append(OrtRunner(path, shape, rc, batch_sizes=(config.batch,)))
        else:
            out.append(TrtEngineRunner(_engine(path, config, workdir), shape, rc))
    return out


def _engine(onnx_path: Path, config: LutConfig, workdir: Path) -> Path:
    """A TensorRT engine of one exported graph, its profile pinned to the table's batch; one
    timing cache shared by all of them (the grid points repeat the same layer shapes)."""
    from uvc.export.tensorrt import TrtBuildConfig, build_engine

    fp16 = config.precision is Precision.FP16
    fp16_onnx = None
    if fp16:
        from uvc.export.fp16 import convert_to_fp16

        fp16_onnx = convert_to_fp16(onnx_path, onnx_path.with_suffix(".fp16.onnx"))
    b = config.batch
    cfg = TrtBuildConfig(
        min_batch=b, opt_batch=b, max_batch=b, fp16=fp16, timing_cache=workdir / "timing.cache"
    )
    built = build_engine(onnx_path, onnx_path.with_suffix(".engine"), cfg, fp16_onnx=fp16_onnx)
    return built.engine


def export_module(
    module: nn.Module, shape: tuple[int, ...], path: Path, exporter: str = "dynamo"
) -> Path:
    """Export ``module`` (a ViT, or a sub-layer taking (batch, *shape)) to ONNX, batch dynamic.

    A ViT goes through ``uvc.export.onnx.export_onnx``, exactly as ``uvc export`` writes it; a
    sub-layer through the same ``torch.onnx.export`` path and opset.
    """
    from uvc.export.onnx import Exporter, export_onnx, trace_to_onnx

    if isinstance(module, ViT):
        return export_onnx(module, path, exporter=Exporter(exporter))
    trace_to_onnx(module.eval(), torch.randn(2, *shape), path, exporter, names=("x", "y"))
    return path


class CallOverhead(nn.Module):
    """Next to no work (the first token): its latency is the cost of a call itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]
