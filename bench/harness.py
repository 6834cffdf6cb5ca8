"""Benchmark sweeps: models x backends x batch sizes, interleaved, with speedup vs MACs.

For each backend, every model's runner is opened, then for each batch size the models are timed
round-robin (round r starts at model r mod M), so a dense and a compressed model share the
machine's state — thermal, other tenants, caches — instead of one getting the quiet minute.
Efficiency = speedup / MACs-reduction: 1.0 means the wall clock shrank as much as the MACs did.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from uvc.bench.ort_runner import OrtRunner, ort_install_problem
from uvc.bench.report import BenchResult, Row, fill_efficiency
from uvc.bench.runners import (
    Backend,
    Precision,
    Runner,
    RunnerConfig,
    TorchRunner,
    TrtEngineRunner,
)
from uvc.bench.stats import paired_speedup

# The benchmarked model and its artifacts live in ``targets``; re-exported here.
from uvc.bench.targets import BenchModel, _safe, ensure_fp16_onnx, ensure_onnx, load_target
from uvc.bench.timer import Stopwatch, TimingConfig, set_threads, summarize, take_samples

from uvc.arch.cost import macs, params
from uvc.arch.model import ViT
from uvc.errors import BackendUnavailable, UvcError

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = (Backend.EAGER, Backend.ORT)
ORT_BACKENDS = (Backend.ORT, Backend.ORT_TRT)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Args:
        backends: backends to run, in order.
        batch_sizes: batch sizes to run.
        device: ``cpu`` or ``cuda``.
        precision: fp32, or fp16/bf16 on CUDA.
        threads: CPU threads for every backend (torch and ONNX Runtime alike).
        timing: warmup, rounds and repetitions.
        include_copies: time host->device input and device->host output copies too.
        workdir: where ONNX files exported on the fly go (a temporary folder when None).
    """

    backends: tuple[Backend, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "cpu"
    precision: Precision = Precision.FP32
    threads: int = 1
    timing: TimingConfig = field(default_factory=TimingConfig)
    include_copies: bool = False
    workdir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(Backend(b) for b in self.backends))
        object.__setattr__(self, "precision", Precision(self.precision))
        if not self.backends:
            raise ValueError("at least one backend is needed")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def runner_config(self, backend: Backend) -> RunnerConfig:
        """The runner configuration of one backend."""
        return RunnerConfig(backend, self.device, self.precision, self.threads, self.include_copies)


def open_runner(bm: BenchModel, config: BenchConfig, backend: Backend, workdir: Path) -> Runner:
    """A (not yet entered) runner of ``bm`` on ``backend``; raises ``BackendUnavailable``."""
    rc = config.runner_config(backend)
    if backend in (Backend.EAGER, Backend.COMPILE, Backend.CUDAGRAPH):
        return TorchRunner(bm.model, bm.input_shape, rc)
    if backend in (Backend.ORT, Backend.ORT_TRT):
        # ORT's CUDA/CPU providers run fp16 from the FP16 graph (FP32 I/O); the TensorRT provider
        # builds its fp16 engine from the FP32 graph with trt_fp16_enable, like TensorRT 10.
        fp16_graph = rc.precision is Precision.FP16 and backend is Backend.ORT
        path = ensure_fp16_onnx(bm, workdir) if fp16_graph else ensure_onnx(bm, workdir)
        cpu_fp32 = not rc.on_cuda and rc.precision is Precision.FP32
        if backend is Backend.ORT and cpu_fp32 and bm.onnx_opt is not None:
            path = bm.onnx_opt  # ONNX Runtime's CPU fusions (fused attention), validated at export
        cache = workdir / "ort-trt-cache" / _safe(bm.label)
        return OrtRunner(path, bm.input_shape, rc, batch_sizes=config.batch_sizes, cache_dir=cache)
    return TrtEngineRunner(bm.engine, bm.input_shape, rc)


def open_int8_runner(bm: BenchModel, config: BenchConfig, backend: Backend) -> Runner:
    """A (not yet entered) ONNX Runtime CPU runner of ``bm``'s ``model.int8.onnx``."""
    if bm.onnx_int8 is None or not _runs_int8(config, backend):
        raise BackendUnavailable(f"{bm.label} has no model.int8.onnx for {backend.value}")
    rc = config.runner_config(backend)
    return OrtRunner(bm.onnx_int8, bm.input_shape, rc, batch_sizes=config.batch_sizes)


