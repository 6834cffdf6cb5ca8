"""Comparing an exported model's outputs with PyTorch's, apart from running either.

``compare`` turns two logit tensors into figures; ``require_tolerance`` decides whether they pass;
``validation_inputs`` builds the batches (real images when given, random ones otherwise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uvc.errors import DataError, ValidationError


class AtolError(ValidationError):
    """An exported model's outputs differ from PyTorch's by more than the absolute tolerance."""


@dataclass(frozen=True)
class Comparison:
    """How one batch of exported outputs compares with PyTorch's.

    Args:
        batch: batch size.
        max_abs: max |out - ref|.
        max_rel: max |out - ref| / max|ref| (relative to the logits' scale, so near-zero logits
            don't blow it up).
        cosine: the smallest per-sample cosine similarity of the logit vectors.
        top1: fraction of samples whose arg-max class agrees.
    """

    batch: int
    max_abs: float
    max_rel: float
    cosine: float
    top1: float


@dataclass(frozen=True)
class ValidationReport:
    """All comparisons of one exported artifact against PyTorch."""

    name: str
    runtime: str
    comparisons: tuple[Comparison, ...]

    @property
    def max_abs(self) -> float:
        """The worst max |difference| over all batches."""
        return max(c.max_abs for c in self.comparisons)

    @property
    def top1(self) -> float:
        """Top-1 agreement over all samples."""
        n = sum(c.batch for c in self.comparisons)
        return sum(c.top1 * c.batch for c in self.comparisons) / n

    @property
    def min_cosine(self) -> float:
        """The smallest per-sample cosine similarity."""
        return min(c.cosine for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export.json``."""
        return {
            "name": self.name,
            "runtime": self.runtime,
            "max_abs": self.max_abs,
            "max_rel": max(c.max_rel for c in self.comparisons),
            "min_cosine": self.min_cosine,
            "top1_agreement": self.top1,
            "batches": [asdict(c) for c in self.comparisons],
        }


def compare(ref: Tensor, out: Tensor) -> Comparison:
    """Compare exported logits ``out`` with PyTorch logits ``ref`` (both (B, classes))."""
    if ref.shape != out.shape:
        raise ValidationError(f"output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)}")
    ref, out = ref.detach().double().cpu(), out.detach().double().cpu()
    diff = (out - ref).abs()
    max_abs = float(diff.max())
    scale = float(ref.abs().max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    cosine = float(torch.nn.functional.cosine_similarity(out, ref, dim=1, eps=1e-12).min())
    top1 = float((out.argmax(1) == ref.argmax(1)).double().mean())
    if not math.isfinite(float(out.abs().max())):
        max_abs = math.inf
    return Comparison(int(ref.shape[0]), max_abs, max_rel, cosine, top1)


def require_tolerance(report: ValidationReport, atol: float) -> None:
    """Raise ``AtolError`` if any batch of ``report`` differs from PyTorch by more than ``atol``."""
    worst = report.max_abs
    if not worst <= atol:  # also catches NaN
        batches = ", ".join(f"batch {c.batch}: {c.max_abs:.3g}" for c in report.comparisons)
        raise AtolError(
            f"{report.name} ({report.runtime}) differs from PyTorch by max |Δ| {worst:.3g} > "
            f"--atol {atol:g} ({batches}; top-1 agreement {report.top1:.3f})"
        )


def validation_inputs(
    shape: tuple[int, int, int],
    batches: tuple[int, ...],
    calib_data: str | Path | None = None,
    seed: int = 0,
    preprocess: Any = None,
) -> tuple[list[Tensor], str]:
    """Image batches for validation, one per size in ``batches``.

    Args:
        shape: (C, H, W) of the model's input.
        batches: batch sizes, e.g. (1, 8).
        calib_data: an ImageFolder folder (its ``val/`` or ``test/`` part if present), the word
            ``"digits"`` (sklearn's digits, upscaled), or None for standard-normal random inputs.
        seed: seeds the random inputs and the choice of images.
        preprocess: the model's own ``uvc.arch.preprocess.Preprocess`` for folder images (None:
            ImageNet's statistics).

    Returns:
        (batches, a short description of their source for ``export.json``).
    """
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    if calib_data is None:
        return [torch.randn(b, c, h, w, generator=g) for b in batches], "random normal"
    images = _load_images(calib_data, h, sum(batches), g, preprocess)
    if images.shape[1] != c:
        raise DataError(f"--calib-data gives {images.shape[1]}-channel images, the model wants {c}")
    out, start = [], 0
    for b in batches:
        out.append(images[start : start + b])
        start += b
    return out, f"images from {calib_data}"


def _load_images(
    calib_data: str | Path, size: int, n: int, g: torch.Generator, preprocess: Any = None
) -> Tensor:
    from uvc.arch.preprocess import eval_transform
    from uvc.train.data import DigitsDataset, FolderDataset, scan_folder

    if str(calib_data) == "digits":
        ds = DigitsDataset(size, train=False)
    else:
        root = Path(calib_data)
        if not root.is_dir():
            raise DataError(f"--calib-data folder not found: {root}")
        sub = next((root / s for s in ("val", "test") if (root / s).is_dir()), root)
        classes, samples = scan_folder(sub)
        # The model's own preprocessing (spec v2), ImageNet's when it records none.
        ds = FolderDataset(samples, classes, eval_transform(preprocess, size))
    if len(ds) < n:
        raise DataError(f"--calib-data has {len(ds)} images, validation needs {n}")
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()
    return torch.stack([ds[i][0] for i in idx])


class AccuracyDropError(ValidationError):
    """A quantized model loses more top-1 accuracy on held-out images than allowed."""


@dataclass(frozen=True)
class AccuracyCheck:
    """A reduced-precision artifact against the FP32 PyTorch model on labelled held-out images.

    Args:
        name, runtime: what was checked and what ran it.
        images: held-out images compared.
        top1_fp32, top1: top-1 accuracy (%) of the PyTorch FP32 model and of the artifact.
        agreement: share (%) of images whose top-1 class is the same in both.
        drop: ``top1_fp32 - top1`` in points; ``drop_ci`` its paired bootstrap 95% interval.
        max_drop: the largest drop allowed.
    """

    name: str
    runtime: str
    images: int
    top1_fp32: float
    top1: float
    agreement: float
    drop: float
    drop_ci: tuple[float, float]
    max_drop: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export.json``."""
        out = asdict(self)
        out["drop_ci"] = list(self.drop_ci)
        return out


def accuracy_check(
    ref: Tensor,
    out: Tensor,
    labels: Tensor,
    *,
    name: str,
    runtime: str,
    max_drop: float,
) -> AccuracyCheck:
    """Top-1 agreement and accuracy drop of ``out`` against the FP32 logits ``ref``.

    Raises:
        AccuracyDropError: the drop exceeds ``max_drop`` points (or the outputs are not finite).
    """
    from uvc.train.accuracy import paired_difference

    if ref.shape != out.shape or ref.shape[0] != labels.shape[0]:
        raise ValidationError(f"{name}: output shape {tuple(out.shape)} != {tuple(ref.shape)}")
    ok_ref = (ref.argmax(1) == labels).numpy()
    ok_out = (out.argmax(1) == labels).numpy()
    diff = paired_difference(ok_ref, ok_out)
    check = AccuracyCheck(
        name=name,
        runtime=runtime,
        images=int(labels.shape[0]),
        top1_fp32=100.0 * float(ok_ref.mean()),
        top1=100.0 * float(ok_out.mean()),
        agreement=100.0 * float((ref.argmax(1) == out.argmax(1)).double().mean()),
        drop=-diff.diff,
        drop_ci=(-diff.hi, -diff.lo),
        max_drop=max_drop,
    )
    if not bool(torch.isfinite(out).all()) or not check.drop <= max_drop:
        raise AccuracyDropError(
            f"{name} ({runtime}) loses {check.drop:.2f} top-1 points on {check.images} held-out "
            f"images ({check.top1_fp32:.2f}% FP32 -> {check.top1:.2f}%, top-1 agreement "
            f"{check.agreement:.1f}%) > --max-int8-drop {max_drop:g}"
        )
    return check


def require_cosine(report: ValidationReport, min_cosine: float) -> None:
    """Reduced-precision outputs: no NaN/inf, and logit vectors point the same way as PyTorch's."""
    if not report.min_cosine >= min_cosine:
        raise ValidationError(
            f"{report.name} ({report.runtime}) disagrees with PyTorch FP32: min cosine similarity "
            f"{report.min_cosine:.4f} < {min_cosine} (max |Δ| {report.max_abs:.3g}, top-1 "
            f"agreement {report.top1:.3f})"
        )
