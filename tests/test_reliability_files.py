"""uvc never deletes or overwrites a file it did not write (issue 9, section 1), and a failed write
(a full disk) or Ctrl-C leaves earlier checkpoints intact with the command that resumes the run.

Each command is pointed at a folder of a user's files named like uvc's own (``export.json``,
``config.json``, ``spec.json``, ``summary.txt``); their checksums must not change.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import uvc._fs as fs
import uvc.files.checkpoint as checkpoint
import uvc.pipeline.stages as stages
from uvc.cli import cli
from uvc.files.rundir import MARKER, STAGING, read_marker, write_marker

ROOT = Path(__file__).resolve().parents[1]


def _sums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _user_folder(path: Path, files: dict[str, str]) -> dict[str, str]:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return _sums(path)


def _one_error_line(res: object) -> str:
    # torch's own import-time notices (e.g. "No CUDA runtime is found" from cpp_extension on a
    # machine without CUDA) are not uvc's; every line uvc prints must be the one error line.
    text = res.stderr  # type: ignore[attr-defined]
    lines = [ln for ln in text.splitlines() if ln.strip() and "torch/utils/" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in res.output  # type: ignore[attr-defined]
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record the runs that would start instead of training (the folder checks come first)."""
    started: list[object] = []
    monkeypatch.setattr(stages, "run_stages", lambda cfg: started.append(cfg) or 1 / 0)
    return started


USER_FOLDERS = {
    "export over a user's export.json": (
        {"export.json": "{}", "thesis.tex": "\\chapter{One}", "NOTES.md": "mine"},
        lambda d: ["export", "uvc-tiny", "--out", str(d), "--no-onnx"],
    ),
    "train --resume over an unrelated config.json": (
        {"config.json": '{"name": "my web app"}', "summary.txt": "my summary"},
        lambda d: ["train", "--resume", str(d)],
    ),
    "demo --fresh over a user's config.json and spec.json": (
        {"config.json": '{"model": "x"}', "spec.json": "{}"},
        lambda d: ["demo", "--fresh", "--out", str(d)],
    ),
    "train --out a non-empty folder": (
        {"summary.txt": "my summary", "data.csv": "1,2"},
        lambda d: ["train", "--out", str(d)],
    ),
    "train --out a folder with every run file name": (
        {n: f"user's {n}" for n in ("config.json", "teacher.pt", "search.pt", "final.pt")},
        lambda d: ["train", "--out", str(d)],
    ),
}


@pytest.mark.parametrize("case", list(USER_FOLDERS))
def test_user_folders_are_refused_untouched(
    tmp_path: Path, no_training: list[object], case: str
) -> None:
    files, make_args = USER_FOLDERS[case]
    folder = tmp_path / "user"
    before = _user_folder(folder, files)
    res = CliRunner().invoke(cli, make_args(folder))
    assert res.exit_code == 2, res.output
    assert "not created by uvc" in _one_error_line(res) or "uvc did not create it" in res.stderr
    assert _sums(folder) == before and not no_training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]  # no staging folder left


