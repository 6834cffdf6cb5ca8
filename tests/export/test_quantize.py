"""INT8 quantization: the calibration split, the ONNX Runtime QDQ graph, the accuracy check, and
``uvc export --int8`` (artifacts, exit 1 on a drop, exit 2 on bad input, nothing left behind)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from uvc.export.calibration import MIN_HELD_OUT, load_calibration, plan_calibration
from uvc.export.onnx import Exporter, export_onnx, ort_session
from uvc.export.quant_export import onnx_logits
from uvc.export.quantize import Int8Options, fp32_nodes, quantize_int8
from uvc.export.validate import AccuracyDropError, accuracy_check

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.cli import cli
from uvc.errors import DataError
from uvc.files.checkpoint import Checkpoint, save_checkpoint
from uvc.train.data import DigitsDataset

FAST = ["--exporter", "torchscript"]


@pytest.fixture(scope="module")
def digits_model() -> ViT:
    """A tiny ViT trained for a few epochs on digits (about 90% top-1): INT8 has real
    accuracy to keep, unlike a random model whose logits are near ties."""
    torch.manual_seed(0)
    model = ViT(tiny_spec())
    data = DigitsDataset(32, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4):
        order = torch.randperm(len(data))
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(data.images[idx]), data.targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_ckpt(digits_model: ViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    return save_checkpoint(path, Checkpoint(digits_model.spec, digits_model.state_dict()))


def _folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def _run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# --- the calibration split --------------------------------------------------------------------


def test_train_test_folder_calibrates_on_train_and_holds_out_test(tmp_path: Path) -> None:
    _folder(tmp_path / "d" / "train", 10, 5)
    _folder(tmp_path / "d" / "test", 10, 12, seed=1)
    plan = plan_calibration(tmp_path / "d", num_classes=10, n_calib=20)
    assert plan.n_calib == 20 and plan.n_held_out == 120  # all held-out images (<= 1000)
    assert all("train" in str(p) for p, _ in plan.calib)
    assert all("test" in str(p) for p, _ in plan.held_out)
    images = load_calibration(plan, 32, 3)
    assert images.calib.shape == (20, 3, 32, 32) and images.held_out.shape == (120, 3, 32, 32)
    assert images.labels.tolist() == [c for _, c in plan.held_out]


def test_single_tree_is_split_into_disjoint_parts(tmp_path: Path) -> None:
    root = _folder(tmp_path / "one", 4, 40)
    plan = plan_calibration(root, num_classes=4, n_calib=30, n_held_out=100)
    calib, held = {p for p, _ in plan.calib}, {p for p, _ in plan.held_out}
    assert len(calib) == 30 and len(held) == 100 and not calib & held
    assert plan.describe()["disjoint"] is True


@pytest.mark.parametrize(
    ("classes", "kwargs", "message"),
    [
        (3, {"n_calib": 8}, "has 3 classes, the model has 10"),
        (10, {"n_calib": 500}, "500 were asked"),
        (10, {"n_calib": 8, "n_held_out": 5000}, "5000 asked"),
        (10, {"n_calib": 8, "n_held_out": 10}, f"at least {MIN_HELD_OUT}"),
    ],
)
def test_bad_calibration_folders_are_refused(
    tmp_path: Path, classes: int, kwargs: dict, message: str
) -> None:
    root = _folder(tmp_path / "f", classes, 15)
    with pytest.raises(DataError, match=message):
        plan_calibration(root, num_classes=10, **kwargs)


def test_digits_calibrate_on_the_training_part() -> None:
    plan = plan_calibration("digits", num_classes=10, n_calib=64)
    images = load_calibration(plan, 32, 3)
    assert images.calib.shape == (64, 3, 32, 32)
    assert len(images.labels) == len(DigitsDataset(32, train=False))  # 359, all held out
    with pytest.raises(DataError, match="has 10 classes, the model has 5"):
        plan_calibration("digits", num_classes=5, n_calib=8)


# --- the INT8 graph ---------------------------------------------------------------------------


def test_int8_graph_quantizes_weighted_matmuls_and_keeps_the_rest_fp32(
    digits_model: ViT, tmp_path: Path
) -> None:
    src = export_onnx(digits_model, tmp_path / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    calib = DigitsDataset(32, train=True).images[:48]
    graph = quantize_int8(src, tmp_path / "model.int8.onnx", calib)
    # Per block: q/k/v (packed), proj, fc1, fc2 in INT8; both attention products and the head not.
    blocks = len(digits_model.spec.blocks)
    assert len(graph.quantized) == 4 * blocks
    reasons = sorted(graph.fp32.values())
    assert reasons.count("attention product (activation x activation)") == 2 * blocks
    assert reasons.count("classifier head") == 1
    proto = onnx.load(str(graph.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization", "Softmax"} <= ops
    weights = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:  # per-channel INT8 weights: one scale per output column
        if n.op_type == "DequantizeLinear" and n.input[0] in weights:
            w, scale = weights[n.input[0]], weights[n.input[1]]
            assert w.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [w.dims[1]]
    x = DigitsDataset(32, train=False).images[:64]
    with torch.no_grad():
        ref = digits_model(x)
    out = onnx_logits(graph.path, x)
    agree = (out.argmax(1) == ref.argmax(1)).float().mean()
    assert agree >= 0.95 and (out - ref).abs().max() < 0.5 * ref.abs().max()


def test_quantize_head_puts_the_head_in_int8(digits_model: ViT, tmp_path: Path) -> None:
    src = export_onnx(digits_model, tmp_path / "model.onnx", exporter=Exporter.TORCHSCRIPT)
    assert "classifier head" in fp32_nodes(src).values()
    assert "classifier head" not in fp32_nodes(src, Int8Options(quantize_head=True)).values()


def test_accuracy_check_measures_the_drop_and_refuses_beyond_the_bound() -> None:
    labels = torch.arange(200) % 10
    ref = torch.nn.functional.one_hot(labels, 10).float()
    out = ref.clone()
    out[:5] = torch.nn.functional.one_hot((labels[:5] + 1) % 10, 10).float()  # 5 of 200 wrong
    check = accuracy_check(ref, out, labels, name="m", runtime="r", max_drop=3.0)
    assert check.top1_fp32 == 100.0 and check.top1 == 97.5
    assert check.drop == pytest.approx(2.5) and check.agreement == 97.5
    assert check.drop_ci[0] <= 2.5 <= check.drop_ci[1]
    with pytest.raises(AccuracyDropError, match=r"loses 2\.50 top-1 points"):
        accuracy_check(ref, out, labels, name="m", runtime="r", max_drop=2.0)


# --- uvc export --int8 ------------------------------------------------------------------------


def test_export_int8_writes_a_checked_int8_graph(digits_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _run(
        digits_ckpt, "--out", out, "--int8", "--calib-data", "digits", "--calib-images", "48", *FAST
    )
    assert code == 0, output
    assert (out / "model.int8.onnx").is_file() and (out / "model.onnx").is_file()
    summary = json.loads((out / "export.json").read_text())
    q = summary["quantization"]
    assert q["data"]["calibration"] == {"part": "digits (training part)", "images": 48}
    assert q["data"]["held_out"]["images"] == 359
    assert q["int8"]["calibration"] == "percentile" and q["int8"]["int8_nodes"] == 12
    check = summary["validation"]["int8_onnx"]
    assert check["images"] == 359 and check["drop"] <= 1.0 and check["agreement"] >= 95.0
    assert summary["artifacts"]["onnx_int8"] == "model.int8.onnx"
    # The graph runs like any export: same I/O, dynamic batch.
    sess = ort_session(out / "model.int8.onnx")
    (y,) = sess.run(None, {"images": np.zeros((3, 3, 32, 32), np.float32)})
    assert y.shape == (3, 10)


def test_export_int8_beyond_the_drop_bound_exits_1_and_writes_nothing(
    digits_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvc.export.quant_export as qe

    real = qe.onnx_logits
    # The INT8 graph is built for real; its held-out logits are then shuffled across images,
    # as a broken quantization would leave them.
    monkeypatch.setattr(qe, "onnx_logits", lambda p, x, t=None: real(p, x).roll(7, dims=0))
    out = tmp_path / "out"
    code, output = _run(
        digits_ckpt, "--out", out, "--int8", "--calib-data", "digits", "--calib-images", "16", *FAST
    )
    assert code == 1, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--max-int8-drop 1" in errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8"], "give --calib-data"),
        (["--int8", "--calib-data", "WRONG"], "has 3 classes, the model has 10"),
        (["--int8", "--calib-data", "WRONG", "--calib-images", "999"], "has 3 classes"),
        (["--int8", "--calib-data", "FEW", "--calib-images", "999"], "999 were asked"),
        (["--trt-quant", "int4", "--calib-data", "digits"], "cannot parse 'int4'"),
        (["--calib-images", "8", "--calib-data", "digits"], "only apply with --int8"),
    ],
)
def test_export_int8_bad_input_is_one_line_exit_2(
    digits_ckpt: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    folders = {"WRONG": _folder(tmp_path / "wrong", 3, 4), "FEW": _folder(tmp_path / "few", 10, 3)}
    args = [str(folders.get(a, a)) for a in args]
    out = tmp_path / "out"
    code, output = _run(digits_ckpt, "--out", out, *args, *FAST)
    assert code == 2, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_int8_with_an_onnxruntime_too_old_is_refused(
    digits_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.12.0")
    out = tmp_path / "out"
    code, output = _run(digits_ckpt, "--out", out, "--int8", "--calib-data", "digits", *FAST)
    assert code == 2 and "needs onnxruntime >= 1.16" in output and "1.12.0" in output
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("modelopt") is not None,
    reason="nvidia-modelopt is installed here: its absence cannot be observed",
)
def test_trt_quant_without_modelopt_is_refused(digits_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--trt-quant", "int8", "--calib-data", "digits", *FAST]
    code, output = _run(digits_ckpt, "--out", out, *args)
    assert code == 2 and "uvc[quant-gpu]" in output
    assert not out.exists()
