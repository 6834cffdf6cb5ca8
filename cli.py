"""The ``uvc`` command line: thin click commands over the library (``uvc --help``)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from uvc.errors import UvcError


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
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


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_handle_errors
def inspect(target: str, as_json: bool) -> None:
    """Show the MACs and parameters of TARGET, per block and in total.

    TARGET is a timm model name (e.g. deit_small_patch16_224), a spec JSON file or a uvc
    checkpoint (.pt). MACs are what papers call FLOPs (DeiT-Small: 4.6 G).
    """
    from uvc.source import resolve_spec
    from uvc.summary import cost_summary, cost_table

    spec = resolve_spec(target)
    if as_json:
        click.echo(json.dumps(cost_summary(spec)))
    else:
        click.echo(cost_table(spec))


# --- more commands are registered below (train, demo, export, bench, lut) ---


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="uvc")


if __name__ == "__main__":
    main()
