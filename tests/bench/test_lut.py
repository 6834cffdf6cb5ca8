"""Latency tables: measured grids round-trip through uvc.arch.cost.LatencyTable and predict
models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.bench.lut import (
    LutConfig,
    build_lut,
    default_frame,
    default_grid,
    frame_spec,
    lut_error,
    random_specs,
)
from uvc.bench.timer import TimingConfig

from tests.helpers import tiny_spec
from uvc.arch.cost import LatencyTable
from uvc.arch.spec import BlockSpec
from uvc.errors import SpecError

TINY_TIMING = TimingConfig(warmup=1, rounds=1, reps=2)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[LutConfig, LatencyTable, Path]:
    config = LutConfig(
        spec=tiny_spec(),
        heads=(1, 4),
        qk_dims=(4, 8),
        v_dims=(4, 10),
        mlp_dims=(16, 96),
        threads=1,
        timing=TINY_TIMING,
    )
    out = tmp_path_factory.mktemp("lut") / "lut.json"
    table, err = build_lut(config, out, check_specs=2)
    assert err is not None
    return config, table, out


def test_table_round_trips_through_json(measured: tuple[LutConfig, LatencyTable, Path]) -> None:
    _, table, path = measured
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.embed_dim == 32 and loaded.tokens == tiny_spec().num_tokens
    assert loaded.meta["backend"] == "eager" and loaded.meta["batch"] == 1
    assert loaded.attn_ms.shape == (2, 2, 2) and loaded.mlp_ms.shape == (2,)
    assert bool((loaded.attn_ms > 0).all()) and bool((loaded.mlp_ms > 0).all())
    assert loaded.fixed_ms > 0


def test_interpolation_hits_grid_points_and_sums_blocks(
    measured: tuple[LutConfig, LatencyTable, Path],
) -> None:
    _, table, _ = measured
    t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    assert float(table.attn_ms_at(t(4), t(8), t(10))) == pytest.approx(
        float(table.attn_ms[1, 1, 1])
    )
    assert float(table.mlp_ms_at(t(16))) == pytest.approx(float(table.mlp_ms[0]))
    mid = float(table.mlp_ms_at(t(56)))  # halfway between 16 and 96
    assert mid == pytest.approx(float(table.mlp_ms.mean()))
    spec = tiny_spec(blocks=(BlockSpec(4, 8, 10, 96), BlockSpec(0, 0, 0, 16)))
    expected = table.fixed_ms + float(table.attn_ms[1, 1, 1] + table.mlp_ms[1] + table.mlp_ms[0])
    assert table.model_ms(spec) == pytest.approx(expected)


def test_lut_error_structure(measured: tuple[LutConfig, LatencyTable, Path]) -> None:
    config, table, _ = measured
    specs = random_specs(config.spec, 2, seed=3)
    err = lut_error(table, specs, config)
    assert len(err.predicted_ms) == len(err.measured_ms) == 2
    assert all(m > 0 for m in err.measured_ms)
    assert min(err.rel_errors) <= err.median_rel_error <= max(err.rel_errors)


def test_random_specs_are_valid_compressions() -> None:
    spec = tiny_spec()
    specs = random_specs(spec, 6, seed=0)
    assert len({s.to_json() for s in specs}) > 1
    for s in specs:
        assert s.embed_dim == spec.embed_dim and s.depth == spec.depth
        for b, full in zip(s.blocks, spec.blocks, strict=True):
            assert b.heads <= full.heads and b.mlp_dim <= full.mlp_dim


def test_grids_and_frames() -> None:
    assert default_grid(3, step=1) == (1, 2, 3)
    assert default_grid(64, low=8) == (8, 32, 64)
    assert default_grid(768, 4, low=16) == (16, 264, 520, 768)
    assert frame_spec(192, 197).num_tokens == 197
    assert default_frame(384, 197).blocks[0] == BlockSpec(6, 64, 64, 1536)
    with pytest.raises(SpecError, match="square"):
        frame_spec(192, 100)
    cfg = LutConfig.for_spec(default_frame(192, 197))
    assert cfg.heads == (1, 2, 3) and cfg.mlp_dims[-1] == 768


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="increasing"):
        LutConfig(spec=tiny_spec(), heads=(2, 1))
    with pytest.raises(ValueError, match="not ort-trt"):
        LutConfig(spec=tiny_spec(), backend="ort-trt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device cuda"):
        LutConfig(spec=tiny_spec(), backend="trt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="statistic"):
        LutConfig(spec=tiny_spec(), statistic="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exporter"):
        LutConfig(spec=tiny_spec(), backend="ort", exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LutConfig(spec=tiny_spec(), batch=0)


def test_ort_table_times_exported_graphs(tmp_path: Path) -> None:
    """--backend ort: every sub-layer is its own ONNX graph run by ONNX Runtime, and the check's
    whole models are the exported graphs too; the per-call overhead is taken out of each point."""
    from uvc.bench.lut import CallOverhead, export_module

    config = LutConfig(
        spec=tiny_spec(),
        backend="ort",
        exporter="torchscript",
        statistic="min",
        heads=(1, 4),
        qk_dims=(4, 8),
        v_dims=(4, 8),
        mlp_dims=(16, 96),
        threads=1,
        timing=TINY_TIMING,
    )
    table, err = build_lut(config, tmp_path / "ort_lut.json", check_specs=2)
    loaded = LatencyTable.load(tmp_path / "ort_lut.json")
    assert loaded.meta["backend"] == "ort" and loaded.fixed_ms > 0
    assert bool((loaded.attn_ms >= 0).all()) and bool((loaded.mlp_ms >= 0).all())
    assert err is not None and all(m > 0 for m in err.measured_ms)
    # Sub-layers are >= 0 after the overhead is taken out (clamped: on a loaded machine a tiny
    # sub-layer can time below the overhead probe), so a model predicts at least its fixed parts.
    assert table.model_ms(random_specs(config.spec, 1)[0]) >= table.fixed_ms
    # The overhead probe exports and runs like any sub-layer: one (batch, dim) output per call.
    import onnxruntime as ort

    path = export_module(CallOverhead(), (5, 32), tmp_path / "o.onnx", "torchscript")
    out = ort.InferenceSession(str(path)).run(None, {"x": torch.ones(3, 5, 32).numpy()})[0]
    assert out.shape == (3, 32)


@pytest.mark.gpu
def test_trt_table_builds_an_engine_per_graph(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch: TensorRT engines cannot be built here")
    config = LutConfig(
        spec=tiny_spec(),
        backend="trt",
        device="cuda",
        exporter="torchscript",
        heads=(1, 4),
        qk_dims=(4, 8),
        v_dims=(4, 8),
        mlp_dims=(16, 96),
        timing=TINY_TIMING,
    )
    table, err = build_lut(config, tmp_path / "trt_lut.json", check_specs=1)
    assert LatencyTable.load(tmp_path / "trt_lut.json").meta["backend"] == "trt"
    assert table.fixed_ms > 0 and err is not None and err.measured_ms[0] > 0
