"""Datasets and loaders: ImageFolder directories and the built-in ``digits`` set.

Loader order is a pure function of ``(seed, epoch)`` (``EpochSampler.set_epoch``, or
``DistributedSampler`` under DDP), and ``seed_epoch`` seeds every RNG the transforms draw from, so a
run resumed at the start of an epoch sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from uvc.errors import DataError
from uvc.train.dist import DistInfo

# Reading image folders lives in ``uvc.train.folders``; re-exported here.
from uvc.train.folders import (  # noqa: F401
    IMAGE_SUFFIXES,
    FolderDataset,
    _check_classes,
    _class_names,
    scan_folder,
)

log = logging.getLogger("uvc.data")  # the name logs have always shown

DIGITS = "digits"
# The split of the built-in set never depends on the training seed: "val accuracy" means the same
# 360 images in every run.
SPLIT_SEED = 20220
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are batched.

    Args:
        data: a folder (``train/`` + ``val/`` or ``test/``, or one ImageFolder tree with
            ``val_split``) or ``"digits"`` (built in, no download).
        img_size: side of the square images fed to the model.
        batch_size: images per batch and per process.
        val_split: fraction of a single-folder dataset held out for validation (0 < f < 1).
        workers: DataLoader worker processes (0: load in the training process).
        seed: seed of the shuffling order and of the random transforms.
        mixup: timm Mixup alpha (0: off); targets become soft.
        cutmix: timm CutMix alpha (0: off); targets become soft.
        mean: per-channel mean of folder images (a model's own: ``ViTSpec.preprocess``).
        std: per-channel normalisation std of folder images.
    """

    data: str = DIGITS
    img_size: int = 32
    batch_size: int = 64
    val_split: float = 0.0
    workers: int = 0
    seed: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.batch_size <= 0:
            raise ValueError("img_size and batch_size must be positive")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {self.val_split}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0")


@dataclass
class Data:
    """Ready loaders plus what the model needs to know about the labels."""

    train: DataLoader
    val: DataLoader
    num_classes: int
    classes: list[str]
    mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch, numpy and ``random`` from ``(seed, epoch)``: random transforms become exact."""
    s = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


class EpochSampler(Sampler[int]):
    """Shuffled (or sequential) indices whose order is a pure function of ``(seed, epoch)``.

    ``generator``, when given, is the DataLoader's generator: it is re-seeded too, so worker seeds
    (and the transforms they drive) follow the epoch, not how many epochs this process has run.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, generator: torch.Generator | None = None
    ) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0
        self.generator = generator

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 7919 + epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


# --- datasets -----------------------------------------------------------------------------------


class DigitsDataset(Dataset):
    """sklearn's 8x8 digits (1797 images, 10 classes) upscaled to ``img_size``, 3 channels.

    Args:
        img_size: output side in pixels.
        train: the 80 % training part or the 20 % validation part of a fixed split.
    """

    classes: tuple[str, ...] = tuple(str(i) for i in range(10))

    def __init__(self, img_size: int, train: bool) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_val = len(labels) // 5
        idx = order[n_val:] if train else order[:n_val]
        x = torch.nn.functional.interpolate(
            images[idx], size=(img_size, img_size), mode="bilinear", align_corners=False
        )
        self.images = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
        self.targets = labels[idx]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.targets[i]


def check_folder(data: str, val_split: float = 0.0, sample: int = 16) -> list[str]:
    """Check a dataset before any work: layout, classes, and a sample of images that must open.

    Reading every image of a large set is too slow; the first images of up to ``sample`` classes
    are opened instead, which catches a wrong folder, a folder of non-images and broken files.
    Returns the class names (``digits``: its ten classes).

    Raises:
        DataError: the folder is missing, has the wrong layout, or a sampled image is unreadable.
    """
    if data == DIGITS:
        return list(DigitsDataset.classes)
    root = Path(data)
    if root.exists() and not root.is_dir():
        raise DataError(f"--data {root} is a file; give a folder of images or 'digits'")
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if (root / "train").is_dir():
        val_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if val_root is None:
            raise DataError(f"{root} has train/ but neither val/ nor test/")
        classes = _check_classes(root / "train", sample)
        if _class_names(val_root) != classes:
            raise DataError(f"{val_root} has different classes than {root / 'train'}")
        _check_classes(val_root, sample)
        return classes
    if val_split <= 0:
        raise DataError(
            f"{root} has no train/ and val/ folders: pass --val-split (e.g. 0.1) to hold out "
            "part of it for validation"
        )
    return _check_classes(root, sample)


SMALL_IMAGES = 64  # up to this side, train with crop-and-pad (CIFAR style), not timm's RRC


