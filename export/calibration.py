"""Calibration and held-out images for post-training quantization, from one ``--calib-data``.

Quantization fits activation ranges to the calibration images; its accuracy must then be judged
on other images. One source gives both, split so that no image is in both parts:

- a folder with ``train/`` and ``val/`` (or ``test/``): calibration images from ``train/``,
  held-out images from ``val/``|``test/`` (the images the model is scored on stay unseen);
- a single ``<class>/<image>`` tree: one fixed shuffle, the first N images calibrate, the next M
  are held out;
- ``digits``: the built-in set's training part calibrates, its validation part is held out.

``plan_calibration`` checks everything that can be checked without reading pixels — the layout,
the number of classes against the model's, and that enough images exist — so a bad folder is
refused before any export work; ``load_calibration`` then reads the images with the model's own
preprocessing (``uvc.arch.preprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uvc.errors import DataError

DIGITS = "digits"
# A drop bound of 1 point means nothing on a handful of images (one image of 50 is 2 points).
MIN_HELD_OUT = 100
DEFAULT_HELD_OUT = 1000  # held-out images compared by default (all of them when fewer)


@dataclass(frozen=True)
class CalibrationPlan:
    """Which images calibrate and which are held out, before any is read.

    Args:
        source: the ``--calib-data`` value.
        calib: (path, class index) of each calibration image (empty for ``digits``).
        held_out: (path, class index) of each held-out image (empty for ``digits``).
        calib_part, held_out_part: where each part comes from, for ``export.json``.
        n_calib, n_held_out: how many images each part has.
        classes: the class names.
    """

    source: str
    calib: tuple[tuple[Path, int], ...]
    held_out: tuple[tuple[Path, int], ...]
    calib_part: str
    held_out_part: str
    n_calib: int
    n_held_out: int
    classes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Plain data for ``export.json``: where each part came from and its size."""
        return {
            "source": self.source,
            "calibration": {"part": self.calib_part, "images": self.n_calib},
            "held_out": {"part": self.held_out_part, "images": self.n_held_out},
            "disjoint": True,
        }


@dataclass(frozen=True)
class CalibrationImages:
    """The images themselves, preprocessed as the model expects.

    Args:
        calib: (N, C, H, W) calibration images.
        held_out: (M, C, H, W) held-out images; ``labels`` their (M,) classes.
    """

    calib: Tensor
    held_out: Tensor
    labels: Tensor


def plan_calibration(
    calib_data: str | Path,
    num_classes: int,
    n_calib: int,
    n_held_out: int | None = None,
    seed: int = 0,
) -> CalibrationPlan:
    """Check ``calib_data`` against the model and choose the two disjoint sets of images.

    Args:
        calib_data: an ImageFolder folder or ``"digits"``.
        num_classes: the model's number of classes; the data must have as many.
        n_calib: calibration images wanted (refused if fewer exist).
        n_held_out: held-out images wanted (refused if fewer exist); None: all of them, at most
            ``DEFAULT_HELD_OUT``. At least ``MIN_HELD_OUT`` either way.
        seed: seeds the choice of images.

    Raises:
        DataError: a missing folder, a wrong layout, a class count other than ``num_classes``, or
            fewer images than asked.
    """
    from uvc.train.folders import scan_folder

    if n_calib < 1:
        raise DataError(f"--calib-images must be at least 1, got {n_calib}")
    if n_held_out is not None and n_held_out < MIN_HELD_OUT:
        raise DataError(
            f"--int8-val-images must be at least {MIN_HELD_OUT} (an accuracy drop in points "
            f"needs that many held-out images), got {n_held_out}"
        )
    source = str(calib_data)
    if source == DIGITS:
        return _digits_plan(num_classes, n_calib, n_held_out)
    root = Path(calib_data)
    if not root.is_dir():
        raise DataError(f"--calib-data folder not found: {root}")
    held_root = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and held_root is None:
        raise DataError(f"--calib-data {root} has train/ but neither val/ nor test/")
    g = torch.Generator().manual_seed(seed)
    if (root / "train").is_dir() and held_root is not None:
        classes, train = scan_folder(root / "train")
        held_classes, held = scan_folder(held_root)
        if held_classes != classes:
            raise DataError(f"{held_root} has different classes than {root / 'train'}")
        _check_classes(source, len(classes), num_classes)
        calib = _pick(train, torch.randperm(len(train), generator=g).tolist(), n_calib, "train")
        order = torch.randperm(len(held), generator=g).tolist()
        kept = _pick(held, order, _held_count(len(held), n_held_out), held_root.name)
        parts = (str(root / "train"), str(held_root))
    else:
        classes, samples = scan_folder(root)
        _check_classes(source, len(classes), num_classes)
        order = torch.randperm(len(samples), generator=g).tolist()
        calib = _pick(samples, order, n_calib, root.name)
        rest = order[n_calib:]
        kept = _pick(samples, rest, _held_count(len(rest), n_held_out), f"{root.name} (held out)")
        parts = (f"{root} (first {n_calib} of a shuffle)", f"{root} (the next {len(kept)})")
    return CalibrationPlan(
        source, tuple(calib), tuple(kept), *parts, len(calib), len(kept), tuple(classes)
    )


