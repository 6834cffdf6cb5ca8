"""``uvc convert``: a thin shell over ``uvc.adapters.convert_source``."""

from __future__ import annotations

from typing import Any

import click

from uvc.cli.app import cli, handle_errors, parse_csv
from uvc.errors import UvcError


@cli.command()
@click.argument("source")
@click.option(
    "--from",
    "kind",
    required=True,
    type=click.Choice(["timm", "torchvision", "hf", "torch-encoder"]),
    help="What SOURCE is.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="uvc checkpoint to write."
)
@click.option("--arch", default=None, help="timm/torchvision model name the weights belong to.")
@click.option(
    "--heads", type=int, default=None, help="Attention heads (torch-encoder, torchvision)."
)
@click.option(
    "--layout",
    default=None,
    help="torch-encoder: JSON (text or file) naming the keys: patch_embed, encoder, pos_embed, "
    "cls_token, final_norm, head_norm, head, pool. Default: recognised from the keys.",
)
@click.option(
    "--norm-first/--post-norm",
    default=False,
    show_default=True,
    help="torch-encoder: pre-norm layers (PyTorch's default is post-norm).",
)
@click.option(
    "--activation",
    type=click.Choice(["relu", "gelu", "gelu_tanh", "quick_gelu"]),
    default="relu",
    show_default=True,
    help="torch-encoder: the layers' activation.",
)
@click.option("--eps", type=float, default=1e-5, show_default=True, help="torch-encoder: eps.")
@click.option("--img-size", type=int, default=None, help="Input side (default: from the model).")
@click.option("--num-classes", type=int, default=None, help="timm names: classifier width.")
@click.option(
    "--mean", default=None, help="Input mean, comma-separated (e.g. 0.4914,0.4822,0.4465)."
)
@click.option("--std", default=None, help="Input std, comma-separated.")
@click.option("--resize", type=int, default=None, help="Eval resize (shorter side).")
@click.option("--crop", type=int, default=None, help="Eval center crop.")
@click.option(
    "--interpolation",
    type=click.Choice(["bilinear", "bicubic", "nearest"]),
    default=None,
    help="Resize interpolation.",
)
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Max |logit diff|.")
@handle_errors
def convert(source: str, kind: str, out: str, **opts: Any) -> None:
    """Convert a third-party ViT (SOURCE) into a uvc checkpoint, checking parity.

    \b
    uvc convert vit_cifar10.pth --from torch-encoder --heads 8 \\
        --mean 0.4914,0.4822,0.4465 --std 0.2023,0.1994,0.2010 --out cifar_vit.pt
    uvc convert deit3_small.pth --from timm --arch deit3_small_patch16_224 --out deit3.pt
    uvc convert vit_b_16.pth --from torchvision --arch vit_b_16 --out vit_b_16.pt
    uvc convert ./hf-vit-folder --from hf --out vit.pt

    The checkpoint holds the spec (with the model's preprocessing), the weights and the measured
    parity; uvc train/export/bench/inspect take it.
    """
    from uvc.adapters import convert_source, save_conversion

    preprocess = _preprocess(opts)
    kwargs = _adapter_options(kind, opts)
    conv = convert_source(source, kind, atol=opts["atol"], preprocess=preprocess, **kwargs)
    path = save_conversion(conv, out, source)
    spec = conv.spec
    diff = "n/a" if conv.max_abs_diff is None else f"{conv.max_abs_diff:.3g}"
    click.echo(
        f"converted {source} ({kind}): {spec.depth} blocks, embed {spec.embed_dim}, "
        f"{spec.norm_placement.value}-norm, {spec.act.value}, {spec.img_size}px/{spec.patch_size}"
    )
    click.echo(f"parity: max |logit diff| {diff} vs the original (atol {opts['atol']:g})")
    if spec.preprocess is None:
        click.echo("preprocessing: not recorded (ImageNet statistics assumed); pass --mean/--std")
    else:
        p = spec.preprocess
        click.echo(f"preprocessing: mean {p.mean}, std {p.std}, resize {p.resize}, crop {p.crop}")
    click.echo(f"wrote {path}")


def _adapter_options(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The options each adapter takes; an option given to the wrong adapter is an error."""
    accepted = {
        "timm": ("arch", "img_size", "num_classes"),
        "torchvision": ("arch", "heads", "img_size"),
        "hf": (),
        "torch-encoder": ("heads", "layout", "norm_first", "activation", "eps", "img_size"),
    }[kind]
    defaults = {"norm_first": False, "activation": "relu", "eps": 1e-5}
    kwargs = {}
    for name in ("arch", "heads", "layout", "norm_first", "activation", "eps", "img_size"):
        value = opts[name]
        given = value is not None and value != defaults.get(name)
        if name in accepted:
            kwargs[name] = value
        elif given:
            raise UvcError(f"--{name.replace('_', '-')} does not apply to --from {kind}")
    if "num_classes" in accepted and opts["num_classes"] is not None:
        kwargs["num_classes"] = opts["num_classes"]
    return kwargs


def _preprocess(opts: dict[str, Any]) -> Any:
    """The --mean/--std/--resize/--crop/--interpolation given (None when none), as overrides."""
    names = ("mean", "std", "resize", "crop", "interpolation")
    if all(opts[n] is None for n in names):
        return None
    if (opts["mean"] is None) != (opts["std"] is None):
        raise UvcError("give --mean and --std together")
    kwargs: dict[str, Any] = {n: opts[n] for n in ("resize", "crop", "interpolation") if opts[n]}
    if opts["mean"] is not None:
        kwargs["mean"] = parse_csv(float, opts["mean"])
        kwargs["std"] = parse_csv(float, opts["std"])
    return kwargs
