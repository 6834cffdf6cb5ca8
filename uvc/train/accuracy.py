"""Top-1 accuracy with its uncertainty, and paired comparisons of models on the same images.

Two compressed models a few tenths of a point apart on 10,000 test images may or may not differ:
what decides it is the images on which exactly one of them is right. ``paired_difference`` gives
the accuracy difference with a percentile-bootstrap 95% interval (resampling images, each model's
outcome on an image kept together) and McNemar's exact test on those discordant images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from uvc.arch.spec import ViTSpec

CONFIDENCE = 0.95
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Accuracy:
    """Top-1 in percent with a Wilson 95% interval (``n`` images)."""

    top1: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` in accuracy points on the same images.

    Args:
        diff: top-1 of b minus top-1 of a, in points.
        lo, hi: percentile-bootstrap 95% interval of ``diff`` (images resampled in pairs).
        only_a, only_b: images only a (only b) classifies correctly.
        p_value: McNemar's exact two-sided p-value on ``only_a`` against ``only_b``.
    """

    diff: float
    lo: float
    hi: float
    only_a: int
    only_b: int
    p_value: float


@torch.no_grad()
def correct_mask(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Per image of ``loader`` (in its order), whether ``model``'s top-1 class is the label."""
    was_training = model.training
    model.eval().to(device)
    out: list[np.ndarray] = []
    for x, y in loader:
        logits = model(x.to(device))
        logits = logits[0] if isinstance(logits, tuple) else logits
        out.append((logits.argmax(-1).cpu() == y).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def accuracy(correct: np.ndarray) -> Accuracy:
    """Top-1 (%) of a correctness mask with its Wilson score 95% interval."""
    n = int(correct.size)
    if n == 0:
        raise ValueError("no images to score")
    k = int(correct.sum())
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Accuracy(100.0 * p, 100.0 * (centre - half), 100.0 * (centre + half), n)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value: twice the binomial(n, 1/2) tail of the smaller count."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    log_half = n * math.log(0.5)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + log_half) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def paired_difference(
    a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP
) -> PairedDifference:
    """Accuracy of ``b`` minus ``a`` (points) on the same images, with its bootstrap interval and
    McNemar's test.

    Raises:
        ValueError: the masks are not over the same number of images.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two masks over the same images, got {a.shape} and {b.shape}")
    n = int(a.size)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    # Resampling n images with replacement only redraws how many fall in each of the three
    # kinds (only a right, only b right, neither or both): a multinomial draw is the same
    # bootstrap without materialising n indices per resample.
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], resamples)
    boots = 100.0 * (draws[:, 1] - draws[:, 0]) / n
    tail = (1.0 - CONFIDENCE) / 2
    lo, hi = np.quantile(boots, [tail, 1 - tail])
    diff = 100.0 * (only_b - only_a) / n
    return PairedDifference(diff, float(lo), float(hi), only_a, only_b, mcnemar_p(only_a, only_b))


def model_val_loader(
    spec: ViTSpec,
    data: str,
    batch_size: int = 256,
    val_split: float = 0.0,
    workers: int = 0,
    seed: int = 0,
) -> tuple[DataLoader, int]:
    """The validation loader of ``data`` as ``spec``'s model sees it (its image size and its own
    mean/std), in a fixed order, and the dataset's number of classes."""
    from uvc.train.data import DataConfig, build_data

    pre = spec.preprocess
    stats = {"mean": tuple(pre.mean), "std": tuple(pre.std)} if pre is not None else {}
    cfg = DataConfig(data, spec.img_size, batch_size, val_split, workers, seed, **stats)
    built = build_data(cfg)
    return built.val, built.num_classes
