"""Checkpoints: one ``.pt`` file with the spec (plain data), tensors and metadata.

Written atomically (a temporary file in the same folder, then ``os.replace``), so a run killed
mid-write leaves the previous checkpoint intact. Read with ``torch.load(weights_only=True)``, so a
user-supplied file can never run code.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uvc._fs import atomic_torch_save
from uvc.arch.spec import ViTSpec
from uvc.errors import CheckpointError, SpecError

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


def sniff(path: Path) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint, judged from its first bytes (None: it may be).

    ``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``);
    anything else (text, JSON, an image, an empty file) is named rather than handed to the
    unpickler, whose message for it is a bare byte value.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    if not head:
        return "the file is empty"
    if head.startswith(b"PK") or head[0] == 0x80:
        return None
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it is a JSON file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8].hex(' ')}"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"it is a text file starting {first!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; unsafe or corrupt files raise ``CheckpointError``."""
    path = Path(path)
    why = sniff(path)
    if why is not None:
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({why})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except MemoryError:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it claims more memory than there is (corrupt?)"
        ) from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "allowed global" in text or "Unsupported global" in text:
            raise CheckpointError(
                f"{path} contains pickled Python objects, which uvc refuses to load because "
                "loading them could run arbitrary code; re-save it as a plain state dict of tensors"
            ) from None
        reason = (text.split("WeightsUnpickler error:")[-1].strip().splitlines() or ["?"])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    except Exception as exc:
        # A damaged archive can fail anywhere in torch/zipfile/pickle (RuntimeError, EOFError,
        # zipfile.BadZipFile, struct.error, TypeError, AttributeError, ...): all mean the same.
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        kind = "corrupt archive" if isinstance(exc, zipfile.BadZipFile) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (damaged or truncated?): {kind}"
            + (f": {first}" if first else "")
        ) from None


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
        spec = check_spec_sane(ViTSpec.from_dict(obj["spec"]))
    except (SpecError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds an invalid spec: {exc}") from None
    state = obj.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path} is damaged: its 'state_dict' is not a dict of tensors")
    meta, extra = obj.get("meta", {}), obj.get("extra", {})
    if not isinstance(meta, dict) or not isinstance(extra, dict):
        raise CheckpointError(f"{path} is damaged: 'meta' and 'extra' must be dicts")
    return Checkpoint(spec, state, meta, extra)


MAX_PARAMS = 2**40  # a trillion parameters: beyond any ViT; a larger spec is damaged


def check_spec_sane(spec: ViTSpec) -> ViTSpec:
    """Compute the spec's token count and cost once: a damaged spec (a flag that is not a bool,
    an absurd width) fails here with ``SpecError`` instead of deep inside a command."""
    from uvc.arch.cost import model_cost

    try:
        cost = model_cost(spec)
        total = float(cost.params) + float(cost.macs) + float(spec.num_tokens)
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise SpecError(f"malformed spec: {exc}") from None
    if not total < 2**62 or cost.params > MAX_PARAMS:
        raise SpecError(f"the spec claims an absurd size ({cost.params:.3g} parameters): damaged?")
    return spec
