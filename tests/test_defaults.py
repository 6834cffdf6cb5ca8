"""Each default lives in one place: the CLI's options agree with the config dataclasses."""

from __future__ import annotations

import dataclasses

import click

from uvc.api import SETTINGS
from uvc.cli import cli
from uvc.settings import TrainConfig


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def test_train_options_default_to_the_train_config() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    options = _options(cli.commands["train"])
    shared = sorted(set(fields) & set(options))
    assert len(shared) >= 25, shared  # nearly every setting is an option
    for name in shared:
        assert options[name].default == fields[name], name
    # Settings without an option of the same name are spelled differently on purpose.
    assert set(fields) - set(options) <= {"progress"}  # --no-progress


def test_compress_settings_are_train_settings() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(SETTINGS) <= fields


def test_train_settings_reach_the_search_config() -> None:
    """Every search-relevant TrainConfig setting is passed on (a dropped one silently runs UVC's
    defaults, as --method once did)."""
    from uvc.api import search_config
    from uvc.methods.uvc.gates import GateMode

    cfg = TrainConfig(method="uniform", gates="none", importance="taylor", align=8, budget=0.4)
    sc = search_config(cfg)
    assert (sc.method, sc.gates, sc.importance, sc.align, sc.budget) == (
        "uniform", GateMode.NONE, "taylor", 8, 0.4,
    )  # fmt: skip