def _digits_plan(num_classes: int, n_calib: int, n_held_out: int | None) -> CalibrationPlan:
    from uvc.train.data import DigitsDataset

    classes = DigitsDataset.classes
    _check_classes(DIGITS, len(classes), num_classes)
    n_train, n_val = _digits_sizes()
    if n_calib > n_train:
        raise DataError(f"--calib-images {n_calib}: digits' training part has only {n_train}")
    held = _held_count(n_val, n_held_out)
    parts = ("digits (training part)", "digits (validation part)")
    return CalibrationPlan(DIGITS, (), (), *parts, n_calib, held, tuple(classes))


def _digits_sizes() -> tuple[int, int]:
    """(training, validation) sizes of the built-in digits split."""
    from uvc.train.data import DigitsDataset

    return len(DigitsDataset(8, train=True)), len(DigitsDataset(8, train=False))


def _check_classes(source: str, found: int, wanted: int) -> None:
    if found != wanted:
        raise DataError(
            f"--calib-data {source} has {found} classes, the model has {wanted}: calibrate and "
            "validate on images of the model's own classes"
        )


def _held_count(available: int, wanted: int | None) -> int:
    n = min(available, DEFAULT_HELD_OUT) if wanted is None else wanted
    if n > available or n < MIN_HELD_OUT:
        asked = f"{wanted} asked" if wanted is not None else f"at least {MIN_HELD_OUT} needed"
        raise DataError(
            f"--calib-data has {available} held-out images for the INT8 accuracy check ({asked})"
        )
    return n


def _pick(
    samples: list[tuple[Path, int]], order: list[int], n: int, where: str
) -> list[tuple[Path, int]]:
    if n > len(order):
        raise DataError(f"--calib-data {where} has {len(order)} images, {n} were asked")
    return [samples[i] for i in order[:n]]


def load_calibration(
    plan: CalibrationPlan, img_size: int, in_chans: int, preprocess: Any = None, seed: int = 0
) -> CalibrationImages:
    """Read the planned images with the model's own preprocessing (``uvc.arch.preprocess``).

    Raises:
        DataError: an unreadable image, or images with a channel count other than ``in_chans``.
    """
    if plan.source == DIGITS:
        from uvc.train.data import DigitsDataset

        train, val = DigitsDataset(img_size, train=True), DigitsDataset(img_size, train=False)
        g = torch.Generator().manual_seed(seed)
        calib = train.images[torch.randperm(len(train), generator=g)[: plan.n_calib]]
        order = torch.randperm(len(val), generator=g)[: plan.n_held_out]
        images = CalibrationImages(calib, val.images[order], val.targets[order])
    else:
        from uvc.arch.preprocess import eval_transform
        from uvc.train.folders import FolderDataset

        transform = eval_transform(preprocess, img_size)
        calib_ds = FolderDataset(list(plan.calib), list(plan.classes), transform)
        held_ds = FolderDataset(list(plan.held_out), list(plan.classes), transform)
        calib = torch.stack([calib_ds[i][0] for i in range(len(calib_ds))])
        held = torch.stack([held_ds[i][0] for i in range(len(held_ds))])
        labels = torch.tensor([c for _, c in plan.held_out], dtype=torch.long)
        images = CalibrationImages(calib, held, labels)
    if images.calib.shape[1] != in_chans:
        raise DataError(
            f"--calib-data gives {images.calib.shape[1]}-channel images, the model wants {in_chans}"
        )
    return images