def _runs_int8(config: BenchConfig, backend: Backend) -> bool:
    """Whether ``backend`` gets ``ort+int8`` rows: ONNX Runtime's CPU provider, FP32 run."""
    rc = config.runner_config(backend)
    return backend is Backend.ORT and not rc.on_cuda and rc.precision is Precision.FP32


def _backend_label(backend: Backend, bm: BenchModel, runner: Runner | None, int8: bool) -> str:
    """``ort+opt`` when ONNX Runtime runs ``model.opt.onnx``, ``ort+int8`` on ``model.int8.onnx``:
    rows pair only like with like (INT8 rows pair with the baseline's FP32 ONNX Runtime rows)."""
    if int8:
        return backend.value + "+int8"
    on_opt = runner is not None and getattr(runner, "onnx_path", None) == bm.onnx_opt
    return backend.value + ("+opt" if on_opt and bm.onnx_opt is not None else "")


def environment(config: BenchConfig) -> dict[str, Any]:
    """Device, library versions, threads and precision of a run."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "timm", "tensorrt"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    dev = torch.device(config.device)
    name = platform.processor() or platform.machine()
    if dev.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(dev)
    return {
        "device": config.device,
        "device_name": name,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        # Run-queue length (1, 5, 15 min) when the run ended: above cpu_count, other processes
        # competed for the cores while timing.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": config.threads,
        "precision": config.precision.value,
        "include_copies": config.include_copies,
        "onnxruntime_problem": ort_install_problem(),
        "timing": asdict(config.timing),
        "versions": versions,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_benchmark(
    models: Sequence[BenchModel], config: BenchConfig, baseline: str | None = None
) -> BenchResult:
    """Time every model on every backend and batch size, interleaved; compare to the baseline.

    Args:
        models: the models; labels must be unique.
        config: what to measure.
        baseline: label of the reference model (default: the first model).
    """
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise UvcError(f"model labels must be unique, got {labels}")
    base = baseline if baseline is not None else labels[0]
    if base not in labels:
        raise UvcError(f"baseline {base!r} is not among the models {labels}")
    set_threads(config.threads)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="uvc-bench-") as tmp:
        workdir = config.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for backend in config.backends:
            rows += _run_backend(models, config, backend, workdir, base)
    fill_efficiency(rows, base)
    model_info = [
        {
            "label": m.label,
            "spec": m.model.spec.to_dict(),
            "macs": macs(m.model.spec),
            "params": params(m.model.spec),
            "load_s": m.load_s,
            "export_s": m.export_s,
        }
        for m in models
    ]
    return BenchResult(environment(config), model_info, base, rows)


def _run_backend(
    models: Sequence[BenchModel],
    config: BenchConfig,
    backend: Backend,
    workdir: Path,
    baseline: str | None = None,
) -> list[Row]:
    """All rows of one backend: open runners, then per batch size time the models round-robin.

    A model with ``model.int8.onnx`` gets a second runner on ONNX Runtime's CPU provider, timed
    in the same rounds as every FP32 runner (its rows say ``ort+int8``).
    """
    entries = [(bm, False) for bm in models]
    if _runs_int8(config, backend):
        entries += [(bm, True) for bm in models if bm.onnx_int8 is not None]
    rows: dict[tuple[int, int], Row] = {}
    runners: list[tuple[int, BenchModel, Runner]] = []
    for k, (bm, int8) in enumerate(entries):
        spec = bm.model.spec
        try:
            if int8:
                runner = open_int8_runner(bm, config, backend)
            else:
                runner = open_runner(bm, config, backend, workdir)
            runner.__enter__()
            runners.append((k, bm, runner))
            status = "ok"
        except BackendUnavailable as exc:
            status = f"skipped: {exc}"
            runner = None
        except Exception as exc:  # a backend failing on one model must not hide the others
            log.exception("%s on %s failed to open", backend.value, bm.label)
            status, runner = f"failed: {type(exc).__name__}: {exc}", None
        for b in config.batch_sizes:
            rows[(k, b)] = Row(
                bm.label,
                _backend_label(backend, bm, runner, int8),
                b,
                status,
                macs(spec),
                params(spec),
                build_s=None if runner is None else runner.build_s,
                copies_included=bool(getattr(runner, "copies_included", config.include_copies)),
            )
    # ONNX Runtime's run() returns when its work is done, on streams torch cannot see: host clock.
    on_gpu = torch.device(config.device).type == "cuda" and backend not in ORT_BACKENDS
    watch = Stopwatch(config.device if on_gpu else "cpu")
    baseline = models[0].label if baseline is None else baseline
    try:
        for b in config.batch_sizes:
            live = []
            for k, bm, runner in runners:
                row = rows[(k, b)]
                try:
                    row.prepare_s = runner.prepare(b)
                    x = runner.make_input(b, seed=b)
                    row.max_abs_diff = _max_diff(bm.model, runner, x)
                    take_samples(lambda r=runner, x=x: r.infer(x), 0, watch, config.timing.warmup)
                    live.append((row, runner, x, []))
                except BackendUnavailable as exc:  # e.g. a batch outside a TensorRT profile
                    row.status = f"skipped: {exc}"
                except Exception as exc:
                    log.exception("%s on %s, batch %d failed", backend.value, bm.label, b)
                    row.status = f"failed: {type(exc).__name__}: {exc}"
            n_rounds = _time_rounds(live, config.timing, watch, baseline)
            for row, _runner, _x, samples in live:
                label = f"{row.model}/{row.backend}/b{b}"
                row.summary = summarize(
                    samples, b, label, rounds=n_rounds, statistic=config.timing.statistic
                )
    finally:
        for _k, _bm, runner in runners:
            runner.__exit__(None, None, None)
    return list(rows.values())


def _time_rounds(live: list[Any], timing: TimingConfig, watch: Stopwatch, baseline: str) -> int:
    """Round-robin passes over ``live`` (row, runner, x, samples); returns how many were run.

    ``timing.rounds`` passes, then, with ``timing.until_ci``, more until every model's paired
    speedup interval against ``baseline`` is narrow enough or ``timing.ci_time_s`` has passed.
    """
    if not live:
        return 0
    t0 = time.perf_counter()
    done = 0
    while True:
        r = done % len(live)
        for _row, runner, x, samples in live[r:] + live[:r]:
            fn = lambda runner=runner, x=x: runner.infer(x)  # noqa: E731
            samples += take_samples(fn, timing.reps, watch, timing.warmup_per_round)
        done += 1
        if done < timing.rounds:
            continue
        if timing.until_ci is None or time.perf_counter() - t0 > timing.ci_time_s:
            return done
        widest = _widest_interval(live, done, baseline, timing.statistic)
        if widest is None or widest <= timing.until_ci:
            return done


def _widest_interval(
    live: list[Any], rounds: int, baseline: str, statistic: str = "median"
) -> float | None:
    """The widest relative 95% interval of any row's paired speedup against the baseline's FP32
    row (None: no baseline)."""
    base = next((s for row, _r, _x, s in live if _is_base(row, baseline)), None)
    if base is None:
        return None
    widths = [
        paired_speedup(base, rounds, s, rounds, statistic).rel_width
        for row, _r, _x, s in live
        if not _is_base(row, baseline)
    ]
    return max(widths, default=None)


def _is_base(row: Row, baseline: str) -> bool:
    return row.model == baseline and not row.backend.endswith("+int8")


def _max_diff(model: ViT, runner: Runner, x: torch.Tensor) -> float:
    """Largest |runner - PyTorch fp32 CPU| on ``x``: a benchmark of a wrong model is worthless."""
    with torch.inference_mode():
        ref = model(x.detach().to("cpu", torch.float32))
        out = runner.infer(x)
    return float((out.detach().to("cpu", torch.float32) - ref).abs().max())


def bench_targets(
    targets: Sequence[str],
    config: BenchConfig,
    baseline: str | None = None,
    weights: str | Path | None = None,
) -> BenchResult:
    """Load ``targets`` (and ``baseline``, first) the way ``uvc bench`` names them, then run.

    ``weights`` goes to the targets that carry none of their own (timm names, spec JSONs).
    """
    names = ([baseline] if baseline is not None else []) + [t for t in targets if t != baseline]
    if not names:
        raise UvcError("name at least one model to benchmark")
    models: list[BenchModel] = []
    for t in names:
        p = Path(t)
        own = p.is_dir() or (p.is_file() and p.suffix != ".json")
        bm = load_target(t, None if own else weights)
        label, k = bm.label, 2
        while bm.label in {m.label for m in models}:  # the same file named twice
            bm.label = f"{label}#{k}"
            k += 1
        models.append(bm)
    return run_benchmark(models, config, baseline=models[0].label)
