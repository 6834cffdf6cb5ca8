"""The ``uvc`` command line from a source checkout: ``python cli.py --help``.

The commands live in ``uvc.cli`` (installed as the ``uvc`` script, and ``python -m uvc``); this file
only keeps the repository's layout runnable without installing.
"""

from uvc.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
