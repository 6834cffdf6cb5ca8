"""``--optimize cpu``: the fusable form, ONNX Runtime's attention fusion, its checks, exactness."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from uvc.bench.harness import BenchConfig, bench_targets
from uvc.bench.timer import TimingConfig
from uvc.export.fusable import fusable_blocks, fusable_copy
from uvc.export.materialize import materialize
from uvc.export.onnx import Exporter, export_onnx, validate_onnx
from uvc.export.optimize import (
    FusionError,
    OptimizeOptions,
    ScaleError,
    attention_scales,
    optimize_for_cpu,
    optimize_onnx,
)

from tests.helpers import tiny_spec
from uvc.arch.keep import BlockKeep
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.cli import cli

TS = Exporter.TORCHSCRIPT  # ~10x faster to run than dynamo; dynamo is covered once below
EXACT = 1e-5


def _dense() -> ViT:
    torch.manual_seed(0)
    blocks = (BlockSpec(4, 8, 8, 64),) * 4
    return ViT(tiny_spec(blocks=blocks)).eval()


def _compressed() -> ViT:
    """Materialized from ``_dense``: qk != v, no attention, a single head, no MLP."""
    keep = (
        BlockKeep(heads=(0, 2, 3), qk=(1, 4, 6), v=(0, 2, 3, 5, 7), mlp=tuple(range(0, 64, 2))),
        BlockKeep(heads=(), qk=(), v=(), mlp=tuple(range(40))),
        BlockKeep(heads=(1,), qk=(0, 1, 2, 3), v=(2, 5), mlp=()),
        BlockKeep(heads=(0, 1), qk=tuple(range(8)), v=tuple(range(8)), mlp=(3, 9, 27)),
    )
    return materialize(_dense(), keep).eval()


def _inputs(spec: ViTSpec) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    c, size = spec.in_chans, spec.img_size
    return [torch.randn(b, c, size, size, generator=g) for b in (1, 5)]


def _optimize(model: ViT, tmp_path: Path, **kw: object):
    result = optimize_for_cpu(model, tmp_path / "model.opt.onnx", exporter=TS, **kw)
    report = validate_onnx(model, result.path, _inputs(model.spec))
    return result, report


def test_fusable_copy_computes_the_same_logits() -> None:
    model = _compressed()
    x = _inputs(model.spec)[1]
    with torch.no_grad():
        assert torch.allclose(fusable_copy(model)(x), model(x), atol=1e-6)


def test_dense_fuses_every_block_exactly(tmp_path: Path) -> None:
    result, report = _optimize(_dense(), tmp_path)
    # 4 attentions, 4 GELUs with their bias, 2 LayerNorms per block + the final one.
    assert result.fusions == {"Attention": 4, "LayerNormalization": 9, "BiasGelu": 4}
    assert report.max_abs <= EXACT
    # The optimized graph runs contrib ops only: no leftover attention arithmetic.
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert not ops & {"Softmax", "Erf", "Div"}


def test_compressed_fuses_every_block_with_attention(tmp_path: Path) -> None:
    model = _compressed()
    assert [(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in model.spec.blocks] == [
        (3, 3, 5, 32),
        (0, 0, 0, 40),
        (1, 4, 2, 0),
        (2, 8, 8, 3),
    ]
    result, report = _optimize(model, tmp_path)
    assert result.fusions["Attention"] == 3 == result.expected_attention
    assert result.fusions["BiasGelu"] == 3
    assert report.max_abs <= EXACT
    record = result.to_dict()["attention"]
    assert record["unfused_blocks"] == [{"block": 1, "reason": "no attention"}]
    # Materialization folded each original scale into W_q: the fused 1/sqrt(qk) is exact.
    assert record["max_scale_rel_error"] < 1e-6


def test_dynamo_graph_fuses_too(tmp_path: Path) -> None:
    model = _compressed()
    result = optimize_for_cpu(model, tmp_path / "m.onnx", exporter=Exporter.DYNAMO)
    assert result.fusions["Attention"] == 3
    assert validate_onnx(model, result.path, _inputs(model.spec)).max_abs <= EXACT


def test_a_block_with_another_scale_is_not_fused(tmp_path: Path) -> None:
    model = _dense()
    model.blocks[2].attn.scale *= 2  # the fused op would silently use 1/sqrt(qk) instead
    result, report = _optimize(model, tmp_path)
    assert result.fusions["Attention"] == 3
    assert report.max_abs <= EXACT
    (unfused,) = result.to_dict()["attention"]["unfused_blocks"]
    assert unfused["block"] == 2 and "scale" in unfused["reason"]


def test_a_graph_whose_scale_differs_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "fusable.onnx"
    export_onnx(fusable_copy(_dense()), src, exporter=TS)
    proto = onnx.load(str(src))
    scales = attention_scales(proto)
    assert len(scales) == 4 and all(abs(s - 8**-0.5) < 1e-7 for s in scales.values())
    # Point one block's Div at a doubled divisor: still the fusable pattern, another scale.
    div = next(n for n in proto.graph.node if n.op_type == "Div" and "blocks.1/" in n.name)
    proto.graph.initializer.append(
        numpy_helper.from_array(numpy_helper.to_array(_const(proto, div.input[1])) * 2, "div2")
    )
    div.input[1] = "div2"
    onnx.save(proto, str(src))
    with pytest.raises(ScaleError, match="refusing to fuse"):
        optimize_onnx(src, tmp_path / "out.onnx", expected_attention=4)
    assert not (tmp_path / "out.onnx").exists()


def test_an_unfusable_graph_fails_the_count_check(tmp_path: Path) -> None:
    # The plain export (packed qkv + Split, scale on q and k) is not what the fusion matches.
    src = export_onnx(_dense(), tmp_path / "model.onnx", exporter=TS)
    with pytest.raises(FusionError, match="fused 0 attention blocks, expected 4"):
        optimize_onnx(src, tmp_path / "out.onnx", expected_attention=4)


def test_skip_layer_norm_is_an_option(tmp_path: Path) -> None:
    result, report = _optimize(
        _compressed(), tmp_path, options=OptimizeOptions(skip_layer_norm=True)
    )
    assert result.fusions["SkipLayerNormalization"] > 0
    assert result.fusions["Attention"] == 3
    assert report.max_abs <= EXACT


@pytest.mark.parametrize(
    "variant", [{"layer_scale": True}, {"norm_placement": "post"}, {"act": "relu"}]
)
def test_spec_variants_fuse_exactly(tmp_path: Path, variant: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = ViT(tiny_spec(**variant)).eval()
    for name, p in model.named_parameters():
        if name.endswith("gamma"):  # layer scales folded into proj / fc2: make them matter
            p.data.uniform_(0.5, 1.5)
    result, report = _optimize(model, tmp_path)
    assert result.fusions["Attention"] == 3
    assert report.max_abs <= EXACT


def test_avg_pool_last_attention_without_a_norm_after_it(tmp_path: Path) -> None:
    spec = tiny_spec(
        class_token=False,
        pool="avg",
        fc_norm=True,
        blocks=(BlockSpec(2, 8, 8, 64), BlockSpec(2, 8, 8, 0)),
    )
    model = ViT(spec).eval()
    # No LayerNorm reads block 1's residual sum: ORT's fusion has nothing to anchor on.
    assert [b.fusable for b in fusable_blocks(model)] == [True, False]
    result, report = _optimize(model, tmp_path)
    assert result.fusions["Attention"] == 1 and report.max_abs <= EXACT


def test_cli_export_optimize_cpu(tmp_path: Path) -> None:
    spec = tiny_spec().save(tmp_path / "tiny.json")
    out = tmp_path / "out"
    args = ["export", str(spec), "--out", str(out), "--optimize", "cpu", "--exporter", TS.value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "model.pt",
        "spec.json",
        "model.onnx",
        "model.opt.onnx",
        "export.json",
    }
    summary = json.loads((out / "export.json").read_text())
    assert summary["artifacts"]["onnx_opt"] == "model.opt.onnx"
    opt = summary["optimize"]
    assert opt["target"] == "cpu" and opt["skip_layer_norm"] is False
    assert opt["attention"]["expected"] == opt["attention"]["fused"] == 3
    assert opt["fusions"]["Attention"] == 3
    assert summary["validation"]["onnx_opt"]["max_abs"] <= EXACT

    # uvc bench runs the optimized graph on ONNX Runtime's CPU provider and says so.
    config = BenchConfig(
        backends=("ort",), batch_sizes=(2,), timing=TimingConfig(warmup=1, rounds=2, reps=1)
    )
    (row,) = bench_targets([str(out)], config).rows
    assert (row.backend, row.status) == ("ort+opt", "ok") and row.max_abs_diff <= EXACT
    (out / "model.opt.onnx").unlink()
    (row,) = bench_targets([str(out)], config).rows
    assert (row.backend, row.status) == ("ort", "ok")


def test_cli_skip_layer_norm_needs_optimize(tmp_path: Path) -> None:
    spec = tiny_spec().save(tmp_path / "tiny.json")
    args = ["export", str(spec), "--out", str(tmp_path / "o"), "--skip-layer-norm"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "--skip-layer-norm is a fusion of --optimize cpu" in result.output


def _const(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for t in proto.graph.initializer:
        if t.name == name:
            return t
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return n.attribute[0].t
    raise AssertionError(f"no constant {name}")
