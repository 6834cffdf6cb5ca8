"""Compatibility: ``uvc.preprocess`` moved to ``uvc.arch.preprocess`` (kept for one release)."""

import warnings

from uvc.arch.preprocess import Preprocess, eval_transform, train_transform

__all__ = ["Preprocess", "eval_transform", "train_transform"]

warnings.warn(
    "uvc.preprocess moved to uvc.arch.preprocess; the old name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
