"""The click group, error handling and option parsing shared by every ``uvc`` command."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from uvc.errors import UvcError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UvcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="uvc")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """uvc: compress a Vision Transformer (UVC, NViT), export it (ONNX, TensorRT) and measure it.

    \b
    uvc inspect deit_small_patch16_224     cost of a model, block by block
    uvc demo                               the whole job on a built-in dataset, on a CPU
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def parse_csv(kind: Any, text: str) -> tuple[Any, ...]:
    """Parse a comma-separated option into a tuple of ``kind``; bad items are usage errors."""
    try:
        return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        choices = (
            ", ".join(v.value for v in kind)
            if isinstance(kind, type) and hasattr(kind, "__members__")
            else ""
        )
        hint = f" (choices: {choices})" if choices else ""
        raise UvcError(f"cannot parse {text!r} as comma-separated {kind.__name__}{hint}") from None


def default_threads() -> int:
    """torch's default CPU thread count here."""
    import torch

    return torch.get_num_threads()
