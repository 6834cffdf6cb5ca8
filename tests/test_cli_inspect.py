from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tests.helpers import tiny_spec
from uvc.arch.cost import macs, params
from uvc.arch.model import ViT
from uvc.cli import cli
from uvc.files.checkpoint import Checkpoint, save_checkpoint


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_inspect_timm_name_json():
    res = _run("inspect", "deit_tiny_patch16_224", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["macs"] == 1_258_411_200 and data["params"] == 5_717_416
    assert len(data["blocks"]) == 12
    assert {"heads", "qk_dim", "v_dim", "mlp_dim", "macs", "params"} <= set(data["blocks"][0])


def test_inspect_spec_and_checkpoint(tmp_path):
    spec = tiny_spec()
    spec_path = spec.save(tmp_path / "spec.json")
    ck = save_checkpoint(tmp_path / "m.pt", Checkpoint(spec, ViT(spec).state_dict()))
    for target in (spec_path, ck):
        res = _run("inspect", str(target), "--json")
        assert res.exit_code == 0, res.output
        data = json.loads(res.output)
        assert data["macs"] == macs(spec) and data["params"] == params(spec)
    table = _run("inspect", str(spec_path))
    assert table.exit_code == 0 and "total" in table.output


@pytest.mark.parametrize("kind", ["unknown", "corrupt", "invalid", "missing"])
def test_inspect_bad_input_is_one_line_exit_2(tmp_path, kind):
    if kind == "unknown":
        target = "no_such_model_name"
    elif kind == "corrupt":
        target = str(tmp_path / "bad.pt")
        (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    elif kind == "invalid":
        target = str(tmp_path / "bad.json")
        bad = tiny_spec().to_dict()
        bad["img_size"] = 33
        (tmp_path / "bad.json").write_text(json.dumps(bad))
    else:
        target = str(tmp_path / "missing.pt")
    res = _run("inspect", target)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    torch.manual_seed(0)
