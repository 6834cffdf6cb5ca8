"""The ``uvc`` command line: thin click commands over the library (``uvc --help``).

The top of the package: it may import every layer below (pipeline, api, tools, bench, export, ...).
"""

from uvc.cli import bench, convert, deploy, evaluate, train  # noqa: F401  (registers the commands)
from uvc.cli.app import cli


def main() -> None:
    """Console-script entry point (``uvc`` and ``python -m uvc``)."""
    cli(prog_name="uvc")


__all__ = ["cli", "main"]