def folder_transforms(
    img_size: int, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD
) -> tuple[Callable, Callable]:
    """Train (timm's random-resized-crop and flip; crop-and-pad for small images) and eval
    (resize, center-crop) transforms.

    ``mean``/``std``: the model's own statistics (``ViTSpec.preprocess``) where it records them.
    """
    from timm.data import create_transform

    size = (3, img_size, img_size)
    if img_size <= SMALL_IMAGES:
        # CIFAR-sized images: the usual random crop with padding and a flip. A random-resized
        # crop down to 8% of a 32 px image leaves too little to learn from.
        from torchvision import transforms as T

        train = T.Compose(
            [
                T.Resize(img_size),
                T.RandomCrop(img_size, padding=img_size // 8),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
    else:
        train = create_transform(size, is_training=True, mean=mean, std=std)
    # crop_pct 1: small images (CIFAR's 32 px) lose too much to a center crop.
    val = create_transform(size, is_training=False, mean=mean, std=std, crop_pct=1.0)
    return train, val


def folder_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset, list[str]]:
    """Train and validation datasets of a folder (``train/`` + ``val/``|``test/`` or a split)."""
    root = Path(cfg.data)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    t_train, t_val = folder_transforms(cfg.img_size, cfg.mean, cfg.std)
    if (root / "train").is_dir():
        val_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
        if val_root is None:
            raise DataError(f"{root} has train/ but neither val/ nor test/")
        classes, train = scan_folder(root / "train")
        val_classes, val = scan_folder(val_root)
        if val_classes != classes:
            raise DataError(f"{val_root} has different classes than {root / 'train'}")
    else:
        if cfg.val_split <= 0:
            raise DataError(
                f"{root} has no train/ and val/ folders: pass --val-split (e.g. 0.1) to hold out "
                "part of it for validation"
            )
        classes, samples = scan_folder(root)
        g = torch.Generator().manual_seed(SPLIT_SEED)
        order = torch.randperm(len(samples), generator=g).tolist()
        n_val = max(1, round(len(samples) * cfg.val_split))
        val = [samples[i] for i in sorted(order[:n_val])]
        train = [samples[i] for i in sorted(order[n_val:])]
    return FolderDataset(train, classes, t_train), FolderDataset(val, classes, t_val), classes


def build_data(cfg: DataConfig, dist: DistInfo | None = None) -> Data:
    """Build the train/val loaders of ``cfg`` (DistributedSampler under DDP)."""
    dist = dist or DistInfo()
    if cfg.data == DIGITS:
        train_ds: Dataset = DigitsDataset(cfg.img_size, train=True)
        val_ds: Dataset = DigitsDataset(cfg.img_size, train=False)
        classes = DigitsDataset.classes
    else:
        train_ds, val_ds, classes = folder_datasets(cfg)
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    return Data(
        # Mixup pairs images within a batch and needs an even batch: drop the ragged last one.
        train=make_loader(train_ds, cfg, shuffle=True, dist=dist, drop_last=mixing),
        val=make_loader(val_ds, cfg, shuffle=False, dist=dist),
        num_classes=len(classes),
        classes=list(classes),
        mixup=make_mixup(cfg, len(classes)),
    )


class Loader(DataLoader):
    """A DataLoader whose worker errors read like the library's own (one line, the path named).

    A ``DataError`` raised in a worker process comes back wrapped in the worker's traceback; this
    re-raises it with the original message alone.
    """

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as exc:
                text = str(exc)
                if "Traceback" not in text:
                    raise
                last = [ln for ln in text.splitlines() if ln.strip()][-1]
                raise DataError(last.split("DataError: ", 1)[-1]) from None
            yield batch


def make_loader(
    ds: Dataset, cfg: DataConfig, *, shuffle: bool, dist: DistInfo, drop_last: bool = False
) -> DataLoader:
    """A DataLoader whose order depends only on ``(cfg.seed, epoch)``."""
    g = torch.Generator().manual_seed(cfg.seed)
    sampler: Sampler[int]
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        # Validation is sharded too (no drop): each rank scores its part, counts are all-reduced.
        sampler = DistributedSampler(
            ds, dist.world_size, dist.rank, shuffle=shuffle, seed=cfg.seed, drop_last=False
        )
    else:
        sampler = EpochSampler(len(ds), shuffle, cfg.seed, generator=g)
    kwargs: dict[str, Any] = {"persistent_workers": False} if cfg.workers else {}
    return Loader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        generator=g,
        drop_last=drop_last,
        **kwargs,
    )


def make_mixup(cfg: DataConfig, num_classes: int) -> Callable | None:
    """timm's Mixup/CutMix on a batch (soft targets), or None when both are off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    # Label smoothing is left to the loss (DistillLoss), so it is not applied twice.
    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=0.0, num_classes=num_classes
    )