def test_export_replaces_only_its_own_folder_and_only_its_files(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    args = ["export", "uvc-tiny", "--out", str(out), "--no-onnx"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert read_marker(out)["kind"] == "export"
    assert CliRunner().invoke(cli, args).exit_code == 0  # its own export: replaced
    (out / "NOTES.md").write_text("the user's notes, added later")
    before = _sums(out)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "NOTES.md" in _one_error_line(res)
    assert _sums(out) == before


def test_export_cleans_up_its_own_killed_leftovers_only(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    # A process killed (-9) mid-export: its staging folder stays behind, with uvc's marker.
    code = (
        "import os, sys; from pathlib import Path; from uvc.export.artifacts import make_staging;"
        f"t = make_staging(Path({str(out)!r})); (t / 'model.pt').write_bytes(b'x' * 10);"
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    (killed,) = tmp_path.glob(".exp.tmp-*")
    assert read_marker(killed)["kind"] == STAGING
    user = _user_folder(tmp_path / ".exp.tmp-mine", {"keep.txt": "a user's folder"})
    live = tmp_path / ".exp.tmp-live"
    live.mkdir()
    write_marker(live, STAGING)  # a concurrent export still running (this process is alive)
    res = CliRunner().invoke(cli, ["export", "uvc-tiny", "--out", str(out), "--no-onnx"])
    assert res.exit_code == 0, res.output
    assert not killed.exists()
    assert _sums(tmp_path / ".exp.tmp-mine") == user and live.is_dir()


def test_demo_fresh_in_its_own_folder_removes_only_run_files(
    tmp_path: Path, no_training: list[object]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, stages.RUN_KIND)
    for name in ("config.json", "teacher.pt", "summary.txt"):
        (run / name).write_text("from an earlier run")
    (run / ".teacher.pt.abc123.tmp").write_text("a killed atomic write")
    (run / "my_notes.txt").write_text("the user's")
    res = CliRunner().invoke(cli, ["demo", "--fresh", "--out", str(run)])
    assert len(no_training) == 1, res.output  # the run was about to start
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "my_notes.txt"]


def test_a_refused_run_leaves_nothing_and_the_fix_then_starts(
    tmp_path: Path, no_training: list[object]
) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--out", str(out), "--tau", "0"])
    assert res.exit_code == 2 and not out.exists()
    CliRunner().invoke(cli, ["train", "--out", str(out), "--tau", "2"])
    assert len(no_training) == 1 and read_marker(out)["kind"] == stages.RUN_KIND


def test_ctrl_c_prints_the_resume_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(cfg: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "run_stages", interrupted)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--out", str(out)])
    assert res.exit_code == 130
    assert f"uvc train --resume {out}" in res.stderr and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d")])
    assert res.exit_code == 130 and f"uvc demo --out {tmp_path / 'd'}" in res.stderr


def _full_disk_on(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Path]:
    """Make every atomic write of a file called ``name`` fail half-way with ENOSPC."""
    real = fs._atomic_write
    failed: list[Path] = []

    def atomic_write(path: Path, write: object) -> Path:
        if Path(path).name != name:
            return real(path, write)  # type: ignore[arg-type]

        def half_then_full(tmp: Path) -> None:
            tmp.write_bytes(b"\0" * 1000)
            failed.append(Path(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, half_then_full)

    monkeypatch.setattr(fs, "_atomic_write", atomic_write)
    return failed


def test_disk_full_during_train_keeps_checkpoints_and_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    data = tmp_path / "images"  # 2 classes x 8 tiny images: epochs of milliseconds
    for c in range(2):
        (data / f"c{c}").mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (40 * i, 100 * c, 7)).save(data / f"c{c}" / f"{i}.png")
    out = tmp_path / "run"
    failed = _full_disk_on(monkeypatch, "search.pt")
    args = ["train", "--out", str(out), "--data", str(data), "--val-split", "0.25",
            "--img-size", "16", "--teacher-epochs", "1", "--search-epochs", "2",
            "--warmup-epochs", "1", "--finetune-epochs", "1", "--batch-size", "4",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    line = _one_error_line(res)
    assert "no space left" in line and f"uvc train --resume {out}" in line
    assert failed and failed[0] == out / "search.pt"
    teacher = checkpoint.load_checkpoint(out / "teacher.pt")  # intact and readable
    assert teacher.meta
    assert not list(out.glob(".*.tmp")) and not (out / "search.pt").exists()
    teacher_bytes = (out / "teacher.pt").read_bytes()
    # Resuming continues after the teacher (not retrained): the next write is search.pt again.
    res = CliRunner().invoke(cli, ["train", "--resume", str(out), "--no-progress"])
    assert res.exit_code == 2 and "search.pt" in _one_error_line(res)
    assert len(failed) == 2 and (out / "teacher.pt").read_bytes() == teacher_bytes


def test_disk_full_during_lut_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = _full_disk_on(monkeypatch, "lut.json")
    out = tmp_path / "lut.json"
    args = ["lut", "--model", "uvc-tiny", "--out", str(out), "--device", "cpu", "--threads", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "no space left" in _one_error_line(res) and failed
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_claims_a_new_folder_with_its_marker(
    tmp_path: Path, no_training: list[object]
) -> None:
    out = tmp_path / "a" / "b" / "run"
    CliRunner().invoke(cli, ["train", "--out", str(out)])
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "train" and "uvc_version" in marker and len(no_training) == 1
