"""TensorRT timing caches, kept per TensorRT version, and the atomic file writes engines use.

A timing cache remembers the builder's kernel timings so a rebuild (or the many small engines of a
latency table) skips re-timing the same layer shapes. ``read_timing_cache`` / ``write_timing_cache``
keep a ``<cache>.version`` tag beside it so a cache from another TensorRT is never fed to the
builder; ``use_timing_cache`` sets one on a builder config. ``uvc.export.tensorrt`` re-exports them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from uvc.errors import ExportError

# The records keep the name they were logged under before these moved out of ``tensorrt``.
log = logging.getLogger("uvc.export.tensorrt")


def read_timing_cache(path: Path, version: str) -> bytes:
    """The timing cache at ``path`` if it was written by this TensorRT ``version``, else b"".

    A cache from another TensorRT version is rejected by the builder (or, worse, half-used); the
    version is kept in ``<cache>.version`` beside it, so a stale cache is simply not read.
    """
    if not path.is_file():
        return b""
    tag = path.with_name(path.name + ".version")
    written_by = tag.read_text().strip() if tag.is_file() else "an unknown version"
    if written_by != version:
        log.warning(
            "timing cache %s was written by TensorRT %s, this is %s: starting a new one",
            path,
            written_by,
            version,
        )
        return b""
    return path.read_bytes()


def write_timing_cache(path: Path, data: bytes, version: str) -> None:
    """Write a timing cache and its version tag (parent folders created)."""
    _write_bytes(path, data)
    _write_bytes(path.with_name(path.name + ".version"), (version + "\n").encode())


def use_timing_cache(config: Any, data: bytes) -> Any:
    """Create a timing cache from ``data`` and set it on the builder ``config``.

    ``set_timing_cache`` returns False when the cache does not fit this TensorRT/device (and
    ``create_timing_cache`` may return None): then an empty cache is used instead, with a warning.

    Raises:
        ExportError: not even an empty cache could be set.
    """
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if data:
        log.warning("TensorRT rejected the timing cache (another version or GPU): starting empty")
        cache = config.create_timing_cache(b"")
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
    raise ExportError("TensorRT could not set a timing cache on the builder config")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` then rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
