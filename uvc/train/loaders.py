"""What the training loops need to know about a data loader: any iterable of (images, targets)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from uvc.errors import DataError

logger = logging.getLogger("uvc.loaders")  # the name logs have always shown


def epoch_length(loader: Iterable[Any], hint: int | None = None) -> int:
    """Batches per epoch: ``hint``, else ``len(loader)``, else one counting pass over it."""
    if hint is not None:
        if hint < 1:
            raise DataError(f"steps_per_epoch must be >= 1, got {hint}")
        return hint
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        logger.info("the training loader has no len(): counting its batches once")
        n = sum(1 for _ in loader)
    if n == 0:
        raise DataError("the training loader yields no batches")
    return n
