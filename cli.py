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


@cli.command()
@click.option(
    "--model",
    default="uvc-tiny",
    show_default=True,
    help="timm ViT/DeiT name, spec JSON, uvc checkpoint, or uvc-tiny (built in).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local weights for --model (.pth/.safetensors/DeiT/uvc). Never downloaded.",
)
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="ImageFolder folder (train/ + val/ or test/, or one tree with --val-split), "
    "or 'digits' (built in, no download).",
)
@click.option(
    "--val-split",
    type=float,
    default=0.0,
    show_default=True,
    help="Held-out fraction when --data is a single ImageFolder tree.",
)
@click.option(
    "--img-size",
    type=int,
    default=None,
    help="Input side for a model without weights (default: the model's; digits: 32).",
)
@click.option("--out", default="runs/train", show_default=True, help="Output folder.")
@click.option(
    "--budget",
    type=float,
    default=0.5,
    show_default=True,
    help="Fraction of the resource to keep (0.5 = half the MACs).",
)
@click.option(
    "--metric",
    type=click.Choice(["macs", "params", "latency"]),
    default="macs",
    show_default=True,
    help="What the budget counts; latency needs --lut.",
)
@click.option(
    "--lut",
    type=click.Path(dir_okay=False),
    default=None,
    help="Latency lookup table JSON (from `uvc lut`) for --metric latency.",
)
@click.option(
    "--search-epochs",
    type=int,
    default=10,
    show_default=True,
    help="Stage-1 (search) epochs, warmup included.",
)
@click.option(
    "--finetune-epochs",
    type=int,
    default=10,
    show_default=True,
    help="Stage-2 epochs on the dense compressed model.",
)
@click.option(
    "--teacher-epochs",
    type=int,
    default=20,
    show_default=True,
    help="Epochs to train the uncompressed model first when it has no weights for "
    "this data (0: never).",
)
@click.option(
    "--warmup-epochs",
    type=int,
    default=2,
    show_default=True,
    help="Search epochs with the skip gates fixed, before pruning starts.",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Per process.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak AdamW LR.")
@click.option(
    "--importance",
    type=click.Choice(["magnitude", "taylor", "fisher"]),
    default="magnitude",
    show_default=True,
    help="How pruning candidates are scored.",
)
@click.option(
    "--per-head-v/--no-per-head-v",
    default=False,
    show_default=True,
    help="UVC's per-head value dims (padded to align heads at export).",
)
@click.option(
    "--align",
    type=int,
    default=1,
    show_default=True,
    help="Round kept widths to a multiple of this (8 suits tensor cores).",
)
@click.option(
    "--kd",
    type=click.Choice(["soft", "hard", "none"]),
    default="soft",
    show_default=True,
    help="Distillation from the teacher.",
)
@click.option(
    "--alpha", type=float, default=0.5, show_default=True, help="Weight of the distillation term."
)
@click.option("--tau", type=float, default=1.0, show_default=True, help="KD temperature.")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option(
    "--mixup",
    type=float,
    default=0.0,
    show_default=True,
    help="Mixup alpha for teacher/finetune training (0: off).",
)
@click.option(
    "--cutmix",
    type=float,
    default=0.0,
    show_default=True,
    help="CutMix alpha for teacher/finetune training (0: off).",
)
@click.option(
    "--teacher",
    default=None,
    help="Extra timm teacher (any architecture, e.g. resnet50); needs --teacher-weights.",
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Local weights of --teacher, trained on this dataset's classes.",
)
@click.option(
    "--amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Mixed precision (CUDA only)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    default=None,
    help="Continue the killed run in this folder with its saved settings "
    "(other options are ignored).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_handle_errors
def train(resume: str | None, no_progress: bool, **options: Any) -> None:
    """Compress a ViT: teacher -> UVC search -> dense model -> fine-tune, all in --out.

    \b
    uvc train --data digits --budget 0.5 --out runs/digits
    uvc train --model deit_tiny_patch16_224 --weights deit_tiny.pth --data ~/imagenet-subset
    uvc train --resume runs/digits        # after a crash or kill

    Writes config.json, teacher.pt, search.pt, spec.json, finetune.pt, final.pt (the dense
    compressed model with its accuracy and MACs), log.jsonl, architecture.png and summary.txt.
    """
    from pipeline import TrainConfig
    from pipeline import train as run_train

    if resume is not None:
        result = run_train(resume=resume)
    else:
        try:
            cfg = TrainConfig(progress=not no_progress, **options)
        except ValueError as exc:
            raise UvcError(str(exc)) from None
        result = run_train(cfg)
    click.echo(f"compressed model: {result.out_dir / 'final.pt'} (table: summary.txt beside it)")


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder.")
@click.option("--fresh", is_flag=True, help="Delete a previous demo run in --out first.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="CPU threads for torch (0: torch's default).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_handle_errors
def demo(out: str, fresh: bool, device: str, seed: int, threads: int, no_progress: bool) -> None:
    """The whole job on the built-in default, in a few minutes on a CPU.

    A tiny ViT on the built-in digits dataset: train the teacher, UVC search at half the MACs,
    build the dense model, fine-tune it with distillation, print the before/after table. A run
    already in --out is continued (finished stages are skipped); --fresh starts over.
    """
    from pipeline import demo as run_demo

    result = run_demo(
        out,
        fresh=fresh,
        device=device,
        seed=seed,
        progress=not no_progress,
        threads=threads or None,
    )
    click.echo(f"compressed model: {result.out_dir / 'final.pt'} (table: summary.txt beside it)")


@cli.command("export")
@click.argument("model")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder.")
@click.option("--weights", type=click.Path(), default=None, help="Local weights file.")
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Write model.onnx.")
@click.option("--trt", is_flag=True, help="Build a TensorRT engine (needs a GPU and uvc[gpu]).")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx; FP16 engine with --trt.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset (at least 17).")
@click.option("--min-batch", default=1, show_default=True, help="Smallest engine batch.")
@click.option("--opt-batch", type=int, default=None, help="Engine batch to tune for [8].")
@click.option("--max-batch", default=32, show_default=True, help="Largest engine batch.")
@click.option("--simplify", is_flag=True, help="Simplify the ONNX graph with onnxslim.")
@click.option("--atol", default=1e-4, show_default=True, help="Max |logit diff| (FP32).")
@click.option("--calib-data", default=None, help="Validation images: a folder or 'digits'.")
@click.option(
    "--val-batches",
    default="1,8",
    show_default=True,
    help="Batch sizes ONNX is validated on (>= 2 sizes); with --calib-data their sum is the "
    "number of images compared (e.g. 1,8,350 for all 359 digits validation images).",
)
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "torchscript"]),
    default="dynamo",
    show_default=True,
    help="torch.onnx exporter.",
)
@click.option("--timing-cache", type=click.Path(), default=None, help="TensorRT timing cache.")
@click.option("--workspace-mib", default=4096, show_default=True, help="TensorRT workspace.")
@click.option("--tf32", is_flag=True, help="Allow TF32 in FP32 TensorRT engines (off: real FP32).")
@_handle_errors
def export_cmd(model: str, out: str, **opts: Any) -> None:
    """Export MODEL to ONNX / TensorRT in OUT, validated against PyTorch.

    MODEL is a uvc checkpoint (dense, or a search checkpoint, materialized first), a spec JSON or
    a timm name (with --weights). Exit 1 when outputs differ beyond tolerance, 2 on bad input.
    """
    from export.pipeline import ExportConfig, export_model
    from uvc.errors import ValidationError

    opts["val_batches"] = _bench_csv(int, opts["val_batches"])
    cfg = ExportConfig(model=model, out=out, **opts)
    try:
        result = export_model(cfg)
    except ValidationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"exported to {result.out}: {', '.join(result.files)}")


