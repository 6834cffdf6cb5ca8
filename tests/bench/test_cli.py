"""``uvc bench`` and ``uvc lut``: help, exit codes, one-line errors, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from uvc.arch.model import ViT
from uvc.cli import cli

FAST = ["--batch-sizes", "1", "--threads", "1", "--warmup", "0", "--rounds", "1", "--reps", "2"]


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def spec_files(tiny_model: ViT, half_model: ViT, tmp_path: Path) -> tuple[str, str]:
    a = tiny_model.spec.save(tmp_path / "dense.json")
    b = half_model.spec.save(tmp_path / "half.json")
    return str(a), str(b)


@pytest.mark.parametrize("command", ["bench", "lut"])
def test_help(command: str) -> None:
    res = _run(command, "--help")
    assert res.exit_code == 0
    assert "Usage: cli " + command in res.output or f"{command} [OPTIONS]" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "x.json", "--backends", "warp"], "choices: eager, compile"),
        (["bench", "x.json", "--batch-sizes", "1,a"], "cannot parse"),
        (["bench", "missing.json"], "file not found"),
        (["bench", "x.json", "--batch-sizes", "0"], "batch sizes must be >= 1"),
        (["lut", "--out", "l.json"], "--model, or both --embed-dim and --tokens"),
        (["lut", "--embed-dim", "64", "--tokens", "100", "--out", "l.json"], "square"),
    ],
    ids=["backend", "batch-parse", "missing", "batch-zero", "lut-shape", "lut-tokens"],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    res = _run(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_check_exit_codes_and_outputs(spec_files: tuple[str, str], tmp_path: Path) -> None:
    dense, half = spec_files
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    base = ["bench", half, "--baseline", dense, "--backends", "eager", *FAST, "--rounds", "5"]
    ok = _run(*base, "--json", str(js), "--plot", str(png), "--check", "--min-efficiency", "0")
    assert ok.exit_code == 0, ok.output
    data = json.loads(js.read_text())
    assert "(baseline)" in ok.output and data["baseline"] == dense
    assert data["check"]["exit_code"] == 0 and len(data["check"]["passed"]) == 1
    row = next(r for r in data["rows"] if r["model"] == half)
    assert row["efficiency_ci"]["n"] == 5 and row["summary"]["rounds"] == 5
    assert png.read_bytes()[:4] == b"\x89PNG"
    # No compressed model is 1000x more efficient than its MACs: the whole interval is below.
    bad = _run(*base, "--check", "--min-efficiency", "1000")
    assert bad.exit_code == 1
    assert f"{half} / eager / batch 1" in bad.output and "whole 95% interval" in bad.output
    # One round is no evidence either way: inconclusive (exit 3), never a pass.
    one = _run(*base[:-2], "--rounds", "1", "--check", "--min-efficiency", "0")
    assert one.exit_code == 3, one.output
    assert "inconclusive: 1 rounds < 5" in one.output


def test_until_ci_adds_rounds_within_the_time_cap(spec_files: tuple[str, str]) -> None:
    dense, half = spec_files
    args = ["bench", half, "--baseline", dense, "--backends", "eager", *FAST, "--rounds", "2"]
    res = _run(*args, "--until-ci", "1e-9", "--ci-time", "0.5", "--check", "--statistic", "min")
    # An interval 1e-9 wide is never reached: rounds are added until the time cap, then stop.
    assert res.exit_code in (0, 1, 3), res.output
    assert "rounds < 5" not in res.output  # more than 2 rounds were run in 0.5 s
    assert "ratios of round mins" in res.output


def test_lut_command_writes_a_table(tmp_path: Path) -> None:
    out = tmp_path / "lut.json"
    res = _run("lut", "--embed-dim", "16", "--tokens", "5", "--threads", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["format"] == "uvc-latency-lut" and data["embed_dim"] == 16 and data["tokens"] == 5
