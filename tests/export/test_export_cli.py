"""``uvc export``: artifacts, search checkpoints, and bad input -> one-line error, clean --out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from uvc.export.onnx import ort_session

from tests.helpers import tiny_spec
from uvc.arch.cost import macs
from uvc.arch.keep import random_keep, spec_after
from uvc.arch.model import ViT
from uvc.cli import cli
from uvc.files.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

FAST = ["--exporter", "torchscript"]  # ~10x faster than dynamo; dynamo is tested in test_onnx


def _run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def spec_json(tmp_path: Path) -> Path:
    return tiny_spec().save(tmp_path / "tiny.json")


def test_export_spec_with_fp16(tmp_path: Path, spec_json: Path) -> None:
    out = tmp_path / "out"
    code, output = _run(spec_json, "--out", out, "--fp16", "--calib-data", "digits", *FAST)
    assert code == 0, output
    files = {p.name for p in out.iterdir() if p.name != ".uvc-run.json"}
    assert files == {"model.pt", "spec.json", "model.onnx", "model.fp16.onnx", "export.json"}
    assert _leftovers(tmp_path) == []
    summary = json.loads((out / "export.json").read_text())
    assert summary["versions"]["onnx"] and summary["versions"]["onnxruntime"]
    assert summary["onnx"]["opset"] == 17 and summary["onnx"]["external_data"] is False
    assert "digits" in summary["validation_inputs"]
    val = summary["validation"]
    assert [b["batch"] for b in val["onnx"]["batches"]] == [1, 8]
    assert val["onnx"]["max_abs"] <= 1e-4 and val["onnx"]["top1_agreement"] == 1.0
    assert val["onnx_fp16"]["min_cosine"] > 0.99
    # The checkpoint holds the exact weights the graph was made from.
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.spec == tiny_spec()
    model = ViT(ckpt.spec).eval()
    model.load_state_dict(ckpt.state_dict)
    x = torch.randn(3, 3, 32, 32)
    (got,) = ort_session(out / "model.onnx").run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(model(x), torch.from_numpy(got), atol=1e-5)


def test_search_checkpoint_is_materialized(tmp_path: Path) -> None:
    spec = tiny_spec()
    model = ViT(spec)
    keep = random_keep(spec, 0.5, seed=1, drop_mlp=(0,))
    path = save_checkpoint(
        tmp_path / "search.pt",
        Checkpoint(
            spec, model.state_dict(), {"kind": "search"}, {"keep": [k.to_dict() for k in keep]}
        ),
    )
    out = tmp_path / "out"
    code, output = _run(path, "--out", out, *FAST)
    assert code == 0, output
    exported = load_checkpoint(out / "model.pt").spec
    assert exported == spec_after(spec, keep)
    summary = json.loads((out / "export.json").read_text())
    assert summary["source"].startswith("search checkpoint")
    assert summary["macs"] == macs(exported) < macs(spec)

    # Exporting the exported dense checkpoint again replaces the previous export.
    code, output = _run(out / "model.pt", "--out", out, "--no-onnx", *FAST)
    assert code == 0, output
    names = {p.name for p in out.iterdir()}
    assert names == {".uvc-run.json", "model.pt", "spec.json", "export.json"}
    assert _leftovers(tmp_path) == []


def test_search_checkpoint_with_keep_json(tmp_path: Path) -> None:
    """uvc.methods.search writes search.pt without a keep-set and keep.json beside it."""
    spec = tiny_spec()
    keep = random_keep(spec, 0.5, seed=2)
    run = tmp_path / "run"
    path = save_checkpoint(
        run / "search.pt",
        Checkpoint(spec, ViT(spec).state_dict(), {"kind": "search"}, {"kind": "uvc-search"}),
    )
    code, output = _run(path, "--out", tmp_path / "missing", "--no-onnx", *FAST)
    assert code == 2 and "keep.json" in _error_lines(output)[0]
    (run / "keep.json").write_text(json.dumps([k.to_dict() for k in keep]))
    code, output = _run(path, "--out", tmp_path / "out", "--no-onnx", *FAST)
    assert code == 0, output
    assert load_checkpoint(tmp_path / "out" / "model.pt").spec == spec_after(spec, keep)


def test_validation_failure_exits_1_and_keeps_out_clean(tmp_path: Path, spec_json: Path) -> None:
    out = tmp_path / "out"
    code, output = _run(spec_json, "--out", out, "--atol", "1e-12", *FAST)
    assert code == 1
    assert len(_error_lines(output)) == 1 and "--atol" in output
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failure_leaves_previous_export_untouched(tmp_path: Path, spec_json: Path) -> None:
    out = tmp_path / "out"
    assert _run(spec_json, "--out", out, *FAST)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(spec_json, "--out", out, "--atol", "1e-12", *FAST)[0] == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_a_checkpoint", "not a PyTorch checkpoint"),
        ("bad_weights", "do not match"),
        ("opset", "opset 16"),
        ("batch_range", "--max-batch"),
        ("unwritable", "cannot write"),
        ("foreign_folder", "not empty"),
        ("trt_without_onnx", "--no-onnx"),
        ("one_val_batch", "--val-batches"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, spec_json: Path, case: str, message: str) -> None:
    out = tmp_path / "out"
    args: list[str | Path] = [spec_json, "--out", out, *FAST]
    if case == "not_a_checkpoint":
        bad = tmp_path / "final.pt"
        bad.write_bytes(b"this is not a checkpoint")
        args[0] = bad
    elif case == "bad_weights":
        other = ViT(tiny_spec(embed_dim=48))
        torch.save(other.state_dict(), tmp_path / "w.pth")
        args += ["--weights", tmp_path / "w.pth"]
    elif case == "opset":
        args += ["--opset", "16"]
    elif case == "batch_range":
        args += ["--min-batch", "8", "--max-batch", "4"]
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
        args[2] = out
    elif case == "foreign_folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "trt_without_onnx":
        args += ["--trt", "--no-onnx"]
    elif case == "one_val_batch":
        args += ["--val-batches", "8"]
    code, output = _run(*args)
    assert code == 2, output
    errors = _error_lines(output)
    assert len(errors) == 1 and message in errors[0], output
    if case == "foreign_folder":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    elif case != "unwritable":
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_trt_without_tensorrt_names_the_gpu_extra(tmp_path: Path, spec_json: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message where it is absent")
    except ImportError:
        pass
    out = tmp_path / "out"
    code, output = _run(spec_json, "--out", out, "--trt", *FAST)
    assert code == 2
    (line,) = _error_lines(output)
    assert "uvc[gpu]" in line and "docker" in line.lower()
    assert not out.exists() and _leftovers(tmp_path) == []


def test_simplify_with_onnxslim(tmp_path: Path, spec_json: Path) -> None:
    pytest.importorskip("onnxslim", reason="onnxslim is the optional 'simplify' extra")
    out = tmp_path / "out"
    code, output = _run(spec_json, "--out", out, "--simplify", *FAST)
    assert code == 0, output
    summary = json.loads((out / "export.json").read_text())
    assert summary["onnx"]["simplified"] is True
    assert summary["validation"]["onnx"]["max_abs"] <= 1e-4
