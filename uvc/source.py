"""Resolve what a user names on the command line: a timm name, a spec JSON or a checkpoint."""

from __future__ import annotations

from pathlib import Path

from uvc.checkpoint import is_checkpoint, load_checkpoint, safe_torch_load
from uvc.errors import SpecError, UvcError
from uvc.model import ViT
from uvc.spec import ViTSpec
from uvc.weights import create_timm_model, load_weights, spec_from_timm


def resolve_spec(target: str | Path, num_classes: int | None = None) -> ViTSpec:
    """The spec of ``target``: a ``.json`` spec file, a uvc checkpoint, or a timm model name.

    Raises:
        UvcError: ``target`` is none of these, or is invalid (the message says which).
    """
    path = Path(target)
    if path.is_file():
        spec = ViTSpec.load(path) if path.suffix == ".json" else load_checkpoint(path).spec
    elif _looks_like_path(path):
        raise UvcError(f"file not found: {path}")
    else:
        spec = spec_from_timm(str(target))
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.replace(num_classes=num_classes)
    return spec


def _looks_like_path(path: Path) -> bool:
    return path.suffix in FILE_SUFFIXES or len(path.parts) > 1


FILE_SUFFIXES = (".json", ".pt", ".pth", ".bin", ".safetensors")


def load_model(target: str | Path, weights: str | Path | None = None) -> ViT:
    """Build a ``ViT`` for ``target`` and load its weights.

    Args:
        target: a uvc checkpoint (weights included), a spec JSON or a timm model name.
        weights: a local weights file (DeiT/timm/uvc formats); overrides a checkpoint's weights.
            Without it, a spec or timm name gives a randomly initialised model.
    """
    path = Path(target)
    if path.is_file() and path.suffix != ".json":
        obj = safe_torch_load(path)
        if not is_checkpoint(obj):
            raise SpecError(
                f"{path} is a weights file, not a uvc checkpoint: pass a timm model name or a "
                f"spec JSON as the model and this file as its weights"
            )
        ckpt = load_checkpoint(path)
        model = ViT(ckpt.spec)
        load_weights(model, ckpt.state_dict if weights is None else weights)
        return model
    spec = resolve_spec(target)
    model = ViT(spec)
    if weights is not None:
        load_weights(model, weights)
    elif not path.is_file():
        # A timm name without weights: take timm's own initialisation, so that a random
        # baseline behaves like the model a user knows.
        load_weights(model, create_timm_model(str(target), num_classes=spec.num_classes))
    return model
