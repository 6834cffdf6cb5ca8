"""Data: the built-in digits set, ImageFolder trees and their errors, deterministic samplers."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from uvc.errors import DataError
from uvc.train.data import (
    DataConfig,
    DigitsDataset,
    EpochSampler,
    build_data,
    make_mixup,
    scan_folder,
    seed_epoch,
)


def _image_tree(root: Path, classes: dict[str, int], size: int = 12) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            color = (40 * c % 256, 10 * i % 256, 128)
            Image.new("RGB", (size, size), color).save(root / name / f"{i:03d}.png")
    return root


def test_digits_shapes_split_and_determinism() -> None:
    train, val = DigitsDataset(16, train=True), DigitsDataset(16, train=False)
    assert len(train) + len(val) == 1797
    assert len(val) == 1797 // 5
    x, _ = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert set(train.targets.tolist()) == set(range(10))
    # The split is fixed: a second build gives the same images in the same order.
    again = DigitsDataset(16, train=False)
    assert torch.equal(val.images, again.images) and torch.equal(val.targets, again.targets)
    # Train and validation do not share images.
    flat_train = {tuple(t.flatten().tolist()) for t in train.images[:, 0, ::4, ::4]}
    shared = sum(tuple(t.flatten().tolist()) in flat_train for t in val.images[:, 0, ::4, ::4])
    assert shared < 0.05 * len(val)  # only true duplicates of the raw dataset may coincide


def test_digits_loaders() -> None:
    data = build_data(DataConfig("digits", img_size=16, batch_size=32))
    assert data.num_classes == 10 and data.mixup is None
    x, y = next(iter(data.train))
    assert x.shape == (32, 3, 16, 16) and y.shape == (32,)
    assert sum(len(b[1]) for b in data.val) == 359


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        s = EpochSampler(50, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)
    assert sorted(order(0, 3)) == list(range(50))
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_seed_epoch_makes_transforms_repeatable() -> None:
    seed_epoch(3, 7)
    a = torch.rand(4)
    seed_epoch(3, 7)
    assert torch.equal(a, torch.rand(4))


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        build_data(DataConfig(str(missing), img_size=16))


def test_empty_class_names_the_folder(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "ds", {"cat": 3, "dog": 0})
    with pytest.raises(DataError, match=r"ds/dog"):
        scan_folder(root)


def test_unreadable_image_raises_when_loaded(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image_tree(root / "train", {"a": 2, "b": 2})
    _image_tree(root / "val", {"a": 1, "b": 1})
    bad = root / "val" / "b" / "999.jpg"
    bad.write_bytes(b"this is not a jpeg")
    data = build_data(DataConfig(str(root), img_size=16, batch_size=8))
    assert len(data.train.dataset) == 4  # building is lazy: nothing is decoded yet
    with pytest.raises(DataError, match=r"999\.jpg"):
        list(data.val)
    # The same from a worker process: the message is the library's, not a worker traceback.
    data = build_data(DataConfig(str(root), img_size=16, batch_size=8, workers=1))
    with pytest.raises(DataError) as info:
        list(data.val)
    assert str(info.value).startswith(f"cannot read image {bad}") and "\n" not in str(info.value)


def test_single_tree_with_val_split_and_test_fallback(tmp_path: Path) -> None:
    root = _image_tree(tmp_path / "one", {"a": 10, "b": 10})
    with pytest.raises(DataError, match="val-split"):
        build_data(DataConfig(str(root), img_size=16))
    data = build_data(DataConfig(str(root), img_size=16, val_split=0.25))
    train, val = data.train.dataset.samples, data.val.dataset.samples
    assert len(val) == 5 and len(train) == 15 and not set(train) & set(val)
    again = build_data(DataConfig(str(root), img_size=16, val_split=0.25, seed=9))
    assert again.val.dataset.samples == val  # the split does not depend on the run's seed
    x, _ = next(iter(data.val))
    assert x.shape[1:] == (3, 16, 16)

    split = tmp_path / "split"
    _image_tree(split / "train", {"a": 2, "b": 2})
    _image_tree(split / "test", {"a": 1, "b": 1})
    data = build_data(DataConfig(str(split), img_size=16))
    assert len(data.val.dataset) == 2 and data.classes == ["a", "b"]


def test_mixup_gives_soft_targets() -> None:
    mix = make_mixup(DataConfig(mixup=0.8, cutmix=1.0), num_classes=10)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    xm, ym = mix(x, y)
    assert xm.shape == x.shape and ym.shape == (8, 10)
    assert torch.allclose(ym.sum(-1), torch.ones(8))
    data = build_data(DataConfig("digits", img_size=16, batch_size=30, mixup=0.5))
    assert data.train.drop_last  # even batches only


def test_real_cifar_subset(shared_data: Path, tmp_path: Path) -> None:
    archive = shared_data / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    # The archive starts with test/airplane then test/automobile: a short scan is enough.
    wanted = {"airplane", "automobile"}
    counts: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = Path(m.name).parts  # cifar10/<split>/<class>/NNNN.jpg
            if len(parts) != 4 or not m.isfile() or parts[1] != "test" or parts[2] not in wanted:
                continue
            if counts.get(parts[2], 0) < 8:
                counts[parts[2]] = counts.get(parts[2], 0) + 1
                tar.extract(m, tmp_path, filter="data")
            if len(counts) == 2 and min(counts.values()) >= 8:
                break
    root = tmp_path / "cifar10" / "test"
    data = build_data(DataConfig(str(root), img_size=32, batch_size=4, val_split=0.25))
    assert data.classes == ["airplane", "automobile"]
    assert len(data.train.dataset) == 12 and len(data.val.dataset) == 4
    x, y = next(iter(data.val))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1}
    assert x.std() > 0.1  # real pixels, not a blank image
