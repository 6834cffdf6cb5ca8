"""Why ``model.int8.onnx`` is built the way it is: INT8 variants of one model, measured.

Each variant is one ONNX Runtime static quantization of the model's graph (QDQ, per-channel INT8
weights, UINT8 activations, ``n_calib`` calibration images from ``DATA/train``); then top-1 on
``n_eval`` images of ``DATA/test`` (or ``val``), top-1 agreement with the FP32 PyTorch model, and
ONNX Runtime CPU latency at batch 1 and 8 (1 thread, the fastest of ``rounds`` rounds of 10 calls,
variants interleaved round by round). ``default`` is what ``uvc export --int8`` builds.

    python -m uvc.bench.int8_choices MODEL.pt --data cifar10 --out int8_choices.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from uvc.export.calibration import load_calibration, plan_calibration
from uvc.export.onnx import export_onnx
from uvc.export.optimize import optimize_for_cpu
from uvc.export.quant_export import onnx_logits
from uvc.export.quantize import CalibrationReader

from uvc.files.source import load_model

log = logging.getLogger(__name__)
NO_OUTPUT_Q = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}

# name -> (source graph, calibration, extra options, nodes kept FP32, activation type)
VARIANTS: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...], str]] = {
    "default (percentile 99.999)": ("plain", "percentile", NO_OUTPUT_Q, ("actact", "head"), "u8"),
    "entropy (ORT)": ("plain", "entropy", NO_OUTPUT_Q, ("actact", "head"), "u8"),
    "minmax": ("plain", "minmax", NO_OUTPUT_Q, ("actact", "head"), "u8"),
    "MatMul outputs re-quantized": ("plain", "percentile", {}, ("actact", "head"), "u8"),
    "+ attention products in INT8": ("plain", "percentile", NO_OUTPUT_Q, ("head",), "u8"),
    "+ head in INT8": ("plain", "percentile", NO_OUTPUT_Q, ("actact",), "u8"),
    "INT8 activations (S8S8)": ("plain", "percentile", NO_OUTPUT_Q, ("actact", "head"), "s8"),
    "from the fused graph (model.opt.onnx)": ("opt", "percentile", NO_OUTPUT_Q, ("head",), "u8"),
}


def _fp32_names(path: Path, kinds: tuple[str, ...]) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    linear = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    out = []
    if "actact" in kinds:
        out += [n.name for n in linear if not any(i in weights for i in n.input[:2])]
    if "head" in kinds:
        out += [[n.name for n in linear if any(i in weights for i in n.input[:2])][-1]]
    return out


def _quantize(src: Path, dst: Path, calib: torch.Tensor, variant: tuple) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _, method, extra, kinds, act = variant
    pre = dst.with_suffix(".pre.onnx")
    methods = {
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(dst),
            CalibrationReader(calib),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=_fp32_names(pre, kinds),
            per_channel=True,
            activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={**extra, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
        )


def _timer(path: Path, x: torch.Tensor) -> Callable[[], float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    for _ in range(3):
        sess.run(None, feed)

    def one_round() -> float:
        t0 = time.perf_counter()
        for _ in range(10):
            sess.run(None, feed)
        return (time.perf_counter() - t0) / 10 * 1e3

    return one_round


def main(argv: list[str] | None = None) -> None:
    """Measure every variant and write a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path, default=Path("int8_choices.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model = load_model(args.model).eval()
    spec = model.spec
    plan = plan_calibration(args.data, spec.num_classes, args.calib_images, args.eval_images)
    data = load_calibration(plan, spec.img_size, spec.in_chans, spec.preprocess)
    with torch.no_grad():
        n = args.eval_images
        ref = torch.cat([model(data.held_out[i : i + 256]) for i in range(0, n, 256)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-choices-") as tmp:
        graphs = {"plain": export_onnx(model, Path(tmp) / "model.onnx")}
        graphs["opt"] = optimize_for_cpu(model, Path(tmp) / "model.opt.onnx").path
        paths = {"FP32 model.onnx": graphs["plain"], "FP32 model.opt.onnx": graphs["opt"]}
        for k, (name, variant) in enumerate(VARIANTS.items()):
            log.info("quantizing: %s", name)
            paths[name] = Path(tmp) / f"v{k}.onnx"
            _quantize(graphs[variant[0]], paths[name], data.calib, variant)
        for name, path in paths.items():
            out = onnx_logits(path, data.held_out, threads=1)
            top1 = 100 * float((out.argmax(1) == data.labels).float().mean())
            agree = 100 * float((out.argmax(1) == ref.argmax(1)).float().mean())
            rows.append([name, top1, agree])
        for b in (1, 8):
            timers = {n: _timer(p, data.held_out[:b]) for n, p in paths.items()}
            best = {n: float("inf") for n in paths}
            for r in range(args.rounds):  # interleaved: round r visits every variant
                order = list(paths)[r % len(paths) :] + list(paths)[: r % len(paths)]
                for n in order:
                    best[n] = min(best[n], timers[n]())
            for row in rows:
                row.append(best[row[0]])
    top1_fp32 = 100 * float((ref.argmax(1) == data.labels).float().mean())
    lines = [
        f"{args.model}: FP32 PyTorch top-1 {top1_fp32:.2f}% on {args.eval_images} images of "
        f"{plan.held_out_part}; {args.calib_images} calibration images of {plan.calib_part}",
        "",
        "| variant | top-1 % | agreement % | ms b1 | ms b8 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {t:.2f} | {a:.2f} | {m1:.2f} | {m8:.2f} |" for n, t, a, m1, m8 in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
