"""What ``uvc export`` starts from: a checkpoint, spec JSON or timm name -> the dense model.

``load_export_model`` loads the model to export and names where it came from; a search checkpoint
(a keep-set in ``extra["keep"]`` or, for ``search.pt``, in ``keep.json`` beside it: ``_keep_of``)
is materialized into the physically smaller model first. ``_read_torch_file`` turns any unpickler
failure into a ``CheckpointError``. ``uvc.export.pipeline`` re-exports these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def load_export_model(
    target: str, weights: Path | None, merge: str | None = None
) -> tuple[torch.nn.Module, str]:
    """The dense ``ViT`` to export and a word for what it came from.

    A checkpoint whose ``extra`` holds ``"keep"`` (a search checkpoint) is materialized with
    ``uvc.export.materialize`` so the exported model is the physically smaller one. ``merge``
    ("8" or "8,8,4,0"): token merging (ToMe) applied to it off the shelf, replacing its own
    schedule (``uvc.arch.merge_schedule.apply_merge``; a schedule that does not fit is refused).
    """
    model, source = _load_dense(target, weights)
    if merge is None:
        return model, source
    from uvc.arch.model import apply_merge

    return apply_merge(model, merge).eval(), f"{source}, merge {merge}"


def _load_dense(target: str, weights: Path | None) -> tuple[torch.nn.Module, str]:
    """``load_export_model`` without merging."""
    from uvc.export.materialize import materialize

    from uvc.arch.keep import KeepSet, check_keep
    from uvc.arch.model import ViT
    from uvc.errors import CheckpointError
    from uvc.files.checkpoint import is_checkpoint, load_checkpoint
    from uvc.files.source import load_model
    from uvc.files.weights import load_weights

    path = Path(target)
    if path.is_file() and path.suffix != ".json" and is_checkpoint(_read_torch_file(path)):
        ckpt = load_checkpoint(path)
        model = ViT(ckpt.spec)
        load_weights(model, ckpt.state_dict if weights is None else weights)
        keep_data = _keep_of(path, ckpt)
        if keep_data is None:
            return model.eval(), "dense checkpoint"
        try:
            keep = KeepSet.from_json(keep_data)  # NViT's keep.json has an embed part
            check_keep(ckpt.spec, keep)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} holds an invalid keep-set: {exc}") from None
        return materialize(model, keep).eval(), "search checkpoint (materialized)"
    model = load_model(target, weights)
    return model.eval(), "weights file" if weights is not None else "random init"


def _keep_of(path: Path, ckpt: Any) -> list[dict[str, Any]] | None:
    """The keep-set of a search checkpoint: ``extra["keep"]``, else ``keep.json`` beside it.

    ``uvc.methods.search`` writes ``search.pt`` every epoch (full weights, no keep-set) and the
    final,
    budget-projected keep-set to ``keep.json`` in the same folder when the search ends.
    """
    from uvc.errors import CheckpointError

    if "keep" in ckpt.extra:
        return ckpt.extra["keep"]
    is_search = ckpt.meta.get("kind") == "search" or ckpt.extra.get("kind") == "uvc-search"
    if not is_search:
        return None
    keep_file = path.parent / "keep.json"
    if not keep_file.is_file():
        raise CheckpointError(
            f"{path} is a search checkpoint without a keep-set and {keep_file} is missing: let the "
            "search finish (it writes keep.json) or export the run's final.pt"
        )
    try:
        return json.loads(keep_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the keep-set {keep_file}: {exc}") from None


def _read_torch_file(path: Path) -> object:
    """``safe_torch_load``, with every unpickler failure turned into ``CheckpointError``."""
    from uvc.errors import CheckpointError, UvcError
    from uvc.files.checkpoint import safe_torch_load

    try:
        return safe_torch_load(path)
    except UvcError:
        raise
    except Exception as exc:  # torch's unpickler raises IndexError, KeyError... on garbage
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__})"
        ) from None
