from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.errors import WeightsError
from uvc.files.weights import load_weights, read_state_dict


@pytest.mark.parametrize("layout", ["plain", "deit", "ddp", "safetensors"])
def test_weights_load_from_local_files(tmp_path, layout):
    src = ViT(tiny_spec())
    state = src.state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "w.pth"
        obj = {
            "plain": state,
            "deit": {"model": state, "epoch": 300},
            "ddp": {f"module.{k}": v for k, v in state.items()},
        }[layout]
        torch.save(obj, path)
    dst = ViT(tiny_spec())
    load_weights(dst, path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in state.items())


def test_mismatch_lists_keys_and_shapes(tmp_path):
    src = ViT(tiny_spec(num_classes=5)).state_dict()
    src.pop("norm.weight")
    src["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        load_weights(ViT(tiny_spec()), src)
    msg = str(err.value)
    assert "missing keys (1): norm.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "head.weight: file (5, 32) vs model (10, 32)" in msg


def test_missing_or_bad_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
