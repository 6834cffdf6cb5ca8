"""Latency tables with an embedding-width axis (version 2) and NViT under a latency budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from uvc.bench.lut import LutConfig, build_lut, random_specs
from uvc.bench.timer import TimingConfig

from tests.helpers import tiny_spec
from uvc.arch.cost import LatencyTable
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec
from uvc.errors import SpecError
from uvc.methods.search import SearchConfig, run_search
from uvc.train.distill import DistillConfig, DistillLoss


@pytest.fixture(scope="module")
def table_v2(tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, Path]:
    config = LutConfig(spec=tiny_spec(), heads=(1, 4), qk_dims=(1, 8), v_dims=(1, 10),
                       mlp_dims=(1, 96), embed_dims=(8, 32), threads=1,
                       timing=TimingConfig(warmup=1, rounds=1, reps=2))  # fmt: skip
    out = tmp_path_factory.mktemp("lut") / "lut.json"
    table, err = build_lut(config, out, check_specs=2)
    assert err is not None and len(err.measured_ms) == 2
    return table, out


def test_v2_table_round_trips_and_interpolates_over_the_embed_width(
    table_v2: tuple[LatencyTable, Path],
) -> None:
    table, path = table_v2
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict() and loaded.to_dict()["version"] == 2
    assert loaded.embed_grid == (8.0, 32.0) and loaded.attn_ms.shape == (2, 2, 2, 2)
    assert loaded.mlp_ms.shape == (2, 2) and loaded.embed_fixed_ms.shape == (2,)  # type: ignore[union-attr]
    t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
    # Without a width: the reference (full) width, as a version-1 table answers.
    assert float(loaded.attn_ms_at(t(4), t(8), t(10))) == pytest.approx(
        float(loaded.attn_ms[1, 1, 1, 1])
    )
    assert float(loaded.mlp_ms_at(t(96), embed=8)) == pytest.approx(float(loaded.mlp_ms[0, 1]))
    mid = float(loaded.mlp_ms_at(t(96), embed=20))  # halfway between 8 and 32
    assert mid == pytest.approx(float(loaded.mlp_ms[:, 1].mean()))
    narrow = tiny_spec(embed_dim=8, blocks=(BlockSpec(4, 8, 10, 96),))
    want = float(loaded.embed_fixed_ms[0] + loaded.attn_ms[0, 1, 1, 1] + loaded.mlp_ms[0, 1])  # type: ignore[index]
    assert loaded.model_ms(narrow) == pytest.approx(want)
    with pytest.raises(SpecError, match=r"embed_dim 8\.\.32"):
        loaded.model_ms(tiny_spec(embed_dim=40))
    # The prediction-error check visits narrower embed widths too.
    assert any(s.embed_dim < 32 for s in random_specs(tiny_spec(), 6, 0, min_embed=8))


def test_config_needs_the_models_width_on_the_embed_axis() -> None:
    with pytest.raises(ValueError, match="must include the model's width"):
        LutConfig(spec=tiny_spec(), embed_dims=(8, 16))


def _smooth_table(path: Path) -> LatencyTable:
    """A version-2 table whose latency grows with every width (a measured tiny grid is noisy)."""
    e, h, q, v, m = (8.0, 32.0), (1.0, 4.0), (1.0, 8.0), (1.0, 10.0), (1.0, 96.0)
    attn = [[[[a * b * (2 * c + d) * 1e-3 + 0.01 for d in v] for c in q] for b in h] for a in e]
    data = {"format": "uvc-latency-lut", "version": 2, "unit": "ms", "embed_dim": 32,
            "tokens": tiny_spec().num_tokens, "fixed_ms": 0.1,
            "embed": {"embed_dim": e, "fixed_ms": [0.05, 0.1]},
            "attn": {"heads": h, "qk_dim": q, "v_dim": v, "ms": attn},
            "mlp": {"mlp_dim": m, "ms": [[a * b * 2e-3 + 0.01 for b in m] for a in e]}}  # fmt: skip
    table = LatencyTable.from_dict(data)
    table.save(path)
    return table


def test_nvit_prunes_the_embedding_under_a_latency_budget(tmp_path: Path) -> None:
    table = _smooth_table(tmp_path / "lut.json")
    torch.manual_seed(0)
    spec = tiny_spec()
    model, teacher = ViT(spec), ViT(spec)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(4)]  # fmt: skip
    cfg = SearchConfig(method="nvit", budget=0.6, metric="latency", lut=str(tmp_path / "lut.json"),
                       epochs=2, warmup_epochs=1, nvit_interval=1, nvit_chunk=(4, 1, 1, 1, 8),
                       progress=False)  # fmt: skip
    res = run_search(model, teacher, data, None, DistillLoss(DistillConfig()), cfg, None,
                     device=torch.device("cpu"))  # fmt: skip
    ratio = table.model_ms(res.spec) / table.model_ms(spec)
    assert 0.6 * 0.99 <= ratio <= 0.6 and res.cost_final == pytest.approx(ratio)
    assert res.spec.embed_dim < spec.embed_dim  # the v2 table prices narrower widths


def test_nvit_stays_on_the_tables_embed_axis(tmp_path: Path) -> None:
    from uvc.methods.nvit.method import embed_floor
    from uvc.pipeline.preflight import budget_floor, load_lut

    _smooth_table(tmp_path / "lut.json")
    table = load_lut(str(tmp_path / "lut.json"), tiny_spec())  # a v2 table passes the checks
    assert embed_floor(32, table, 1) == 8 and embed_floor(32, None, 4) == 4
    floor = budget_floor(tiny_spec(), "latency", table, 1, "nvit")
    assert 0 < floor.ratio < 1  # priced at the narrowest width the table covers
