"""``uvc train`` and ``uvc demo``: thin shells over ``uvc.pipeline``."""

from __future__ import annotations

import sys
from typing import Any

import click

from uvc.cli.app import (
    cli,
    device_option,
    given_options,
    handle_errors,
    one_line,
    progress_option,
    show_progress,
    threads_option,
)
from uvc.errors import UvcError

# Options a resumed run may take (they do not change its results); any other is refused.
RESUME_OPTIONS = {"resume", "progress_bars", "threads", "device", "workers"}


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
    "--merge",
    default=None,
    metavar="R",
    help="Token merging (ToMe) in the compressed model: R tokens merged in every block, or one "
    "R per block (8,8,4,0,0,0), between attention and MLP; the class/distillation/register "
    "tokens never merge. The budget counts it: at equal --budget less width is pruned.",
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
    "--method",
    type=click.Choice(["nvit", "uniform", "uvc"]),  # uvc.methods.METHODS (not imported: torch)
    default="uvc",
    show_default=True,
    help="Compression method: uvc (primal-dual search), uniform (same ratio everywhere), nvit "
    "(global Hessian-aware pruning, embedding width included).",
)
@click.option(
    "--nvit-lambda",
    type=float,
    default=None,
    help="nvit: weight of the cost a chunk saves in its rank (default 0.1; 0: saliency only).",
)
@click.option(
    "--nvit-interval",
    type=int,
    default=None,
    help="nvit: batches between pruning steps (default 10).",
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
    "--gates",
    type=click.Choice(["all", "block", "parts", "none"]),
    default="all",
    show_default=True,
    help="uvc: which skip gates the search learns (block, attention/MLP parts, both, none).",
)
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
@device_option()
@threads_option()
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader workers.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    default=None,
    help="Continue the killed run in this folder with its saved settings (only --device, "
    "--workers, --threads and --[no-]progress may be given with it).",
)
@progress_option()
@handle_errors
def train(resume: str | None, progress_bars: bool | None, **options: Any) -> None:
    """Compress a ViT: teacher -> UVC search -> dense model -> fine-tune, all in --out.

    \b
    uvc train --data digits --budget 0.5 --out runs/digits
    uvc train --model deit_tiny_patch16_224 --weights deit_tiny.pth --data ~/imagenet-subset
    uvc train --resume runs/digits        # after a crash or kill

    Writes config.json, teacher.pt, search.pt, spec.json, finetune.pt, final.pt (the dense
    compressed model with its accuracy and MACs), log.jsonl, architecture.png and summary.txt.
    """
    from uvc.pipeline import TrainConfig
    from uvc.pipeline import train as run_train

    threads = options.pop("threads")
    if resume is not None:
        from uvc.pipeline.stages import check_resumable

        check_resumable(resume)
        extra = sorted(set(given_options(click.get_current_context())) - RESUME_OPTIONS)
        if extra:
            shown = ", ".join("--" + n.replace("_", "-") for n in extra)
            raise UvcError(
                f"--resume continues a run with its saved settings; drop {shown} (or start a "
                "new run in another --out)"
            )
        overrides = {"progress": show_progress(progress_bars)}
        for name in ("device", "workers"):
            if name in given_options(click.get_current_context()):
                overrides[name] = options[name]
        out = resume
        call: Any = lambda: run_train(resume=resume, overrides=overrides)  # noqa: E731
        again = f"uvc train --resume {resume}"
    else:
        given = given_options(click.get_current_context())
        ignored = [n for n in ("alpha", "tau") if n in given]
        if options["kd"] == "none" and ignored:
            shown = " and ".join("--" + n for n in ignored)
            verb = "shapes" if len(ignored) == 1 else "shape"
            raise UvcError(f"{shown} {verb} the distillation term, which --kd none turns off")
        try:
            cfg = TrainConfig(progress=show_progress(progress_bars), **options)
        except ValueError as exc:
            raise UvcError(str(exc)) from None
        out = cfg.out
        call = lambda: run_train(cfg)  # noqa: E731
        again = f"uvc train --resume {cfg.out}"
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = run_interruptible(call, out, again)
    click.echo(f"compressed model: {result.out_dir / 'final.pt'} (table: summary.txt beside it)")
    check_budget_met(result.meta)


def run_interruptible(call: Any, out: str, again: str) -> Any:
    """Run ``call``; after Ctrl-C or a failed write, print the command that resumes the run."""
    from uvc._fs import WriteError
    from uvc.files.rundir import is_own

    try:
        return call()
    except KeyboardInterrupt:
        if is_own(out):
            click.echo(f"interrupted; the run is saved in {out}: resume it with: {again}", err=True)
        else:
            click.echo("interrupted before anything was written", err=True)
        sys.exit(130)
    except WriteError as exc:
        raise UvcError(
            f"{one_line(str(exc))}; earlier checkpoints are intact: free space, then run: {again}"
        ) from None


def check_budget_met(meta: dict[str, Any]) -> None:
    """Exit 1 (with one line) when the compressed model's MACs/params exceed the budget."""
    metric, budget = meta.get("metric"), meta.get("budget")
    if metric not in ("macs", "params") or not isinstance(budget, float | int):
        return
    before, after = meta.get(f"{metric}_before"), meta.get(f"{metric}_after")
    if not before or after is None:
        return
    ratio = after / before
    if ratio > budget * 1.001:
        click.echo(
            f"error: the compressed model keeps {ratio:.4f} of the {metric}, above --budget "
            f"{budget:g}",
            err=True,
        )
        sys.exit(1)


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Delete the files of a previous demo run in --out first (only in a folder uvc made).",
)
@device_option()
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option(default=1)
@progress_option()
@handle_errors
def demo(
    out: str, fresh: bool, device: str, seed: int, threads: int, progress_bars: bool | None
) -> None:
    """The whole job on the built-in default, in a few minutes on a CPU.

    A tiny ViT on the built-in digits dataset: train the teacher, UVC search at half the MACs,
    build the dense model, fine-tune it with distillation, print the before/after table. A run
    already in --out is continued (finished stages are skipped); --fresh starts over.
    """
    from uvc.pipeline import demo as run_demo

    def call() -> Any:
        return run_demo(
            out,
            fresh=fresh,
            device=device,
            seed=seed,
            progress=show_progress(progress_bars),
            threads=threads or None,
        )

    result = run_interruptible(call, out, f"uvc demo --out {out}")
    click.echo(f"compressed model: {result.out_dir / 'final.pt'} (table: summary.txt beside it)")
