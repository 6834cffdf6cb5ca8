"""The Python API: the README's example runs as written; compress takes other loaders/models."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import uvc
from uvc.errors import UvcError

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "the README lost its API example block"
    return m.group(1)


def test_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.manual_seed(0)
        exec(compile(_example(), "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    ratio = float(re.search(r"\(([\d.]+)x\)", out).group(1))
    assert 0.49 <= ratio <= 0.5
    assert (tmp_path / "compressed.pt").is_file() and (tmp_path / "compressed.onnx").is_file()
    assert uvc.load(tmp_path / "compressed.pt").spec == uvc.load(tmp_path / "compressed.pt").spec


def test_compress_reports_what_it_did() -> None:
    from uvc.arch.spec import ViTSpec

    torch.manual_seed(0)
    spec = ViTSpec.uniform(2, 32, 4, img_size=16, patch_size=8, num_classes=3)
    model = uvc.ViT(spec)
    data = TensorDataset(torch.randn(24, 3, 16, 16), torch.randint(0, 3, (24,)))
    records: list[dict] = []
    res = uvc.compress(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8),
                       budget=0.6, method="uniform", search_epochs=2, warmup_epochs=1,
                       finetune_epochs=1, progress=False, log_fn=records.append)  # fmt: skip
    assert res.macs_after / res.macs_before <= 0.6
    assert res.macs_after == uvc.cost(res.spec).macs and res.spec == res.model.spec
    assert res.params_after == sum(p.numel() for p in res.model.parameters())
    assert res.accuracy_before is not None and 0 <= res.accuracy_after <= 100
    assert any(r.get("kind") == "search_final" for r in records)
    assert not any(p.requires_grad is False for p in model.parameters())  # the input is untouched


def test_bad_settings_are_refused_up_front() -> None:
    model = uvc.ViT(uvc.ViTSpec.uniform(1, 16, 2, img_size=16, patch_size=8, num_classes=2))
    with pytest.raises(UvcError, match="unknown setting"):
        uvc.compress(model, [], search_epoch=3)
    with pytest.raises(UvcError, match="budget"):
        uvc.compress(model, [], budget=1.5)
    with pytest.raises(UvcError, match="method"):
        uvc.compress(model, [], method="magic")


def test_import_uvc_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, uvc; print('onnx' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_compress_never_writes_into_a_users_folder(tmp_path: Path) -> None:
    from uvc.files.rundir import RunDirError

    (tmp_path / "notes.md").write_text("mine")
    model = uvc.ViT(uvc.ViTSpec.uniform(1, 16, 2, img_size=16, patch_size=8, num_classes=2))
    data = [(torch.randn(4, 3, 16, 16), torch.randint(0, 2, (4,)))]
    with pytest.raises(RunDirError):
        uvc.compress(model, data, out=tmp_path, search_epochs=2, warmup_epochs=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]
    out = tmp_path / "run"
    uvc.compress(model, data, out=out, search_epochs=2, warmup_epochs=1, finetune_epochs=1,
                 progress=False)  # fmt: skip
    assert (out / "search.pt").is_file() and (out / "finetune.pt").is_file()


def test_quantize_writes_a_checked_int8_graph(tmp_path: Path) -> None:
    import onnx

    from tests.helpers import tiny_spec

    model = uvc.ViT(tiny_spec())
    result = uvc.quantize(model, tmp_path / "m.int8.onnx", "digits", calib_images=16, max_drop=100)
    assert result.path == tmp_path / "m.int8.onnx" and result.path.is_file()
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    assert result.accuracy.images == 359 and result.details["int8"]["calibration"] == "percentile"
    assert [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]
    with pytest.raises(uvc.UvcError, match="calibrate and validate on images"):
        uvc.quantize(uvc.ViT(tiny_spec(num_classes=5)), tmp_path / "x.onnx", "digits")
    with pytest.raises(uvc.UvcError, match="percentile"):
        uvc.quantize(model, tmp_path / "x.onnx", "digits", method="median")
    assert [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]  # refusals wrote nothing
