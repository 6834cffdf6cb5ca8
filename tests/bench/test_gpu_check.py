"""The one-shot GPU check: its CPU dry run (every step but the CUDA ones), parsing, timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from uvc.bench.gpu_check import Step, _run, image_check, install_problem, main, parse_uvc, run_step

from uvc.arch.spec import ViTSpec


def test_dry_run_writes_summary_specs_and_parses_every_cuda_command(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    assert main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert status["install"] == "ok" and "--dry-run" in report["steps"][0]["command"]
    assert status["probe"] == status["specs"] == "ok"
    cuda_steps = (
        "gpu-tests",
        "bench-eager-cudagraph",
        "bench-merge",
        "train-bf16",
        "bench-compile",
    )
    assert all(status[s] == "dry-run" for s in cuda_steps)
    md = (out / "summary.md").read_text()
    assert md.startswith("# uvc gpu-check (dry run") and "| bench-compile | dry-run |" in md
    dense = ViTSpec.load(out / "specs" / "dense.json")
    aligned = ViTSpec.load(out / "specs" / "half_a8.json")
    unaligned = ViTSpec.load(out / "specs" / "half_unaligned.json")
    assert dense.blocks[0].qk_dim == 64 and dense.embed_dim == 384
    widths = lambda s: [w for b in s.blocks for w in (b.qk_dim, b.v_dim, b.mlp_dim)]  # noqa: E731
    assert all(w % 8 == 0 for w in widths(aligned))
    assert any(w % 8 for w in widths(unaligned))
    for name in ("half_a8", "half_unaligned"):
        assert f"{name} 0.4" in md or f"{name} 0.5" in md  # about half the MACs
    merged = ViTSpec.load(out / "specs" / "tome13.json")
    assert merged.merge_r == (13,) * 12 and merged.blocks == dense.blocks
    both = ViTSpec.load(out / "specs" / "half_a8_tome8.json")
    assert both.merge_r == (8,) * 12 and both.blocks == aligned.blocks
    env = json.loads((out / "environment.json").read_text())
    assert "torch" in env and "ort_providers" in env


def test_parse_uvc_rejects_what_the_cli_would() -> None:
    parse_uvc(["uvc", "bench", "x.json", "--device", "cuda", "--until-ci", "0.1"])
    with pytest.raises(click.NoSuchOption):
        parse_uvc(["uvc", "bench", "x.json", "--no-such-flag"])
    with pytest.raises(click.BadParameter):
        parse_uvc(["uvc", "train", "--amp", "fp8"])
    with pytest.raises(ValueError, match="no command"):
        parse_uvc(["uvc", "frobnicate"])


def test_a_step_over_its_time_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    assert _run([sys.executable, "-c", "import time; time.sleep(30)"], log, 1.5) == 124
    assert "killed after" in log.read_text()
    assert _run([sys.executable, "-c", "print('hi')"], tmp_path / "ok.log", 30) == 0
    assert _run([sys.executable, "-c", "pass"], tmp_path / "late.log", 0.5) == 124


def test_image_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    cpu = image_check("cpu")
    assert len(cpu) == 1 and "C++ compiler" in cpu[0]
    gpu = " ".join(image_check("gpu", expect_trt="10.8"))
    assert "Triton needs a C compiler" in gpu
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT does not import" in gpu
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "lacks CUDAExecutionProvider" in gpu


def test_step_statuses(tmp_path: Path) -> None:
    exit_with = lambda code: (sys.executable, "-c", f"import sys; sys.exit({code})", "--check")  # noqa: E731
    assert run_step(Step("a", exit_with(0)), tmp_path, 30, False).status == "ok"
    assert run_step(Step("b", exit_with(3)), tmp_path, 30, False).status == "inconclusive (exit 3)"
    assert run_step(Step("c", exit_with(1)), tmp_path, 30, False).status == "failed (exit 1)"
    broken = Step("d", ("uvc", "bench", "x.json", "--renamed-flag"), cuda=True)
    res = run_step(broken, tmp_path, 30, True)  # dry run: parsed, and the parse fails
    assert res.status == "failed" and "NoSuchOption" in res.note


def test_image_check_fails_an_install_without_a_subpackage() -> None:
    """A wheel that lost ``uvc.methods`` (as one once did) fails the Docker build's check."""
    code = (
        "import sys; sys.modules['uvc.methods'] = None\n"  # None in sys.modules: import fails
        "from uvc.bench.gpu_check import install_problem\n"
        "print(install_problem())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "installed uvc is incomplete" in out.stdout and "uvc." in out.stdout
    assert install_problem() is None  # this environment has every package
