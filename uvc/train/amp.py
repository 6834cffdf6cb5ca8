"""Mixed precision, in one place: the mode, the autocast context, the check and the scaler."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from uvc.errors import UvcError


class AmpMode(str, Enum):
    """Mixed precision for training (CUDA only)."""

    BF16 = "bf16"
    FP16 = "fp16"


def amp_mode(amp: AmpMode | str | None) -> AmpMode | None:
    """Parse ``None``, ``"bf16"`` or ``"fp16"``; anything else is a ``UvcError``."""
    if amp is None:
        return None
    try:
        return AmpMode(amp)
    except ValueError:
        raise UvcError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}") from None


def check_amp(device: torch.device, amp: AmpMode | str | None) -> None:
    """Refuse mixed precision where it cannot work (anything but CUDA)."""
    mode = amp_mode(amp)
    if mode is not None and device.type != "cuda":
        raise UvcError(
            f"--amp {mode.value} needs a CUDA GPU (this run is on {device.type}); drop --amp "
            "to train in fp32"
        )


def autocast(device: torch.device, amp: AmpMode | str | None) -> Any:
    """The autocast context for ``amp`` (a disabled context for fp32)."""
    mode = amp_mode(amp)
    if mode is None:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if mode is AmpMode.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(amp: AmpMode | str | None) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler("cuda", enabled=amp_mode(amp) is AmpMode.FP16)
