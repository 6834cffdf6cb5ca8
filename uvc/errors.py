"""Typed errors: the library raises these, the CLI turns them into one-line messages."""

from __future__ import annotations


class UvcError(Exception):
    """Base class of every error uvc raises on purpose."""


class SpecError(UvcError, ValueError):
    """An architecture spec is invalid or cannot represent a model faithfully."""


class WeightsError(UvcError):
    """Weights do not match a spec, or a weights file cannot be read."""


class CheckpointError(UvcError):
    """A checkpoint file is missing, corrupt, unsafe or of an unknown format."""


class DataError(UvcError):
    """A dataset folder or image cannot be used."""


class ExportError(UvcError):
    """An export step failed."""


class ValidationError(ExportError):
    """An exported model disagrees with PyTorch beyond the tolerance."""


class BackendUnavailable(UvcError):
    """An optional backend (TensorRT, ONNX Runtime GPU, CUDA) is not present here."""
