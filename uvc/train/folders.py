"""Image folders (``<root>/<class>/<image>``): scanning, checking and a lazily read dataset.

``scan_folder`` lists a folder's classes and samples, ``_check_classes`` opens a sample of its
images before any work starts, and ``FolderDataset`` reads images one by one, naming the path of
any it cannot read. ``uvc.train.data`` builds its train/validation sets from these and re-exports
them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from uvc.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and ``(image path, class index)`` samples of ``root``.

    Raises:
        DataError: ``root`` is missing, has no class folders, or a class has no images.
    """
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    samples: list[tuple[Path, int]] = []
    for i, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        samples += [(p, i) for p in files]
    return classes, samples


def _class_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_classes(root: Path, sample: int) -> list[str]:
    """Every class folder holds an image (the first one found); sampled ones must open."""
    from PIL import Image, UnidentifiedImageError

    classes = _class_names(root)
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    step = max(1, len(classes) // max(1, sample))
    for i, name in enumerate(classes):
        first = next(
            (p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), None
        )
        if first is None:
            raise DataError(
                f"class folder {root / name} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        if i % step == 0:
            try:
                with Image.open(first) as im:
                    im.convert("RGB")
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DataError(f"cannot read image {first}: {exc}") from None
    return classes


class FolderDataset(Dataset):
    """ImageFolder samples read lazily; an unreadable image raises ``DataError`` naming its path."""

    def __init__(
        self, samples: list[tuple[Path, int]], classes: list[str], transform: Callable
    ) -> None:
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, target = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        return self.transform(img), target