def _bench_csv(kind: Any, text: str) -> tuple[Any, ...]:
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


def _bench_threads() -> int:
    import torch

    return torch.get_num_threads()


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
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
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
@click.option("--include-copies", is_flag=True, help="Time host<->device copies too.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every sample.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Latency-vs-batch PNG.")
@click.option("--check", is_flag=True, help="Exit 1 if any efficiency is below --min-efficiency.")
@click.option(
    "--min-efficiency",
    type=click.FloatRange(min=0),
    default=0.8,
    show_default=True,
    help="Efficiency = speedup / MACs-reduction factor.",
)
@_handle_errors
def bench(
    models: tuple[str, ...],
    baseline: str | None,
    weights: str | None,
    backends: str,
    batch_sizes: str,
    device: str,
    precision: str,
    threads: int | None,
    warmup: int,
    rounds: int,
    reps: int,
    include_copies: bool,
    json_path: str | None,
    plot_path: str | None,
    check: bool,
    min_efficiency: float,
) -> None:
    """Time MODELs (timm name, spec JSON, checkpoint, export folder) against a baseline.

    Prints, per backend and batch: latency (median, p90), throughput, MACs, speedup vs the
    baseline, MACs reduction and efficiency (speedup / MACs reduction). Models are timed
    round-robin so that all of them see the same machine state.

    \b
    uvc bench runs/x/final.pt --baseline deit_small_patch16_224 --batch-sizes 1,8
    uvc bench out/export --baseline deit_small_patch16_224 --device cuda --backends trt --check
    """
    from bench.harness import BenchConfig, bench_targets
    from bench.report import check_problems, format_table
    from bench.runners import Backend
    from bench.timer import TimingConfig

    try:
        config = BenchConfig(
            backends=_bench_csv(Backend, backends),
            batch_sizes=_bench_csv(int, batch_sizes),
            device=device,
            precision=precision,
            threads=threads or _bench_threads(),
            timing=TimingConfig(warmup=warmup, rounds=rounds, reps=reps),
            include_copies=include_copies,
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None
    result = bench_targets(models, config, baseline=baseline, weights=weights)
    click.echo(format_table(result))
    if json_path:
        click.echo(f"wrote {result.save(json_path)}")
    if plot_path:
        from bench.plot import plot_result

        click.echo(f"wrote {plot_result(result, plot_path)}")
    if check:
        problems = check_problems(result, min_efficiency)
        for line in problems:
            click.echo(line, err=True)
        if problems:
            sys.exit(1)


@cli.command()
@click.option("--model", help="Take embed width, tokens and grid ends from this model's spec.")
@click.option("--embed-dim", type=click.IntRange(min=1), help="Without --model: embed width.")
@click.option("--tokens", type=click.IntRange(min=2), help="Without --model: tokens (e.g. 197).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["eager", "compile", "cudagraph"]),
    default="eager",
    show_default=True,
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
@_handle_errors
def lut(
    model: str | None,
    embed_dim: int | None,
    tokens: int | None,
    device: str,
    backend: str,
    batch: int,
    threads: int | None,
    out: str,
    check_specs: int,
) -> None:
    """Measure a latency lookup table (attention and MLP grids, fixed parts) for --metric latency.

    \b
    uvc lut --model deit_small_patch16_224 --batch 8 --out lut.json --check-specs 5
    uvc lut --embed-dim 384 --tokens 197 --device cuda --backend cudagraph --out lut.json
    """
    from bench.lut import LutConfig, build_lut, default_frame
    from uvc.source import resolve_spec

    if model is None and (embed_dim is None or tokens is None):
        raise UvcError("give --model, or both --embed-dim and --tokens")
    spec = resolve_spec(model) if model else default_frame(embed_dim, tokens)  # type: ignore[arg-type]
    try:
        config = LutConfig.for_spec(
            spec, batch=batch, backend=backend, device=device, threads=threads or _bench_threads()
        )
    except ValueError as exc:
        raise UvcError(str(exc)) from None
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


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="uvc")


if __name__ == "__main__":
    main()
