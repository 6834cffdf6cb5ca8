"""Atomic file writes (a temporary file in the same folder, then ``os.replace``).

The lowest layer with ``uvc.errors``: the spec, latency tables, checkpoints and run folders all
write through it, so a run killed mid-write leaves the previous file intact. Imports nothing of
uvc but ``uvc.errors``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uvc.errors import UvcError


class WriteError(UvcError):
    """A file could not be written (disk full, no permission); the previous version is intact."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    folder = path.parent
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        # torch.save reports a full disk as a RuntimeError wrapping the OS error's text.
        if isinstance(exc, OSError) or _is_disk_error(exc):
            raise WriteError(f"cannot write {path}: {_os_reason(exc)}") from None
        raise
    return path


def _is_disk_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "No space left" in text or "file write failed" in text or "unexpected pos" in text
    )


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on the device"
        return exc.strerror or str(exc)
    return "no space left on the device" if "No space left" in str(exc) else str(exc)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))
