"""``uvc train`` / ``uvc demo`` on the command line: help, clean errors, kill -9 and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from uvc.arch.spec import ViTSpec
from uvc.cli import cli
from uvc.files.checkpoint import load_checkpoint
from uvc.train.runlog import read_log

ROOT = Path(__file__).resolve().parents[1]
UVC = [sys.executable, "-c", "from uvc.cli import main; main()"]


def test_train_help_lists_the_options() -> None:
    res = CliRunner().invoke(cli, ["train", "--help"])
    assert res.exit_code == 0
    for opt in ("--model", "--weights", "--data", "--budget", "--metric", "--kd", "--resume",
                "--teacher-weights", "--search-epochs", "--finetune-epochs", "--amp"):  # fmt: skip
        assert opt in res.output
    demo = CliRunner().invoke(cli, ["demo", "--help"])
    assert demo.exit_code == 0 and "--out" in demo.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "1.5"], "error: budget must be in (0, 1]"),
        (["--data", "/nonexistent/images"], "error: dataset folder not found: /nonexistent/images"),
        (["--metric", "latency"], "error: metric 'latency' needs a latency table"),
        (["--resume", "/nonexistent/run"], "error: /nonexistent/run holds no uvc run"),
        (["--model", "missing.json"], "error: file not found: missing.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr
    assert "Traceback" not in res.output


def _train_args(out: Path, spec: Path) -> list[str]:
    return [
        "train", "--model", str(spec), "--data", "digits", "--out", str(out),
        "--teacher-epochs", "1", "--search-epochs", "3", "--warmup-epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "128", "--lr", "3e-3", "--device", "cpu",
        "--seed", "3", "--no-progress",
    ]  # fmt: skip


def test_kill_and_resume_gives_the_same_architecture(tmp_path: Path) -> None:
    spec = ViTSpec.uniform(2, 32, 2, 2.0, img_size=16, patch_size=4, num_classes=10)
    spec_file = spec.save(tmp_path / "tiny.json")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # One thread, as in this test process (conftest), so both runs compute bit for bit alike.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*UVC, *_train_args(killed, spec_file)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    state: dict[str, bool] = {}

    def kill_at_first_search_checkpoint() -> None:
        deadline = time.time() + 90
        while proc.poll() is None and time.time() < deadline:
            if (killed / "search.pt").exists():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
        state["final_before_kill"] = (killed / "final.pt").exists()

    watcher = threading.Thread(target=kill_at_first_search_checkpoint)
    watcher.start()
    # Meanwhile, the uninterrupted reference run, in this process (no second start-up cost).
    ref = CliRunner().invoke(cli, _train_args(straight, spec_file))
    watcher.join()
    assert ref.exit_code == 0, ref.output
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert (killed / "search.pt").exists() and not state["final_before_kill"]

    res = CliRunner().invoke(cli, ["train", "--resume", str(killed)])
    assert res.exit_code == 0, res.output
    assert ViTSpec.load(killed / "spec.json") == ViTSpec.load(straight / "spec.json")
    assert (killed / "keep.json").read_text() == (straight / "keep.json").read_text()
    assert "final.pt" in res.stdout
    # The search continued from its checkpoint: no search epoch was run twice.
    epochs = [r["epoch"] for r in read_log(killed / "log.jsonl") if r.get("kind") == "search_epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 2
    a = load_checkpoint(straight / "final.pt").state_dict
    b = load_checkpoint(killed / "final.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the whole job ends bit-identical


def test_progress_bars_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvc.cli.app import show_progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert show_progress(None) is False and show_progress(True) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress(None) is True and show_progress(False) is False


def test_a_train_into_a_log_file_writes_no_bar_refreshes(tmp_path: Path) -> None:
    """Without a terminal (a log file, CI), no tqdm refresh lines: the per-epoch log lines only."""
    spec = ViTSpec.uniform(2, 32, 2, 2.0, img_size=16, patch_size=4, num_classes=10)
    args = _train_args(tmp_path / "run", spec.save(tmp_path / "tiny.json"))
    args.remove("--no-progress")
    log = tmp_path / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as f:
        subprocess.run([*UVC, *args], cwd=ROOT, env=env, stdout=f, stderr=f, check=True)
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text
    assert "finetune epoch 1/1" in text and "search epoch" in text
