"""``uvc inspect`` and ``uvc export``: thin shells over ``uvc.arch.summary`` and ``uvc.export``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from uvc.cli.app import cli, handle_errors, parse_csv


@cli.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@handle_errors
def inspect(target: str, as_json: bool) -> None:
    """Show the MACs and parameters of TARGET, per block and in total.

    TARGET is a timm model name (e.g. deit_small_patch16_224), uvc-tiny (built in), a spec JSON
    file, a uvc checkpoint (.pt) or an export folder. MACs are what papers call FLOPs
    (DeiT-Small: 4.6 G).
    """
    from uvc.arch.summary import cost_summary, cost_table
    from uvc.files.source import resolve_spec

    spec = resolve_spec(target)
    if as_json:
        click.echo(json.dumps(cost_summary(spec)))
    else:
        click.echo(cost_table(spec))


@cli.command("export")
@click.argument("model")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder.")
@click.option("--weights", type=click.Path(), default=None, help="Local weights file.")
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Write model.onnx.")
@click.option("--trt", is_flag=True, help="Build a TensorRT engine (needs a GPU and uvc[gpu]).")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx; FP16 engine with --trt.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset (at least 17).")
@click.option("--min-batch", default=1, show_default=True, help="Smallest engine batch.")
@click.option(
    "--opt-batch",
    type=int,
    default=None,
    help="Engine batch to tune for.  [default: 8, within --min-batch..--max-batch]",
)
@click.option("--max-batch", default=32, show_default=True, help="Largest engine batch.")
@click.option("--simplify", is_flag=True, help="Simplify the ONNX graph with onnxslim.")
@click.option("--atol", default=1e-4, show_default=True, help="Max |logit diff| (FP32).")
@click.option(
    "--calib-data",
    default=None,
    help="Real images: a folder or 'digits'. Validation images, and with --int8/--trt-quant the "
    "calibration images (train/ part) and the held-out ones (val/|test/ part).",
)
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
@click.option(
    "--optimize",
    type=click.Choice(["none", "cpu"]),
    default="none",
    show_default=True,
    help="cpu: also write model.opt.onnx with ONNX Runtime's CPU fusions (fused attention), "
    "checked (every attention fused, scales exact) and validated within --atol.",
)
@click.option(
    "--skip-layer-norm/--no-skip-layer-norm",
    default=False,
    show_default=True,
    help="With --optimize cpu: also fuse residual Add + LayerNorm (SkipLayerNormalization).",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Also write model.int8.onnx: ONNX Runtime static INT8 (QDQ, per-channel weights) for "
    "CPUs, calibrated on --calib-data; LayerNorm, Softmax, attention products and the head stay "
    "FP32.",
)
@click.option(
    "--trt-quant",
    default=None,
    help="Comma-separated int8,fp8: ModelOpt QDQ graphs for TensorRT (model.trt.int8.onnx, ...; "
    "needs uvc[quant-gpu]); with --trt also their engines (FP8: a GPU of compute capability 8.9+).",
)
@click.option(
    "--calib-images",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Calibration images for --int8/--trt-quant.",
)
@click.option(
    "--int8-val-images",
    type=click.IntRange(min=1),
    default=None,
    help="Held-out images (never calibrated on) for the accuracy check.  [default: all, at most "
    "1000]",
)
@click.option(
    "--calib-method",
    type=click.Choice(["percentile", "minmax"]),
    default="percentile",
    show_default=True,
    help="How --int8 takes activation ranges (percentile: 99.999% of |x|, robust to outliers).",
)
@click.option(
    "--max-int8-drop",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Largest top-1 drop (points) on the held-out images; beyond it the export fails "
    "(exit 1) and writes nothing.",
)
@click.option(
    "--merge",
    default=None,
    metavar="R",
    help="Token merging (ToMe, training-free): merge R tokens in every block, or one R per "
    "block (8,8,4,0,0,0); replaces the model's own schedule. Static shapes: every block's token "
    "count is a constant of the graph.",
)
@handle_errors
def export_cmd(model: str, out: str, **opts: Any) -> None:
    """Export MODEL to ONNX / TensorRT in OUT, validated against PyTorch.

    MODEL is a uvc checkpoint (dense, or a search checkpoint, materialized first), a spec JSON,
    an export folder, uvc-tiny or a timm name (with --weights). Exit 1 when outputs differ
    beyond tolerance, 2 on bad input.
    """
    from uvc.errors import ValidationError
    from uvc.export.pipeline import ExportConfig, export_model

    opts["val_batches"] = parse_csv(int, opts["val_batches"])
    opts["quant"] = _quant_config(opts)
    cfg = ExportConfig(model=model, out=out, **opts)
    try:
        result = export_model(cfg)
    except ValidationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"exported to {result.out}: {', '.join(result.files)}")


def _quant_config(opts: dict[str, Any]) -> Any:
    """The ``QuantConfig`` of the quantization options (removed from ``opts``), None without
    --int8/--trt-quant."""
    from uvc.cli.app import given_options
    from uvc.errors import UvcError
    from uvc.export.quant_export import QuantConfig
    from uvc.export.quantize import Int8Options
    from uvc.export.trt_quant import TrtQuantMode

    int8, trt_quant = opts.pop("int8"), opts.pop("trt_quant")
    names = ("calib_images", "int8_val_images", "calib_method", "max_int8_drop")
    calib_images, val_images, method, max_drop = (opts.pop(n) for n in names)
    if not int8 and not trt_quant:
        stray = [n for n in given_options(click.get_current_context()) if n in names]
        if stray:
            flags = ", ".join("--" + n.replace("_", "-") for n in stray)
            raise UvcError(f"{flags} only apply with --int8 or --trt-quant")
        return None
    return QuantConfig(
        int8=int8,
        trt_modes=parse_csv(TrtQuantMode, trt_quant) if trt_quant else (),
        calib_images=calib_images,
        val_images=val_images,
        max_drop=max_drop,
        options=Int8Options(method=method),
    )
