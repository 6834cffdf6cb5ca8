"""One prepared GPU check (``make gpu-check``): what a CUDA machine should confirm, in minutes.

Target: an H100/H200 with torch, timm, onnx and onnxruntime (CPU) preinstalled, no TensorRT, no
network. Steps, each with its own log and a share of one time budget (default 450 s, well inside
8 minutes):

1. install the project without dependencies (``pip install --no-deps --no-build-isolation -e .``);
2. probe the environment (GPU, versions, ONNX Runtime providers, compiler for torch.compile);
3. write DeiT-Small specs: dense, -50% MACs at widths aligned to 8, -50% MACs at widths that are
   not multiples of 8, and two with token merging;
4. run the GPU tests (``pytest -m gpu``);
5. ``uvc bench`` dense vs both -50% models, fp16, eager and cudagraph, batch 1/64/256, ``--check``;
6. ``uvc bench`` dense vs token merging (r = 13 per block) and vs the aligned -50% model with
   r = 8, fp16, eager and cudagraph (no ``--check``);
7. a short ``uvc train`` on CUDA with ``--amp bf16`` on digits (one epoch per stage);
8. the same benchmark with ``compile`` (last: the slowest step, inductor compiles every batch);
9. ``summary.md`` and ``gpu_check.json`` in the output folder.

``--dry-run`` runs on a CPU (``make test`` does): the install as ``pip install --dry-run``, the
probe, the specs and the summary run for real; the CUDA steps are not run, but their command lines
are parsed by the real CLI, so a renamed option fails here rather than on the GPU machine.

``--image-check gpu|cpu`` is what the Docker images run at build time: the toolchain torch.compile
needs, and (gpu) TensorRT's version and ONNX Runtime's GPU providers.

Run from the repository root: ``make gpu-check``, or ``python -m uvc.bench.gpu_check --out
gpu-check`` once the project is importable (``--dry-run`` on a CPU).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("uvc.bench.gpu_check")

BUDGET_S = 450.0
BENCH_MODEL = "deit_small_patch16_224"
BATCHES = "1,64,256"
MIN_EFFICIENCY = 0.8
TOME_R = 13  # tokens merged per block in the token-merging rows
EXPECT_TRT = "10.8"  # docker/Dockerfile.gpu's base image (nvcr.io/nvidia/tensorrt:25.01-py3)


@dataclass(frozen=True)
class Step:
    """One step: a command (``argv``) or an in-process function (``fn``).

    Args:
        name: short name (log file, summary row).
        argv: the command; ``uvc`` commands start with "uvc" and run as ``python -m uvc``.
        cuda: needs a CUDA GPU (not run by ``--dry-run``).
        timeout_s: its own limit (also capped by what is left of the budget).
        dry_argv: what ``--dry-run`` runs instead of a non-CUDA command (None: skip it).
    """

    name: str
    argv: tuple[str, ...] = ()
    cuda: bool = False
    timeout_s: float = 60.0
    dry_argv: tuple[str, ...] | None = None
    fn: Callable[[Path], str] | None = None


@dataclass
class StepResult:
    """What a step did."""

    name: str
    status: str  # ok | failed (exit N) | timeout | dry-run | skipped: <why>
    wall_s: float = 0.0
    exit_code: int | None = None
    command: str = ""
    note: str = ""


def make_specs(out: Path) -> str:
    """Write dense, -50%-aligned-8 and -50%-unaligned DeiT-Small specs to ``out/specs``."""
    from uvc.bench.reference import half_keep

    from uvc.arch.cost import macs
    from uvc.arch.keep import spec_after
    from uvc.arch.merge_schedule import with_merge
    from uvc.files.source import resolve_spec

    d = out / "specs"
    d.mkdir(parents=True, exist_ok=True)
    dense = resolve_spec(BENCH_MODEL)
    specs = {"dense": dense}
    for name, align in (("half_a8", 8), ("half_unaligned", None)):
        specs[name] = spec_after(dense, half_keep(dense, align))
    # Token merging (ToMe's DeiT-S setting r = 13 per block), alone and on the aligned -50% model.
    specs["tome13"] = with_merge(dense, TOME_R)
    specs["half_a8_tome8"] = with_merge(specs["half_a8"], 8)
    for name, s in specs.items():
        s.save(d / f"{name}.json")
    ratios = {n: macs(s) / macs(dense) for n, s in specs.items()}
    return ", ".join(f"{n} {r:.3f}x MACs" for n, r in ratios.items())


def probe(out: Path) -> str:
    """Record the GPU, versions, ONNX Runtime providers and the compile toolchain."""
    import importlib.metadata as md

    import torch
    from uvc.bench.ort_runner import ort_install_problem
    from uvc.bench.runners import compile_toolchain_problem

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "compile_problem": compile_toolchain_problem(torch.cuda.is_available()),
        "onnxruntime_problem": ort_install_problem(),
    }
    for dist in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "timm", "onnx"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["ort_providers"] = None
    (out / "environment.json").write_text(json.dumps(info, indent=1) + "\n")
    gpus = ", ".join(info["devices"]) or "no CUDA device"
    return f"{gpus}; torch {info['torch']} (CUDA {info['torch_cuda']})"


def plan(out: Path) -> list[Step]:
    """The steps, in the order they run."""
    py = sys.executable
    specs = out / "specs"
    bench = [
        *("uvc", "bench", str(specs / "half_a8.json"), str(specs / "half_unaligned.json")),
        *("--baseline", str(specs / "dense.json"), "--device", "cuda", "--precision", "fp16"),
        *("--batch-sizes", BATCHES, "--check", "--min-efficiency", str(MIN_EFFICIENCY)),
    ]
    install = (py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q")
    tests = (py, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests")
    train = [
        *("uvc", "train", "--model", "uvc-tiny", "--data", "digits", "--device", "cuda"),
        *("--amp", "bf16", "--teacher-epochs", "1", "--search-epochs", "1"),
        *("--warmup-epochs", "0", "--finetune-epochs", "1", "--no-progress"),
        *("--out", str(out / "train")),
    ]
    eager = (*bench, "--backends", "eager,cudagraph", "--json", str(out / "bench_eager.json"))
    # Token merging on CUDA: its own step, without --check (merging's efficiency per MAC is what
    # is to be learned, not a bar it must pass).
    merge = (
        *("uvc", "bench", str(specs / "tome13.json"), str(specs / "half_a8_tome8.json")),
        *("--baseline", str(specs / "dense.json"), "--device", "cuda", "--precision", "fp16"),
        *("--batch-sizes", BATCHES, "--backends", "eager,cudagraph"),
        *("--json", str(out / "bench_merge.json")),
    )
    compiled = (*bench, "--backends", "compile", "--json", str(out / "bench_compile.json"))
    return [
        Step("install", (*install, "-e", "."), timeout_s=90, dry_argv=(*install, "--dry-run", ".")),
        Step("probe", fn=probe, timeout_s=30),
        Step("specs", fn=make_specs, timeout_s=30),
        Step("gpu-tests", tests, cuda=True, timeout_s=150),
        Step("bench-eager-cudagraph", eager, cuda=True, timeout_s=150),
        Step("bench-merge", merge, cuda=True, timeout_s=120),
        Step("train-bf16", tuple(train), cuda=True, timeout_s=150),
        Step("bench-compile", compiled, cuda=True, timeout_s=240),
    ]


def parse_uvc(argv: Sequence[str]) -> None:
    """Parse a ``uvc ...`` command line with the real CLI, without running it.

    Raises:
        click.UsageError: an unknown option, a bad choice or a missing argument.
    """
    from uvc.cli import cli

    if not argv or argv[0] != "uvc":
        raise ValueError(f"not a uvc command: {list(argv)}")
    command = cli.get_command(None, argv[1])  # type: ignore[arg-type]
    if command is None:
        raise ValueError(f"uvc has no command {argv[1]!r}")
    command.make_context(argv[1], list(argv[2:]), resilient_parsing=False)


def _command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "uvc", *argv[1:]] if argv and argv[0] == "uvc" else list(argv)


def run_step(step: Step, out: Path, left_s: float, dry_run: bool) -> StepResult:
    """Run one step with its log in ``out/logs``; never raises for a failing step."""
    t0 = time.perf_counter()
    res = StepResult(step.name, "ok", command=" ".join(step.argv))
    try:
        if step.fn is not None:
            res.note = step.fn(out)
        elif dry_run and step.cuda:
            if step.argv[0] == "uvc":
                parse_uvc(step.argv)
            res.status, res.note = "dry-run", "needs CUDA: command line parsed, not run"
        elif dry_run and step.dry_argv is None:
            res.status = "skipped: not run by --dry-run"
        else:
            argv = step.dry_argv if dry_run and step.dry_argv else step.argv
            res.command = " ".join(argv)
            res.exit_code = _run(
                argv, out / "logs" / f"{step.name}.log", min(step.timeout_s, left_s)
            )
            if res.exit_code == 124:
                res.status = "timeout"
            elif res.exit_code == 3 and "--check" in argv:
                # uvc bench --check: no interval below the bar, some straddling it.
                res.status = "inconclusive (exit 3)"
            elif res.exit_code:
                res.status = f"failed (exit {res.exit_code})"
    except Exception as exc:  # a broken step is reported; the others still run
        res.status, res.note = "failed", f"{type(exc).__name__}: {exc}"
    res.wall_s = time.perf_counter() - t0
    log.info("%-22s %s (%.1f s) %s", step.name, res.status, res.wall_s, res.note)
    return res


def _run(argv: Sequence[str], log_path: Path, timeout_s: float) -> int:
    """Run ``argv`` with output to ``log_path``; 124 on timeout (its process group killed)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if timeout_s <= 1:
        log_path.write_text("not started: the time budget is spent\n")
        return 124
    with log_path.open("w") as fh:
        proc = subprocess.Popen(
            _command(argv), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            fh.write(f"\nkilled after {timeout_s:.0f} s (time budget)\n")
            return 124


# What a working install must import: the CLI and API load every layer below them (pipeline,
# methods, export) on first use, so a package left out of the wheel shows here, not in a user's run.
INSTALL_MODULES = ("uvc.cli.app", "uvc.api", "uvc.pipeline", "uvc.methods")


def install_problem() -> str | None:
    """Why the installed uvc is incomplete (a module of ``INSTALL_MODULES`` fails), or None."""
    for name in INSTALL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"the installed uvc is incomplete: import {name} fails ({exc})"
    return None


def image_check(kind: str, expect_trt: str = EXPECT_TRT) -> list[str]:
    """Problems a Docker image must not have (empty: fine). Needs no GPU.

    gpu: TensorRT importable at ``expect_trt``, ONNX Runtime's TensorRT and CUDA providers
    present, one ONNX Runtime installed, and a C compiler plus Python headers for Triton.
    cpu: a C++ compiler plus Python headers for inductor.
    Both: every module ``uvc train`` and ``uvc.compress`` load is installed.
    """
    from uvc.bench.ort_runner import ort_install_problem
    from uvc.bench.runners import compile_toolchain_problem

    problems = [p for p in [install_problem()] if p]
    toolchain = compile_toolchain_problem(on_cuda=kind == "gpu")
    if toolchain:
        problems.append(toolchain)
    if kind == "gpu":
        try:
            import tensorrt as trt

            if not str(trt.__version__).startswith(expect_trt):
                problems.append(f"TensorRT {trt.__version__}, expected {expect_trt}.x")
        except ImportError as exc:
            problems.append(f"TensorRT does not import: {exc}")
        try:
            import onnxruntime as ort

            have = ort.get_available_providers()
            for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
                if p not in have:
                    problems.append(f"ONNX Runtime lacks {p} (has {have})")
        except ImportError as exc:
            problems.append(f"onnxruntime does not import: {exc}")
        conflict = ort_install_problem()
        if conflict:
            problems.append(conflict)
    return problems


@dataclass
class Report:
    """Everything ``gpu_check.json`` holds."""

    dry_run: bool
    budget_s: float
    wall_s: float
    steps: list[StepResult] = field(default_factory=list)
    bench: dict[str, Any] = field(default_factory=dict)


def write_summary(out: Path, report: Report) -> Path:
    """``summary.md`` (steps, then every benchmark row with its interval) and ``gpu_check.json``."""
    for name in ("bench_eager", "bench_compile"):
        path = out / f"{name}.json"
        if path.is_file():
            report.bench[name] = json.loads(path.read_text())
    data = asdict(report)
    (out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    env_path = out / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    lines = [
        "# uvc gpu-check" + (" (dry run: CUDA steps not run)" if report.dry_run else ""),
        "",
        f"GPU: {', '.join(env.get('devices') or []) or 'none'}; torch {env.get('torch')}; "
        f"wall {report.wall_s:.0f} s of a {report.budget_s:.0f} s budget.",
        "",
        "| step | status | wall s | note |",
        "|---|---|---|---|",
    ]
    for s in report.steps:
        lines.append(f"| {s.name} | {s.status} | {s.wall_s:.1f} | {s.note.replace('|', '/')} |")
    for name, res in report.bench.items():
        lines += ["", f"## {name}", "", "| model | backend | batch | median ms | speedup | "
                  "efficiency [95% CI] | status |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in res.get("rows", []):
            s, ci = r.get("summary"), r.get("efficiency_ci")
            med = f"{s['median_ms']:.3f}" if s else "-"
            sp = f"{r['speedup']:.2f}" if r.get("speedup") is not None else "-"
            eff = f"{ci['value']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}]" if ci else "-"
            model = Path(r["model"]).stem
            lines.append(
                f"| {model} | {r['backend']} | {r['batch']} | {med} | {sp} | {eff} | "
                f"{r['status'].replace('|', '/')} |"
            )
        check = res.get("check")
        if check:
            lines.append(
                f"\ncheck (min efficiency {check['min_efficiency']}): exit {check['exit_code']}, "
                f"{len(check['passed'])} passed, {len(check['failed'])} failed, "
                f"{len(check['inconclusive'])} inconclusive"
            )
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit 0 when every step that ran passed (a --check verdict included)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"))
    ap.add_argument("--dry-run", action="store_true", help="CPU: run all but the CUDA steps")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps")
    ap.add_argument("--image-check", choices=("gpu", "cpu"), help="Docker build check only")
    ap.add_argument("--expect-trt", default=EXPECT_TRT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.image_check:
        problems = image_check(args.image_check, args.expect_trt)
        for p in problems:
            log.error("image check: %s", p)
        return 1 if problems else 0
    if not Path("pyproject.toml").is_file() or not Path("tests").is_dir():
        log.error("run the GPU check from the repository root (pyproject.toml and tests/)")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = Report(args.dry_run, args.budget, 0.0)
    for step in plan(out.resolve()):
        left = args.budget - (time.perf_counter() - start)
        report.steps.append(run_step(step, out.resolve(), left, args.dry_run))
    report.wall_s = time.perf_counter() - start
    md = write_summary(out, report)
    log.info("wrote %s and %s", md, out / "gpu_check.json")
    # An inconclusive --check ran fine: its intervals are in the summary for a person to read.
    fine = ("ok", "dry-run", "skipped", "inconclusive")
    bad = [s for s in report.steps if not s.status.startswith(fine)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
