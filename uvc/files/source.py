"""Resolve what a user names on the command line: a timm name, ``uvc-tiny`` (built in), a spec
JSON, a checkpoint or an export folder (``uvc export`` output)."""

from __future__ import annotations

from pathlib import Path

from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import SpecError, UvcError
from uvc.files.checkpoint import check_spec_sane, is_checkpoint, load_checkpoint, safe_torch_load
from uvc.files.weights import create_timm_model, load_weights, spec_from_timm


def resolve_spec(target: str | Path, num_classes: int | None = None) -> ViTSpec:
    """The spec of ``target``: a spec JSON, a uvc checkpoint, an export folder, ``uvc-tiny`` or a
    timm model name.

    Raises:
        UvcError: ``target`` is none of these, or is invalid (the message says which).
    """
    from uvc.arch.demo import DEMO_MODEL, demo_spec

    path = Path(target)
    if path.is_dir():
        spec = resolve_spec(export_file(path))
    elif path.is_file():
        spec = load_spec_file(path) if path.suffix == ".json" else load_checkpoint(path).spec
    elif _looks_like_path(path):
        raise UvcError(f"file not found: {path}")
    elif str(target) == DEMO_MODEL:
        spec = demo_spec()
    else:
        spec = spec_from_timm(str(target))
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.replace(num_classes=num_classes)
    return spec


def load_spec_file(path: Path) -> ViTSpec:
    """``ViTSpec.load``, with any malformed content (a hand-edited or damaged file) a
    ``SpecError`` naming the file."""
    try:
        return check_spec_sane(ViTSpec.load(path))
    except UvcError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as exc:
        raise SpecError(f"{path} is not a valid spec: {exc}") from None


def _looks_like_path(path: Path) -> bool:
    return path.suffix in FILE_SUFFIXES or len(path.parts) > 1


def is_timm_name(target: str | Path) -> bool:
    """Whether ``target`` names a timm model (not a file, folder or the built-in ``uvc-tiny``)."""
    from uvc.arch.demo import DEMO_MODEL

    path = Path(target)
    return not (path.exists() or _looks_like_path(path) or str(target) == DEMO_MODEL)


def export_file(folder: str | Path) -> Path:
    """The model file of an export folder (``uvc export`` output): model.pt, else spec.json.

    Raises:
        UvcError: the folder holds neither (it is not an export).
    """
    folder = Path(folder)
    for name in ("model.pt", "spec.json"):
        if (folder / name).is_file():
            return folder / name
    raise UvcError(f"{folder} is a folder without model.pt or spec.json (not a uvc export)")


FILE_SUFFIXES = (".json", ".pt", ".pth", ".bin", ".safetensors")


def load_model(target: str | Path, weights: str | Path | None = None) -> ViT:
    """Build a ``ViT`` for ``target`` and load its weights.

    Args:
        target: a uvc checkpoint (weights included), a spec JSON or a timm model name.
        weights: a local weights file (DeiT/timm/uvc formats); overrides a checkpoint's weights.
            Without it, a spec or timm name gives a randomly initialised model.
    """
    from uvc.arch.demo import DEMO_MODEL

    path = Path(target)
    if path.is_dir():
        path = export_file(path)
        target = path
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
    elif str(target) == DEMO_MODEL:
        pass  # the built-in model has no timm counterpart: uvc's own initialisation
    elif not path.is_file():
        # A timm name without weights: take timm's own initialisation, so that a random
        # baseline behaves like the model a user knows.
        load_weights(model, create_timm_model(str(target), num_classes=spec.num_classes))
    return model
