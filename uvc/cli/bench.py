"""``uvc bench`` and ``uvc lut``: thin shells over ``uvc.bench``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from uvc.cli.app import cli, default_threads, device_option, handle_errors, parse_csv
from uvc.errors import UvcError

if TYPE_CHECKING:
    from uvc.bench.harness import BenchConfig
    from uvc.bench.report import BenchResult


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--baseline", help="Reference model for speedups (default: the first MODEL).")
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help="Weights for MODELs that carry none (timm names, spec JSONs).",
)
@click.option(
    "--backends",
    default="eager,ort",
    show_default=True,
    help="Comma-separated: eager, compile, cudagraph, ort, ort-trt, trt.",
)
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated.")
@device_option()
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp16/bf16 run on CUDA only.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for every backend (default: torch's default here).",
)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Round-robin passes over the models.",
)
@click.option(
    "--reps",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Timed calls per model per round.",
)
@click.option(
    "--until-ci",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="After --rounds, add rounds until every 95%% interval of a paired speedup is at most "
    "this wide relative to its median (e.g. 0.1), or --ci-time runs out.",
)
@click.option(
    "--ci-time",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="With --until-ci: seconds of extra rounds at most, per backend and batch size.",
)
@click.option(
    "--statistic",
    type=click.Choice(["median", "min"]),
    default="median",
    show_default=True,
    help="What summarises each round for the paired ratios; min resists other processes' load.",
)
@click.option("--include-copies", is_flag=True, help="Time host<->device copies too.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every sample.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Latency-vs-batch PNG.")
@click.option(
    "--check",
    is_flag=True,
    help="Judge each efficiency's 95%% interval against --min-efficiency: exit 1 if some "
    "interval lies wholly below it, 3 if none does but some straddles it (inconclusive), "
    "0 if every interval clears it.",
)
@click.option(
    "--min-efficiency",
    type=click.FloatRange(min=0),
    default=0.8,
    show_default=True,
    help="Efficiency = speedup / MACs-reduction factor.",
)
@click.option(
    "--allow-mismatch",
    is_flag=True,
    help="Compare models of different input size or classes anyway (speedups are then "
    "meaningless; a warning says so).",
)
@handle_errors
def bench(
    models: tuple[str, ...],
    baseline: str | None,
    weights: str | None,
    json_path: str | None,
    plot_path: str | None,
    check: bool,
    min_efficiency: float,
    allow_mismatch: bool,
    **timing: Any,
) -> None:
    """Time MODELs (timm name, spec JSON, checkpoint, export folder) against a baseline.

    Prints, per backend and batch: latency (median, p90), throughput, MACs, speedup vs the
    baseline, MACs reduction and efficiency (speedup / MACs reduction). Models are timed
    round-robin so that all of them see the same machine state; speedup and efficiency are the
    median of per-round paired ratios with a bootstrap 95% interval.

    \b
    uvc bench runs/x/final.pt --baseline deit_small_patch16_224 --batch-sizes 1,8
    uvc bench out/export --baseline deit_small_patch16_224 --device cuda --backends trt --check
    """
    from uvc.bench.harness import bench_targets
    from uvc.bench.report import format_table
    from uvc.cli.checks import bench_preflight

    config = _bench_config(**timing)  # backends, batches, device, precision, threads, rounds...
    # Everything that can be checked is checked before minutes of timing.
    bench_preflight(models, baseline, config, json_path, plot_path, allow_mismatch)
    result = bench_targets(models, config, baseline=baseline, weights=weights)
    click.echo(format_table(result))
    _finish_bench(result, check, min_efficiency, json_path, plot_path)


def _bench_config(
    *,
    backends: str,
    batch_sizes: str,
    device: str,
    precision: str,
    threads: int | None,
    warmup: int,
    rounds: int,
    reps: int,
    until_ci: float | None,
    ci_time: float,
    statistic: str,
    include_copies: bool,
) -> BenchConfig:
    """The ``BenchConfig`` of ``uvc bench``'s options; an invalid one is a ``UvcError``."""
    from uvc.bench.harness import BenchConfig
    from uvc.bench.runners import Backend
    from uvc.bench.timer import TimingConfig
    from uvc.cli.checks import resolve_device

    device = resolve_device(device)
    try:
        return BenchConfig(
            backends=parse_csv(Backend, backends),
            batch_sizes=parse_csv(int, batch_sizes),
            device=device,
            precision=precision,
            threads=threads or default_threads(),
            timing=TimingConfig(
                warmup=warmup,
                rounds=rounds,
                reps=reps,
                until_ci=until_ci,
                ci_time_s=ci_time,
                statistic=statistic,
            ),
            include_copies=include_copies,
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None


def _finish_bench(
    result: BenchResult,
    check: bool,
    min_efficiency: float,
    json_path: str | None,
    plot_path: str | None,
) -> None:
    """After the table: exit 1 if nothing was measured, judge ``--check``, write JSON and plot,
    and exit with the check's code."""
    from uvc.bench.report import check_result

    if not any(r.status == "ok" for r in result.rows):
        first = next((r.status for r in result.rows if r.status != "ok"), "no rows")
        click.echo(
            f"error: nothing was measured: every row failed or was skipped ({first})", err=True
        )
        sys.exit(1)
    verdicts = check_result(result, min_efficiency) if check else None
    if verdicts is not None:
        result.check = {"min_efficiency": min_efficiency, **verdicts.to_dict()}
    if json_path:
        click.echo(f"wrote {result.save(json_path)}")
    if plot_path:
        from uvc.bench.plot import plot_result

        click.echo(f"wrote {plot_result(result, plot_path)}")
    if verdicts is not None:
        for line in verdicts.failed + verdicts.inconclusive:
            click.echo(line, err=True)
        click.echo(
            f"check: {len(verdicts.passed)} passed, {len(verdicts.failed)} failed, "
            f"{len(verdicts.inconclusive)} inconclusive",
            err=True,
        )
        if verdicts.exit_code:
            sys.exit(verdicts.exit_code)


@cli.command()
@click.option("--model", help="Take embed width, tokens and grid ends from this model's spec.")
@click.option("--embed-dim", type=click.IntRange(min=1), help="Without --model: embed width.")
@click.option("--tokens", type=click.IntRange(min=2), help="Without --model: tokens (e.g. 197).")
@device_option()
@click.option(
    "--backend",
    type=click.Choice(["eager", "compile", "cudagraph", "ort", "trt"]),
    default="eager",
    show_default=True,
    help="ort / trt: every sub-layer exported to its own ONNX graph, run by ONNX Runtime / as a "
    "TensorRT engine (trt: --device cuda).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="fp16/bf16 on CUDA (trt fp16: an FP16 engine).",
)
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="With --backend ort: the ONNX exporter (uvc export's default is dynamo).",
)
@click.option(
    "--statistic",
    type=click.Choice(["median", "min"]),
    default="median",
    show_default=True,
    help="Per point: min resists other processes' load (short calls are preempted less).",
)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads (default: torch's default here).",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Table JSON to write.")
@click.option(
    "--check-specs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also measure N random compressed specs and print the table's median error.",
)
@click.option(
    "--embed-dims",
    default=None,
    help="Comma-separated embed widths (including the model's) for an embedding-width axis "
    "(version-2 table, for --method nvit under --metric latency), e.g. 96,144,192.",
)
@handle_errors
def lut(
    model: str | None,
    embed_dim: int | None,
    tokens: int | None,
    device: str,
    backend: str,
    exporter: str,
    precision: str,
    statistic: str,
    batch: int,
    threads: int | None,
    out: str,
    check_specs: int,
    embed_dims: str | None,
) -> None:
    """Measure a latency lookup table (attention and MLP grids, fixed parts) for --metric latency.

    \b
    uvc lut --model deit_small_patch16_224 --batch 8 --out lut.json --check-specs 5
    uvc lut --embed-dim 384 --tokens 197 --device cuda --backend cudagraph --out lut.json
    uvc lut --model runs/demo/teacher.pt --backend ort --batch 32 --out ort_lut.json
    """
    from uvc.bench.lut import LutConfig, build_lut, default_frame
    from uvc.cli.checks import check_lut_size, check_writable_file, resolve_device
    from uvc.files.source import resolve_spec

    if model is None and (embed_dim is None or tokens is None):
        raise UvcError("give --model, or both --embed-dim and --tokens")
    if model is not None and (embed_dim is not None or tokens is not None):
        raise UvcError("--embed-dim and --tokens come from --model's spec: drop them or --model")
    device = resolve_device(device)
    check_writable_file(out, "--out")
    spec = resolve_spec(model) if model else default_frame(embed_dim, tokens)  # type: ignore[arg-type]
    try:
        config = LutConfig.for_spec(
            spec,
            batch=batch,
            backend=backend,
            device=device,
            threads=threads or default_threads(),
            exporter=exporter,
            precision=precision,
            statistic=statistic,
            embed_dims=parse_csv(int, embed_dims) if embed_dims else (),
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None
    check_lut_size(spec, batch, device, check_specs)
    table, err = build_lut(config, out, check_specs)
    click.echo(
        f"wrote {out}: fixed {table.fixed_ms:.3f} ms, full model "
        f"{table.model_ms(spec):.3f} ms predicted"
    )
    if err is not None:
        for p, m in zip(err.predicted_ms, err.measured_ms, strict=True):
            click.echo(
                f"  predicted {p:8.3f} ms  measured {m:8.3f} ms  error {abs(p - m) / m:6.1%}"
            )
        click.echo(
            f"median |predicted - measured| / measured over {len(err.measured_ms)} "
            f"random specs: {err.median_rel_error:.1%}"
        )
