"""``uvc eval``: top-1 of trained models on one validation set, and whether they really differ."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from uvc.cli.app import cli, device_option, handle_errors, threads_option
from uvc.errors import UvcError

if TYPE_CHECKING:
    from uvc.arch.model import ViT

log = logging.getLogger(__name__)


@cli.command(name="eval")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--data",
    required=True,
    help="Dataset: a folder (train/ + val/|test/, or one tree with --val-split) or 'digits'.",
)
@click.option(
    "--val-split",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Share held out of a single-folder dataset (the same split uvc train makes).",
)
@click.option("--baseline", help="The MODEL the others are compared with (default: the first).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@device_option()
@threads_option()
@click.option("--json", "json_out", help="Also write the figures to this JSON file.")
@handle_errors
def evaluate(
    models: tuple[str, ...],
    data: str,
    val_split: float,
    baseline: str | None,
    batch_size: int,
    workers: int,
    device: str,
    threads: int,
    json_out: str | None,
) -> None:
    """Top-1 of trained MODELs (uvc checkpoints or export folders) on DATA's validation images,
    each with its own preprocessing, and every MODEL against the baseline on the same images.

    A MODEL may also be an exported graph in an export folder (e.g. exp/model.int8.onnx): it is
    run by ONNX Runtime on the CPU, with the folder's spec for its preprocessing.

    \b
    uvc eval cifar_vit.pt runs/uvc/final.pt runs/uniform/final.pt --data cifar10
    uvc eval exp exp/model.int8.onnx --data cifar10

    Each row gives top-1 with a Wilson 95% interval. From the second row on: the difference to the
    baseline in points with a paired bootstrap 95% interval, the images only the baseline / only
    this model gets right, and McNemar's exact p-value on them. A difference whose interval spans
    0 is not a difference.
    """
    import torch

    from uvc.cli.checks import check_writable_file, resolve_device
    from uvc.train.accuracy import accuracy, correct_mask, model_val_loader, paired_difference

    if baseline is not None:
        models = (baseline, *(m for m in models if m != baseline))
    if len(set(models)) != len(models):
        raise UvcError("a MODEL is named twice")
    if json_out is not None:
        check_writable_file(json_out, "--json")
    dev = torch.device(resolve_device(device))
    # Every model is checked before any image is read.
    loaded = [_load_trained(m, threads or None) for m in models]
    if threads:
        torch.set_num_threads(threads)
    loaders = []
    for name, model in zip(models, loaded, strict=True):
        loader, classes = model_val_loader(model.spec, data, batch_size, val_split, workers)
        if classes != model.spec.num_classes:
            raise UvcError(f"{name} has {model.spec.num_classes} classes, {data} has {classes}")
        loaders.append(loader)
    masks = []
    for name, model, loader in zip(models, loaded, loaders, strict=True):
        log.info("scoring %s on %d images", name, len(loader.dataset))
        masks.append(correct_mask(model, loader, dev))
    rows = []
    for name, mask in zip(models, masks, strict=True):
        acc = accuracy(mask)
        row = {"model": name, "top1": acc.top1, "ci": [acc.lo, acc.hi], "images": acc.n}
        if rows:
            d = paired_difference(masks[0], mask)
            row["vs_baseline"] = {
                "diff": d.diff, "ci": [d.lo, d.hi], "p_value": d.p_value,
                "only_baseline": d.only_a, "only_this": d.only_b,
            }  # fmt: skip
        rows.append(row)
    click.echo(_table(rows))
    if json_out is not None:
        from uvc._fs import atomic_write_text

        report = {"data": data, "baseline": models[0], "models": rows}
        atomic_write_text(Path(json_out), json.dumps(report, indent=2))
        click.echo(f"wrote {json_out}")


def _load_trained(target: str, threads: int | None = None) -> ViT:
    """The model of a checkpoint or export folder; a spec or timm name has no trained weights.

    An ``.onnx`` file of an export folder becomes an ONNX Runtime module with the folder's spec.
    """
    from uvc.files.source import export_file, load_model

    path = Path(target)
    if not path.exists() and (path.suffix or len(path.parts) > 1):
        raise UvcError(f"file not found: {target}")
    if path.is_file() and path.suffix == ".onnx":
        from uvc.export.onnx import OnnxClassifier

        spec = load_model(export_file(path.parent)).spec
        return OnnxClassifier(path, spec, threads)  # type: ignore[return-value]
    if path.is_dir():
        path = export_file(path)
    if not path.is_file() or path.suffix == ".json":
        raise UvcError(
            f"{target} carries no trained weights: give a uvc checkpoint (.pt) or an export folder"
        )
    return load_model(path)


def _table(rows: list[dict]) -> str:
    """The rows as a fixed-width table."""
    head = f"{'model':<32} {'top-1 %':>8}  {'95% CI':<15} {'vs base':>8}  {'95% CI':<15} "
    head += f"{'only base/this':>15}  {'p':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['model']:<32} {r['top1']:>8.2f}  [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
        if "vs_baseline" in r:
            v = r["vs_baseline"]
            pair = f"{v['only_baseline']}/{v['only_this']}"
            line = f"{line:<58} {v['diff']:>+8.2f}  [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]"
            line = f"{line:<84} {pair:>15}  {v['p_value']:>7.3g}"
        lines.append(line)
    lines[2] = lines[2].rstrip() + "  (baseline)"
    return "\n".join(lines)
