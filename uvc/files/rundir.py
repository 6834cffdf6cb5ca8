"""Folders uvc creates, and the marker that lets uvc recognise them later.

uvc replaces or deletes files only inside a folder it created itself. It recognises such a folder
by a marker file it writes there (``.uvc-run.json``: kind, uvc version, creating process), never by
generic names such as ``config.json`` or ``export.json``, which a user's own folder may hold too.

- ``claim(folder, kind)``: a new or empty folder becomes uvc's (marker written); a folder already
  marked with the same kind is uvc's; anything else (a file, another kind, a non-empty folder
  without the marker) is refused with a ``RunDirError``, touching nothing.
- ``remove_own_leftovers(parent, name)``: the hidden ``.NAME.tmp-*`` staging folders a killed
  export leaves behind are removed, but only those carrying uvc's staging marker whose process is
  gone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from uvc.errors import UvcError

MARKER = ".uvc-run.json"
STAGING = "staging"  # kind of a staging folder an export is being written into


class RunDirError(UvcError):
    """An output folder that uvc must not write into (not its own, a file, not writable)."""


def uvc_version() -> str:
    """The installed uvc version ("unknown" in a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("uvc")
    except PackageNotFoundError:
        return "unknown"


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of ``folder`` (None when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def write_marker(folder: str | Path, kind: str, **extra: Any) -> Path:
    """Write (or rewrite) the marker of ``folder``."""
    from uvc._fs import atomic_write_text

    data = {"kind": kind, "uvc_version": uvc_version(), "pid": os.getpid(), **extra}
    return atomic_write_text(Path(folder) / MARKER, json.dumps(data, indent=2) + "\n")


def is_own(folder: str | Path, kind: str | None = None) -> bool:
    """Whether ``folder`` carries uvc's marker (of ``kind``, when given)."""
    marker = read_marker(folder)
    return marker is not None and (kind is None or marker["kind"] == kind)


def check_out_path(folder: str | Path, option: str = "--out") -> Path:
    """Refuse an output path that is a file, lies under a file, or cannot be created/written.

    Nothing is created. Returns the path.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise RunDirError(f"{option} {path}: {probe} is a file, so no folder can be made under it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{option} {path} is not writable (no permission in {probe})")
    return path


def check_claimable(folder: str | Path, kind: str, option: str = "--out") -> None:
    """Raise ``RunDirError`` unless ``claim(folder, kind)`` would succeed (nothing is written)."""
    path = check_out_path(folder, option)
    if not path.is_dir():
        return
    marker = read_marker(path)
    if marker is None:
        if _entries(path):
            raise RunDirError(
                f"{option} {path} is not empty and was not created by uvc; choose an empty or "
                "new folder (uvc never writes into a folder of other files)"
            )
        return
    if marker["kind"] != kind:
        raise RunDirError(
            f"{option} {path} holds a uvc {marker['kind']} folder, not a {kind} folder; choose "
            "another folder"
        )


def claim(folder: str | Path, kind: str, option: str = "--out") -> Path:
    """Make ``folder`` uvc's ``kind`` folder (see the module docstring) and return it.

    Folders created here and the marker are removed again when writing fails, so a refused or
    failed claim leaves nothing behind.
    """
    path = Path(folder)
    check_claimable(path, kind, option)
    if is_own(path, kind):
        return path
    created = _mkdirs(path, option)
    try:
        write_marker(path, kind)
    except OSError as exc:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise RunDirError(f"cannot write into {option} {path}: {_reason(exc)}") from None
    return path


def _mkdirs(path: Path, option: str) -> list[Path]:
    """Create ``path`` and its missing parents; return the ones created (outermost first)."""
    missing = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    created: list[Path] = []
    try:
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
    except OSError as exc:
        for p in reversed(created):
            p.rmdir()
        raise RunDirError(f"cannot create {option} {path}: {_reason(exc)}") from None
    return created[:1]


def _entries(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise RunDirError(f"cannot read the folder {path}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or type(exc).__name__


def foreign_files(folder: str | Path, own: set[str]) -> list[str]:
    """Names in ``folder`` that are not in ``own``, the marker or uvc's atomic-write leftovers."""
    out = []
    for name in _entries(Path(folder)):
        if name == MARKER or name in own or _is_own_tmp(name, own):
            continue
        out.append(name)
    return out


def _is_own_tmp(name: str, own: set[str]) -> bool:
    """``.NAME.xxxxx.tmp``: what ``uvc.files.checkpoint``'s atomic writer leaves when killed."""
    return name.endswith(".tmp") and any(name.startswith(f".{o}.") for o in own | {MARKER})


def remove_own_files(folder: str | Path, own: set[str]) -> list[str]:
    """Delete the files named in ``own`` (and their atomic-write leftovers) from a uvc folder."""
    path = Path(folder)
    if not is_own(path):
        raise RunDirError(f"{path} was not created by uvc: nothing in it is deleted")
    removed = []
    for name in _entries(path):
        if name in own or _is_own_tmp(name, own):
            p = path / name
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(name)
    return removed


def remove_own_leftovers(parent: str | Path, name: str) -> list[Path]:
    """Remove ``parent/.NAME.tmp-*`` and ``.NAME.old-*`` folders that uvc itself left behind.

    Only folders carrying a staging/export marker whose writing process is gone are removed: a
    user's folder of that name, or a concurrent export still running, is left alone.
    """
    removed = []
    parent = Path(parent)
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for p in parent.glob(pattern):
            marker = read_marker(p) if p.is_dir() and not p.is_symlink() else None
            if marker is None or _alive(marker.get("pid")):
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
