"""``uvc eval``: top-1 and paired comparisons of trained models; bad input -> one line, no file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.cli import cli
from uvc.files.checkpoint import Checkpoint, save_checkpoint
from uvc.train.data import DataConfig, build_data
from uvc.train.finetune import evaluate


def _checkpoint(path: Path, seed: int, **overrides: object) -> tuple[Path, ViT]:
    torch.manual_seed(seed)
    model = ViT(tiny_spec(**overrides))
    return save_checkpoint(path, Checkpoint(model.spec, model.state_dict())), model


def _run(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["eval", *map(str, args)])
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def test_eval_scores_each_model_and_compares_it_with_the_baseline(tmp_path: Path) -> None:
    a, model_a = _checkpoint(tmp_path / "a.pt", 0)
    b, model_b = _checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "eval.json"
    code, output = _run(a, b, "--data", "digits", "--baseline", b, "--json", out)
    assert code == 0, output
    report = json.loads(out.read_text())
    assert report["baseline"] == str(b)
    rows = {r["model"]: r for r in report["models"]}
    # The same figure the training loop's own evaluation gives on the digits validation split.
    val = build_data(DataConfig("digits", 32, 64)).val
    cpu = torch.device("cpu")
    assert rows[str(a)]["top1"] == evaluate(model_a, val, cpu)
    assert rows[str(b)]["top1"] == evaluate(model_b, val, cpu)
    assert rows[str(a)]["images"] == len(val.dataset) == 359
    vs = rows[str(a)]["vs_baseline"]
    assert abs(vs["diff"] - (rows[str(a)]["top1"] - rows[str(b)]["top1"])) < 1e-9
    changed = vs["only_baseline"] + vs["only_this"]
    assert abs(vs["diff"] - 100 * (vs["only_this"] - vs["only_baseline"]) / 359) < 1e-9
    assert 0 < changed <= 359 and vs["ci"][0] <= vs["diff"] <= vs["ci"][1]
    assert "vs_baseline" not in rows[str(b)]
    assert "(baseline)" in output.splitlines()[2]


def test_eval_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    a, _ = _checkpoint(tmp_path / "a.pt", 0)
    five, _ = _checkpoint(tmp_path / "five.pt", 0, num_classes=5)
    spec = tiny_spec().save(tmp_path / "spec.json")
    out = tmp_path / "eval.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((a, spec), "carries no trained weights"),
        ((a, "deit_tiny_patch16_224"), "carries no trained weights"),
        ((a, five), "has 5 classes, digits has 10"),
        ((a, a), "named twice"),
        ((a, tmp_path / "missing.pt"), "file not found"),
        ((a, empty), "not a uvc export"),
    ]
    for models, message in cases:
        code, output = _run(*models, "--data", "digits", "--json", out)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], output
        assert not out.exists()
    code, output = _run(a, "--data", tmp_path / "no-such-folder", "--json", out)
    assert code == 2 and "dataset folder not found" in output and not out.exists()


def test_eval_scores_an_exported_graph_with_its_folders_preprocessing(tmp_path: Path) -> None:
    from uvc.export.onnx import Exporter, export_onnx

    _, model = _checkpoint(tmp_path / "exp" / "model.pt", 0)
    export_onnx(model, tmp_path / "exp" / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    out = tmp_path / "eval.json"
    code, output = _run(tmp_path / "exp", tmp_path / "exp" / "model.onnx", "--data", "digits",
                        "--json", out)  # fmt: skip
    assert code == 0, output
    rows = json.loads(out.read_text())["models"]
    # ONNX Runtime on the FP32 graph scores what PyTorch scores, image for image.
    assert rows[0]["top1"] == rows[1]["top1"] and rows[1]["images"] == 359
    assert rows[1]["vs_baseline"]["only_baseline"] + rows[1]["vs_baseline"]["only_this"] <= 1
