from __future__ import annotations

import collections
import pickle

import pytest
import torch

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.errors import CheckpointError
from uvc.files.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    model = ViT(tiny_spec())
    path = save_checkpoint(
        tmp_path / "ck.pt",
        Checkpoint(model.spec, model.state_dict(), {"acc": 0.5}, {"step": 3, "t": torch.ones(2)}),
    )
    ck = load_checkpoint(path)
    assert ck.spec == model.spec
    assert ck.meta == {"acc": 0.5} and ck.extra["step"] == 3
    assert all(torch.equal(ck.state_dict[k], v) for k, v in model.state_dict().items())
    # Nothing but the file itself is left in the folder (the temporary file was renamed).
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


class Evil:
    """An arbitrary object: unpickling it would run code under weights_only=False."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"uvc_format": 1, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)


def test_non_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint: .* text file"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save(collections.OrderedDict(w=torch.ones(1)), plain)
    with pytest.raises(CheckpointError, match="not a uvc checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_write_leaves_previous_file_intact(tmp_path):
    model = ViT(tiny_spec())
    path = save_checkpoint(tmp_path / "ck.pt", Checkpoint(model.spec, model.state_dict()))
    before = path.read_bytes()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        # A lambda cannot be pickled: torch.save fails half-way through writing.
        save_checkpoint(path, Checkpoint(model.spec, model.state_dict(), {"f": lambda: 0}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
