"""The wheel installs exactly one import name, ``uvc``; the CLI runs as a script and a module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from uvc.arch.spec import ViTSpec

ROOT = Path(__file__).resolve().parents[1]


# repository folder -> the package it installs as (setup.py maps export/ and bench/ under uvc)
SOURCE_ROOTS = {"uvc": "uvc", "export": "uvc/export", "bench": "uvc/bench"}
# Left-overs of an earlier build or editable install. A stale uvc.egg-info lists every source file,
# and setuptools then ships packages it was never told about as "data": a dirty tree hides exactly
# the missing-package bug these tests are for, so the wheel is built from a clean copy.
BUILD_LEFTOVERS = ("*.egg-info", "build", "dist", ".venv", ".git", "__pycache__", "runs", ".*cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from a clean copy of this source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip, "-w", str(tmp), str(src)], check=True, capture_output=True)
    (built,) = tmp.glob("uvc-*.whl")
    return built


@pytest.mark.slow
def test_wheel_has_one_top_level_name(wheel: Path) -> None:
    """`pip wheel .` puts only `uvc` (with uvc.export, uvc.bench, uvc.cli) into site-packages."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
        listed = set(zf.read(top_level).decode().split()) if top_level else top
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        entry_points = zf.read(entry).decode()
    assert top == {"uvc"}
    assert listed == {"uvc"}
    for module in ("uvc/export/materialize.py", "uvc/bench/harness.py", "uvc/cli/app.py"):
        assert module in names
    assert "pipeline.py" not in names and "cli.py" not in names
    assert "uvc = uvc.cli:main" in entry_points


@pytest.mark.slow
def test_every_package_and_module_of_the_tree_is_in_the_wheel(wheel: Path) -> None:
    """Each `__init__.py` (and every module beside it) under uvc/, export/, bench/ is shipped."""
    expected = set()
    for folder, package in SOURCE_ROOTS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    assert "uvc/methods/__init__.py" in expected  # the walk sees subpackages
    with zipfile.ZipFile(wheel) as zf:
        missing = sorted(expected - set(zf.namelist()))
    assert not missing, f"not in the wheel: {missing}"


@pytest.mark.slow
def test_the_wheel_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    """A non-editable install, away from the source tree, runs the CLI, a training and the API."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The wheel's dependencies (torch & co., gigabytes) come from this environment's site-packages,
    # appended after the venv's own; uvc itself only from the wheel. Plain path lines: the
    # editable finder of a development install there is never run.
    (own,) = subprocess.run(
        [python, "-c", "import site; print(*site.getsitepackages())"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]  # never the source tree
    (Path(own) / "_deps.pth").write_text("\n".join(deps) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    subprocess.run([*install, "--no-index", "-q", str(wheel)], check=True, capture_output=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"

    def run(*cmd: str | Path) -> str:
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}: {res.stdout}{res.stderr}"
        return res.stdout + res.stderr

    where = run(python, "-c", "import uvc, uvc.methods, uvc.export; print(uvc.__file__)")
    assert where.strip().startswith(own), where  # uvc from the wheel, not from the source tree
    uvc_cli = venv / "bin" / "uvc"
    assert "train" in run(uvc_cli, "--help")
    assert "total" in run(uvc_cli, "inspect", "uvc-tiny")
    spec = ViTSpec.uniform(2, 32, 2, 2.0, img_size=16, patch_size=4, num_classes=10)
    spec_file = spec.save(tmp_path / "tiny.json")
    out = tmp_path / "run"
    train = ["train", "--model", str(spec_file), "--data", "digits", "--out", str(out),
             "--teacher-epochs", "1", "--search-epochs", "1", "--warmup-epochs", "0",
             "--finetune-epochs", "1", "--batch-size", "512", "--no-progress"]  # fmt: skip
    run(uvc_cli, *train)
    assert (out / "final.pt").is_file() and (out / "summary.txt").is_file()
    api = run(python, "-c", "import uvc; print(uvc.compress.__module__)")
    assert api.strip() == "uvc.api"


def test_python_m_uvc_runs() -> None:
    """`python -m uvc --help` lists the commands (same group as the console script)."""
    out = subprocess.run(
        [sys.executable, "-m", "uvc", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for command in ("train", "export", "bench", "inspect", "demo", "lut"):
        assert command in out
