"""The click group, error handling and option parsing shared by every ``uvc`` command."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from uvc.errors import UvcError


def one_line(text: str) -> str:
    """The first non-empty line of ``text`` (a message must fit one line)."""
    return next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit code 2 (no traceback).

    Ctrl-C exits 130 with one line; an ``OSError`` that escapes the library (a full disk, a
    permission) is reported with its reason and path, exit 2.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UvcError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or one_line(str(exc))}{where}", err=True)
            sys.exit(2)

    return wrapper


class DeviceType(click.ParamType):
    """``--device``: auto, cpu, cuda or cuda:N (one choice list and one default everywhere)."""

    name = "device"
    choices = ("auto", "cpu", "cuda")

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        """Shown in --help."""
        return "[auto|cpu|cuda|cuda:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """Accept the choices (and cuda:N); anything else is a usage error (exit 2)."""
        base, _, index = str(value).partition(":")
        if base not in self.choices or (index and (base != "cuda" or not index.isdigit())):
            self.fail(f"{value!r} is not one of auto, cpu, cuda, cuda:N", param, ctx)
        return str(value)


DEFAULT_DEVICE = "auto"


def device_option(help_text: str = "Where to run: auto (CUDA when available), cpu or cuda.") -> Any:
    """The shared ``--device`` option."""
    return click.option(
        "--device", type=DeviceType(), default=DEFAULT_DEVICE, show_default=True, help=help_text
    )


def threads_option(default: int = 0) -> Any:
    """The shared ``--threads`` option of the training commands (0: torch's default)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        help="CPU threads for torch (0: torch's default).",
    )


def progress_option() -> Any:
    """The shared ``--progress/--no-progress`` option; unset, bars show only on a terminal."""
    return click.option(
        "--progress/--no-progress",
        "progress_bars",
        default=None,
        help="Progress bars (default: only when stderr is a terminal; in a log file or CI, the "
        "one log line per epoch instead of every bar refresh).",
    )


def show_progress(progress_bars: bool | None) -> bool:
    """Whether to draw progress bars: as asked, else only when stderr is a terminal."""
    if progress_bars is not None:
        return progress_bars
    return sys.stderr.isatty()


def given_options(ctx: click.Context) -> list[str]:
    """Names of the options the user passed on the command line (not defaults)."""
    from click.core import ParameterSource

    return [
        name
        for name in ctx.params
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    ]


class OneLineUsageError(click.ClickException):
    """A usage error shown as one line (``error: ...``), exit 2, like every other bad input."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        """Print the one line."""
        click.echo(f"error: {self.format_message()}", err=True)


class UvcGroup(click.Group):
    """The ``uvc`` group: a bad option value of any command is one line, not a usage screen."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; its usage errors become ``OneLineUsageError``."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "uvc"
            raise OneLineUsageError(
                f"{one_line(exc.format_message())} (see {where} --help)"
            ) from None


@click.group(cls=UvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
