"""``ort+int8`` rows: an export folder's ``model.int8.onnx`` is timed in the same rounds as the FP32
rows and paired with the baseline's FP32 ONNX Runtime row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.bench.harness import BenchConfig, BenchModel, load_target, run_benchmark
from uvc.bench.report import Row, fill_efficiency, format_table
from uvc.bench.timer import summarize

from tests.bench.conftest import FAST
from uvc.arch.model import ViT
from uvc.files.checkpoint import Checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[ViT, Path]:
    from uvc.export.onnx import Exporter, export_onnx
    from uvc.export.quantize import quantize_int8

    from tests.helpers import tiny_spec

    torch.manual_seed(0)
    model = ViT(tiny_spec()).eval()
    folder = tmp_path_factory.mktemp("int8")
    save_checkpoint(folder / "model.pt", Checkpoint(model.spec, model.state_dict()))
    src = export_onnx(model, folder / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    graph = quantize_int8(src, folder / "model.int8.onnx", torch.randn(16, 3, 32, 32))
    return model, graph.path


def _row(model: str, backend: str, median_ms: float) -> Row:
    return Row(
        model, backend, 8, "ok", 1000, 0, summary=summarize([median_ms / 1e3] * 5, 8, rounds=5)
    )


def test_int8_rows_pair_with_the_baselines_fp32_row() -> None:
    rows = [
        _row("base", "ort", 10.0),
        _row("base", "ort+int8", 5.0),  # the baseline's own INT8: 2x over its FP32
        _row("small", "ort", 8.0),
        _row("small", "ort+int8", 4.0),  # 2.5x over the baseline's FP32, not over its own
    ]
    fill_efficiency(rows, "base")
    assert [r.speedup for r in rows] == pytest.approx([1.0, 2.0, 1.25, 2.5])
    # Where the baseline ran its fused graph, INT8 rows pair with that (ort+opt).
    opt = [_row("base", "ort+opt", 9.0), _row("base", "ort+int8", 4.5)]
    fill_efficiency(opt, "base")
    assert opt[1].speedup == pytest.approx(2.0)


def test_export_folder_with_int8_gets_ort_int8_rows(
    int8_onnx: tuple[ViT, Path], tiny_model: ViT
) -> None:
    _, path = int8_onnx
    target = load_target(path.parent)
    assert target.onnx_int8 == path
    models = [target, BenchModel("other", tiny_model)]
    config = BenchConfig(backends=("ort", "eager"), batch_sizes=(1, 2), timing=FAST)
    result = run_benchmark(models, config)
    by = {(r.model, r.backend, r.batch): r for r in result.rows}
    label = target.label
    assert {k[1] for k in by if k[0] == label} == {"ort", "ort+int8", "eager"}
    assert ("other", "ort+int8", 1) not in by  # no model.int8.onnx: no INT8 rows
    for b in (1, 2):
        row = by[(label, "ort+int8", b)]
        assert row.ok and row.speedup_ci is not None
        assert row.summary is not None and row.summary.rounds == FAST.rounds
        # Quantization error, measured against the FP32 PyTorch model, recorded on the row.
        assert row.max_abs_diff is not None and 0 < row.max_abs_diff < 1.0
    table = format_table(result)
    assert f"{label} (baseline)  ort+int8" not in table and "ort+int8" in table


def test_int8_rows_only_on_the_cpu_fp32_run(int8_onnx: tuple[ViT, Path]) -> None:
    _, path = int8_onnx
    config = BenchConfig(backends=("eager",), batch_sizes=(1,), timing=FAST)
    rows = run_benchmark([load_target(path.parent)], config).rows
    assert [r.backend for r in rows] == ["eager"]
