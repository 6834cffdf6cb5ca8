"""A model's own input preprocessing (mean, std, resize, crop, interpolation) and its transforms.

Stored in the spec (``ViTSpec.preprocess``), so a converted third-party model carries the
normalisation it was trained with: a CIFAR model normalised with CIFAR statistics scores ~70%, the
same model fed ImageNet-normalised images scores far less.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from uvc.errors import SpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into the model's input tensor.

    Eval: resize the shorter side to ``resize``, center-crop ``crop``, scale to [0, 1], normalise.

    Args:
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        resize: shorter side before the crop (None: the crop size, i.e. no crop margin).
        crop: side of the center crop (None: the model's ``img_size``).
        interpolation: PIL resampling filter name.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        try:
            mean = tuple(float(m) for m in self.mean)
            std = tuple(float(s) for s in self.std)
        except (TypeError, ValueError):
            raise SpecError(
                f"preprocess mean/std must be numbers, got {self.mean}, {self.std}"
            ) from None
        if not mean or len(mean) != len(std):
            raise SpecError(f"preprocess mean {mean} and std {std} need the same length (>= 1)")
        if any(s <= 0 for s in std):
            raise SpecError(f"preprocess std must be > 0, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise SpecError(f"preprocess {name} must be a positive integer, got {value!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(
                f"preprocess interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of ``to_dict``; unknown keys are refused."""
        if not isinstance(data, dict):
            raise SpecError(f"preprocess must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"mean", "std", "resize", "crop", "interpolation"})
        if unknown:
            raise SpecError(f"unknown preprocess field(s): {', '.join(unknown)}")
        return cls(**data)

    def sizes(self, img_size: int) -> tuple[int, int]:
        """(resize, crop) for a model of input side ``img_size``."""
        crop = self.crop or img_size
        return (self.resize or crop), crop


def eval_transform(pre: Preprocess | None, img_size: int) -> Callable:
    """The deterministic eval transform of ``pre`` (ImageNet statistics when None)."""
    from torchvision import transforms as T

    pre = pre or Preprocess()
    resize, crop = pre.sizes(img_size)
    mode = T.InterpolationMode(pre.interpolation)
    return T.Compose(
        [
            T.Resize(resize, interpolation=mode),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(pre: Preprocess | None, img_size: int) -> Callable:
    """timm's training augmentation (random-resized crop, flip) with the model's statistics."""
    from timm.data import create_transform

    pre = pre or Preprocess()
    return create_transform(
        (len(pre.mean), img_size, img_size),
        is_training=True,
        mean=pre.mean,
        std=pre.std,
        interpolation=pre.interpolation,
    )
