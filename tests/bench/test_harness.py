"""The harness: interleaved sweeps, skipped rows with reasons, efficiency math, reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from uvc.bench.harness import BenchConfig, BenchModel, bench_targets, load_target, run_benchmark
from uvc.bench.report import (
    BenchResult,
    Row,
    check_problems,
    failing_rows,
    fill_efficiency,
    format_table,
)
from uvc.bench.runners import Runner, RunnerConfig
from uvc.bench.timer import TimingConfig, summarize

from tests.bench.conftest import FAST
from uvc.arch.model import ViT
from uvc.errors import BackendUnavailable, UvcError
from uvc.files.checkpoint import Checkpoint, save_checkpoint


def _row(model: str, backend: str, batch: int, median_ms: float, macs: int) -> Row:
    s = summarize([median_ms / 1e3] * 5, batch, rounds=5)  # 5 identical rounds
    return Row(model, backend, batch, "ok", macs, 0, summary=s)


def test_efficiency_math_on_synthetic_rows() -> None:
    rows = [
        _row("dense", "ort", 8, 10.0, 1000),
        _row("half", "ort", 8, 6.0, 500),  # speedup 1.667, MACs reduction 2 -> 0.833
        _row("half", "eager", 8, 5.0, 500),  # no baseline row for eager: left empty
        Row("quarter", "ort", 8, "skipped: no CUDA device", 250, 0),
    ]
    fill_efficiency(rows, "dense")
    dense, half, half_eager, skipped = rows
    assert dense.speedup == pytest.approx(1.0) and dense.efficiency == pytest.approx(1.0)
    assert half.speedup == pytest.approx(10 / 6)
    assert half.macs_reduction == pytest.approx(2.0)
    assert half.efficiency == pytest.approx(10 / 6 / 2)
    assert half_eager.efficiency is None and skipped.efficiency is None
    result = BenchResult({}, [], "dense", rows)
    assert failing_rows(result, 0.8) == []
    assert failing_rows(result, 0.9) == [half]
    assert failing_rows(result, 1.5) == [half]  # the baseline itself never fails


def test_run_benchmark_interleaves_and_reports_skips(bench_models: list[BenchModel]) -> None:
    config = BenchConfig(
        backends=("eager", "ort", "cudagraph", "trt"), batch_sizes=(1, 2), timing=FAST
    )
    result = run_benchmark(bench_models, config)
    assert result.baseline == "dense"
    assert len(result.rows) == 2 * 4 * 2  # every model x backend x batch has a row
    by = {(r.model, r.backend, r.batch): r for r in result.rows}
    for model in ("dense", "half"):
        for b in (1, 2):
            for backend in ("eager", "ort"):
                row = by[(model, backend, b)]
                assert row.ok, row.status
                assert row.summary is not None and row.summary.n == FAST.samples
                assert row.max_abs_diff is not None and row.max_abs_diff < 1e-3
                assert row.build_s is not None and row.prepare_s is not None
            assert by[(model, "cudagraph", b)].status.startswith("skipped: ")
            assert by[(model, "trt", b)].status.startswith("skipped: ")
            assert by[(model, "cudagraph", b)].summary is None
    half = by[("half", "eager", 2)]
    assert half.macs < by[("dense", "eager", 2)].macs
    assert half.efficiency == pytest.approx(half.speedup / half.macs_reduction)
    table = format_table(result)
    assert "dense (baseline)" in table and "skipped: cudagraph needs --device cuda" in table
    assert format_table(result, markdown=True).startswith("| model |")


def test_result_json_records_environment_and_samples(
    bench_models: list[BenchModel], tmp_path: Path
) -> None:
    config = BenchConfig(backends=("eager",), batch_sizes=(2,), threads=1, timing=FAST)
    path = run_benchmark(bench_models, config, baseline="half").save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    env = data["environment"]
    assert env["threads"] == 1 and env["precision"] == "fp32" and "torch" in env["versions"]
    assert data["baseline"] == "half"
    assert [m["label"] for m in data["models"]] == ["dense", "half"]
    row = data["rows"][0]
    assert len(row["summary"]["samples_ms"]) == FAST.samples
    assert row["summary"]["p10_ms"] <= row["summary"]["median_ms"] <= row["summary"]["p90_ms"]


def test_bad_baseline_and_duplicate_labels(bench_models: list[BenchModel]) -> None:
    config = BenchConfig(backends=("eager",), batch_sizes=(1,), timing=FAST)
    with pytest.raises(UvcError, match="baseline"):
        run_benchmark(bench_models, config, baseline="nope")
    with pytest.raises(UvcError, match="unique"):
        run_benchmark([bench_models[0], bench_models[0]], config)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        BenchConfig(backends=())
    with pytest.raises(ValueError):
        BenchConfig(batch_sizes=(0,))
    with pytest.raises(ValueError):
        BenchConfig(backends=("warp",))


def test_load_export_folder_and_checkpoint(tiny_model: ViT, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    tiny_model.spec.save(folder / "spec.json")
    ckpt = Checkpoint(tiny_model.spec, tiny_model.state_dict(), {}, {})
    save_checkpoint(folder / "model.pt", ckpt)
    (folder / "model.onnx").write_bytes(b"")
    bm = load_target(folder)
    assert bm.model.spec == tiny_model.spec and bm.onnx == folder / "model.onnx"
    assert bm.engine is None
    sd = bm.model.state_dict()
    assert all(sd[k].equal(v) for k, v in tiny_model.state_dict().items())
    with pytest.raises(UvcError, match="not an export"):
        load_target(tmp_path)


def test_bench_targets_loads_spec_files(tiny_model: ViT, half_model: ViT, tmp_path: Path) -> None:
    a, b = tiny_model.spec.save(tmp_path / "a.json"), half_model.spec.save(tmp_path / "b.json")
    config = BenchConfig(backends=("eager",), batch_sizes=(1,), timing=FAST)
    result = bench_targets([str(b)], config, baseline=str(a))
    assert result.baseline == str(a)
    assert {r.model for r in result.rows} == {str(a), str(b)}
    assert all(r.ok for r in result.rows)


def test_check_problems_names_rows_and_flags_empty_results() -> None:
    rows = [_row("dense", "ort", 8, 10.0, 1000), _row("half", "ort", 8, 8.0, 500)]
    fill_efficiency(rows, "dense")
    result = BenchResult({}, [], "dense", rows)
    assert check_problems(result, 0.5) == []
    (line,) = check_problems(result, 0.8)
    assert line == "efficiency 0.62 [0.62, 0.62] < 0.8 (whole 95% interval): half / ort / batch 8"
    only_baseline = BenchResult({}, [], "dense", rows[:1])
    assert "no row could be compared" in check_problems(only_baseline, 0.8)[0]


def test_until_ci_runs_extra_rounds_until_the_cap(bench_models: list[BenchModel]) -> None:
    timing = TimingConfig(warmup=0, rounds=2, reps=1, warmup_per_round=0)
    config = BenchConfig(backends=("eager",), batch_sizes=(1,), timing=timing)
    plain = run_benchmark(bench_models, config)
    assert {r.summary.rounds for r in plain.rows if r.summary} == {2}
    wide = replace(timing, until_ci=1e3)  # any interval is narrow enough: no extra round
    got = run_benchmark(bench_models, replace(config, timing=wide))
    assert {r.summary.rounds for r in got.rows if r.summary} == {2}
    narrow = replace(timing, until_ci=1e-9, ci_time_s=0.3)  # never narrow enough: the cap stops it
    got = run_benchmark(bench_models, replace(config, timing=narrow))
    n = {r.summary.rounds for r in got.rows if r.summary}
    assert len(n) == 1 and n.pop() > 2
    half = next(r for r in got.rows if r.model == "half")
    assert half.speedup_ci is not None and half.speedup_ci.n > 2


class _OutsideProfile(Runner):
    """A runner whose engine profile stops at batch 1 (like a TensorRT engine built for it)."""

    def _build(self) -> None:
        pass

    def prepare(self, batch: int) -> float:
        if batch > 1:
            raise BackendUnavailable(f"batch {batch} is outside the engine's profile [1, 1]")
        return 0.0

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10)


def test_batch_outside_a_profile_is_skipped_not_failed(
    bench_models: list[BenchModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvc.bench.harness as harness

    opened = lambda bm, cfg, be, wd: _OutsideProfile(bm.input_shape, RunnerConfig())  # noqa: E731
    monkeypatch.setattr(harness, "open_runner", opened)
    monkeypatch.setattr(harness, "_max_diff", lambda model, runner, x: 0.0)
    config = BenchConfig(backends=("eager",), batch_sizes=(1, 2), timing=FAST)
    rows = {(r.model, r.batch): r for r in run_benchmark(bench_models, config).rows}
    assert rows[("dense", 1)].ok and rows[("half", 1)].ok
    assert rows[("dense", 2)].status == "skipped: batch 2 is outside the engine's profile [1, 1]"


def test_ort_fp16_rows_run_on_the_cpu(bench_models: list[BenchModel]) -> None:
    # Models without model.fp16.onnx get one converted on the fly; rows are measured, not failed.
    config = BenchConfig(backends=("ort",), batch_sizes=(2,), precision="fp16", timing=FAST)
    rows = run_benchmark(bench_models, config).rows
    assert all(r.ok for r in rows), [r.status for r in rows]
    assert all(r.max_abs_diff is not None and r.max_abs_diff < 5e-2 for r in rows)
