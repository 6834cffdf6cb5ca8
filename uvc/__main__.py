"""``python -m uvc``: the same command line as the ``uvc`` script."""

from uvc.cli import main

if __name__ == "__main__":
    main()
