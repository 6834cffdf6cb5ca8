"""The output folder of ``uvc export``: staged beside ``--out``, moved into place when complete.

A staging folder in the same parent (same filesystem, so the final ``os.replace`` is atomic)
receives every artifact; only a fully validated export is renamed to ``--out``. An existing
``--out`` is replaced only when uvc created it (its ``uvc.files.rundir`` marker says "export") and
it
holds nothing but the files that export wrote: a user's folder is never replaced, whatever its
files are called (an ``export.json`` of one's own included). Staging folders a killed export left
behind (``.NAME.tmp-*``, with uvc's staging marker and a dead process) are removed by the next
export to the same place; nothing else is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from uvc.errors import ExportError
from uvc.files.rundir import (
    MARKER,
    STAGING,
    foreign_files,
    read_marker,
    remove_own_leftovers,
    write_marker,
)

KIND = "export"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def check_out(out: Path) -> None:
    """Refuse an output folder we must not replace: a file, or a folder uvc did not write alone."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = read_marker(out)
    if marker is None or marker["kind"] != KIND:
        raise ExportError(
            f"--out {out} is not empty and was not created by uvc export; choose an empty or new "
            "folder (uvc never replaces a folder of other files)"
        )
    files = marker.get("files")
    own = {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()
    foreign = foreign_files(out, own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ExportError(
            f"--out {out} holds files uvc export did not write ({shown}); move them out or "
            "choose another folder"
        )


def make_staging(out: Path) -> Path:
    """A new private folder beside ``out`` (ExportError when the parent is not writable).

    Leftovers of killed exports to the same ``out`` are removed first (only uvc's own).
    """
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_own_leftovers(parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise ExportError(f"cannot write the output folder {out}: {exc.strerror}") from None
    try:
        write_marker(tmp, STAGING)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    """Rename the finished folder to ``out``; a previous export there is replaced whole.

    ``out`` is checked again (an export takes minutes; a user may have added a file meanwhile),
    and the finished folder's marker lists the files this export wrote.
    """
    check_out(out)
    files = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
    write_marker(tmp, KIND, files=files)
    (tmp / MARKER).chmod(0o666 & ~_umask())
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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries an export depends on (tensorrt None where absent)."""
    import onnx
    import onnxruntime
    import torch

    out: dict[str, str | None] = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tensorrt": None,
    }
    try:
        import tensorrt

        out["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        pass
    return out
