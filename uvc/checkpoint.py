"""Checkpoints: one ``.pt`` file with the spec (plain data), tensors and metadata.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a run killed
mid-write leaves the previous checkpoint intact. Read with ``torch.load(weights_only=True)``, so a
user-supplied file can never run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uvc.errors import CheckpointError, SpecError
from uvc.spec import ViTSpec

CHECKPOINT_FORMAT = 1


@dataclass
class Checkpoint:
    """What a uvc checkpoint holds.

    Args:
        spec: the architecture the tensors belong to.
        state_dict: model weights.
        meta: JSON-like metadata (kind, accuracies, versions, ...).
        extra: more tensors and plain data (optimizer state, step, duals, ...).
    """

    spec: ViTSpec
    state_dict: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write a checkpoint atomically and return its path."""
    payload = {
        "uvc_format": CHECKPOINT_FORMAT,
        "spec": ckpt.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "meta": ckpt.meta,
        "extra": ckpt.extra,
    }
    return atomic_torch_save(payload, Path(path))


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; unsafe or corrupt files raise ``CheckpointError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "allowed global" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} contains pickled Python objects, which uvc refuses to load because "
                "loading them could run arbitrary code; re-save it as a plain state dict of tensors"
            ) from None
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {first}") from None


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a uvc checkpoint payload."""
    return isinstance(obj, dict) and "uvc_format" in obj


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a uvc checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    obj = safe_torch_load(path)
    if not is_checkpoint(obj):
        raise CheckpointError(f"{path} is not a uvc checkpoint (no 'uvc_format' entry)")
    if obj["uvc_format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {obj['uvc_format']!r}; this uvc reads "
            f"{CHECKPOINT_FORMAT}"
        )
    try:
        spec = ViTSpec.from_dict(obj["spec"])
    except (SpecError, KeyError) as exc:
        raise CheckpointError(f"{path} holds an invalid spec: {exc}") from None
    return Checkpoint(spec, obj["state_dict"], obj.get("meta", {}), obj.get("extra", {}))
