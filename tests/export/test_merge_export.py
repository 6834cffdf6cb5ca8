"""Token merging through export: static-shape ONNX, ORT fusion, ``uvc export/train --merge``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from uvc.export.materialize import materialize
from uvc.export.onnx import Exporter, check_onnx, export_onnx, validate_onnx

from tests.helpers import tiny_spec
from uvc.arch.cost import macs
from uvc.arch.keep import random_keep
from uvc.arch.merge_schedule import with_merge
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.cli import cli


def _merged(merge=(8, 8, 4), **kw) -> ViT:
    spec = ViTSpec.uniform(3, 32, 2, img_size=32, patch_size=4, num_classes=10, **kw)
    return ViT(with_merge(spec, merge)).eval()


def _inputs() -> list[torch.Tensor]:
    return [torch.randn(1, 3, 32, 32), torch.randn(8, 3, 32, 32)]


def _static_dims(path: Path) -> tuple[set[str], set[int]]:
    """Symbolic dims and token counts (of (B, N, embed) values) after ORT's symbolic inference,
    which folds the Shape/Gather arithmetic the exporters write."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = SymbolicShapeInference.infer_shapes(onnx.load(str(path)), auto_merge=False)
    symbols, tokens = set(), set()
    for vi in proto.graph.value_info:
        dims = vi.type.tensor_type.shape.dim
        symbols |= {d.dim_param for d in dims if d.dim_param}
        if len(dims) == 3 and dims[2].dim_value == 32:
            tokens.add(dims[1].dim_value)
    return symbols, tokens


@pytest.mark.parametrize("exporter", [Exporter.TORCHSCRIPT, Exporter.DYNAMO])
@pytest.mark.parametrize("kw", [{"norm_placement": "post"}, {"pool": "avg", "reg_tokens": 1}])
def test_merged_model_exports_with_static_token_counts(tmp_path: Path, exporter, kw) -> None:
    import onnx

    model = _merged(**kw)
    path = export_onnx(model, tmp_path / "m.onnx", exporter=exporter)
    check_onnx(path, 17)
    report = validate_onnx(model, path, _inputs(), atol=1e-4)
    assert report.top1 == 1.0
    symbols, tokens = _static_dims(path)
    assert symbols <= {"batch", "2*batch"}  # 2*batch: the heads folded into the batch by SDPA
    n = model.spec.tokens_in
    assert {n(0), n(1), n(2), n(3)} <= tokens
    proto = onnx.load(str(path))
    topk = [node for node in proto.graph.node if node.op_type == "TopK"]
    assert len(topk) == 3  # one sort per merging block, its k a constant of the graph
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for node in proto.graph.node if node.op_type == "Constant" for o in node.output}
    assert all(node.input[1] in consts for node in topk)
    assert sum(node.op_type == "ScatterElements" for node in proto.graph.node) == 6


def test_dense_graph_has_no_merge_ops(tmp_path: Path) -> None:
    import onnx

    path = export_onnx(ViT(tiny_spec()).eval(), tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"TopK", "ScatterElements", "GatherElements", "Log", "ArgMax"}


@pytest.mark.parametrize(
    ("kw", "merge", "fused"),
    [({"norm_placement": "post"}, (0, 8, 4), 1), ({}, (0, 0, 4), 2), ({}, (4, 4, 4), 0)],
)
def test_optimize_cpu_fuses_what_merging_leaves(tmp_path: Path, kw, merge, fused) -> None:
    from uvc.export.optimize import optimize_for_cpu

    model = _merged(merge, **kw)
    res = optimize_for_cpu(model, tmp_path / "o.onnx", exporter=Exporter.TORCHSCRIPT)
    assert res.fusions.get("Attention", 0) == fused == sum(b.fusable for b in res.blocks)
    reasons = [b.reason for b in res.blocks if not b.fusable]
    assert all("merging" in r for r in reasons) and len(reasons) == 3 - fused
    validate_onnx(model, res.path, _inputs(), atol=1e-4)


def test_materialize_carries_the_schedule() -> None:
    model = _merged((8, 0, 4))
    dense = materialize(model, random_keep(model.spec, 0.5, seed=1))
    assert dense.spec.merge_r == (8, 0, 4)
    assert dense(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_export_merge_off_the_shelf(tmp_path: Path) -> None:
    spec_json = ViTSpec.uniform(2, 32, 2, img_size=32, patch_size=4, num_classes=10).save(
        tmp_path / "s.json"
    )
    out = tmp_path / "out"
    code, output = _invoke("export", spec_json, "--out", out, "--merge", "6,4")
    assert code == 0, output
    summary = json.loads((out / "export.json").read_text())
    spec = ViTSpec.load(out / "spec.json")
    assert spec.merge_r == (6, 4) and summary["macs"] == macs(spec)
    assert summary["validation"]["onnx"]["max_abs"] <= 1e-4


@pytest.mark.parametrize(
    ("merge", "message"),
    [
        ("40", "block 0 would merge 40 tokens"),
        ("4,4,4", "3 counts for a model of 2 blocks"),
        ("-2", ">= 0"),
        ("a", "one integer r"),
    ],
)
def test_bad_merge_exits_2_and_writes_nothing(tmp_path: Path, merge: str, message: str) -> None:
    spec_json = ViTSpec.uniform(2, 32, 2, img_size=32, patch_size=4, num_classes=10).save(
        tmp_path / "s.json"
    )
    code, output = _invoke("export", spec_json, "--out", tmp_path / "out", "--merge", merge)
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    code, output = _invoke(
        "train", "--model", spec_json, "--out", tmp_path / "run", "--merge", merge
    )
    assert code == 2 and message in output and not (tmp_path / "run").exists()


@pytest.mark.gpu
def test_tensorrt_engine_from_merged_onnx(tmp_path: Path) -> None:
    pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (pip install 'uvc[gpu]' on a GPU machine)"
    )
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch: TensorRT engines cannot be built here")
    from uvc.export.tensorrt import TrtBuildConfig, build_engine, validate_engine

    model = _merged(norm_placement="post")
    path = export_onnx(model, tmp_path / "m.onnx", exporter=Exporter.TORCHSCRIPT)
    cfg = TrtBuildConfig(min_batch=1, opt_batch=4, max_batch=8)
    built = build_engine(path, tmp_path / "m.engine", cfg)
    report = validate_engine(model, built.engine, _inputs(), atol=1e-3)
    assert report.top1 == 1.0
