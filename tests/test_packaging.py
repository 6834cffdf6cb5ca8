"""The wheel installs exactly one import name, ``uvc``; the CLI runs as a script and a module."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_one_top_level_name(tmp_path: Path) -> None:
    """`pip wheel .` puts only `uvc` (with uvc.export, uvc.bench, uvc.cli) into site-packages."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("uvc-*.whl")
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


def test_python_m_uvc_runs() -> None:
    """`python -m uvc --help` lists the commands (same group as the console script)."""
    out = subprocess.run(
        [sys.executable, "-m", "uvc", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for command in ("train", "export", "bench", "inspect", "demo", "lut"):
        assert command in out


ABOVE_CORE = {"uvc/api.py", "uvc/tools.py", "uvc/__init__.py", "uvc/__main__.py"}


def test_the_core_never_imports_export_bench_or_the_cli() -> None:
    """Dependency direction (DESIGN.md): uvc.cli -> uvc.pipeline/api -> uvc.export -> core."""
    import ast

    bad = []
    for path in sorted((ROOT / "uvc").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ABOVE_CORE or rel.startswith(("uvc/cli/", "uvc/pipeline/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith(
                    ("uvc.export", "uvc.bench", "uvc.cli", "uvc.pipeline", "uvc.api", "uvc.tools")
                ):
                    bad.append(f"{rel}: {name}")
    assert not bad, bad
