"""The output folder of ``uvc export``: staged beside ``--out``, moved into place when complete.

A staging folder in the same parent (same filesystem, so the final ``os.replace`` is atomic)
receives every artifact; only a fully validated export is renamed to ``--out``. An existing
``--out`` is replaced only when it holds a previous uvc export (``export.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from uvc.errors import ExportError


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def check_out(out: Path) -> None:
    """Refuse an output folder we must not replace: a file, or a folder with foreign content."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise ExportError(
            f"--out {out} is not empty and holds no previous uvc export; choose an empty or new "
            "folder"
        )


def make_staging(out: Path) -> Path:
    """A new private folder beside ``out`` (ExportError when the parent is not writable)."""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write the output folder {out}: {exc.strerror}") from None
    # mkdtemp makes a private (0700) folder; the final folder should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def usual_permissions(folder: Path) -> None:
    """Atomic writers create private (0600) files; give artifacts the umask's permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; a previous export there is replaced whole."""
    old = None
    try:
        if out.is_dir():
            if any(out.iterdir()):
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
            else:
                out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous export back
        raise ExportError(f"cannot write the output folder {out}: {exc.strerror}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
