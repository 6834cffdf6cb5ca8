"""The reference benchmark (``make bench``): dense DeiT-Tiny/Small vs ~50%-MACs compressed versions.

Each dense model is compared with two materialized compressions of about half its MACs:
``-50%`` keeps random indices at widths that are deliberately *not* multiples of 8 (what a
magnitude-based search tends to produce), ``-50%-a16`` keeps widths that are multiples of 16 (what
``--align 16`` produces), so the table answers "do aligned widths change efficiency". PyTorch eager
and ONNX Runtime on the CPU, batch 1 and 8, models interleaved. Also written: an ONNX Runtime
per-operator profile at the largest batch (where the time goes) and the latency table's
prediction error over random specs. Run: ``python -m uvc.bench.reference --out bench/results``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from uvc.bench.harness import BenchConfig, BenchModel, run_benchmark
from uvc.bench.report import BenchResult, format_table
from uvc.bench.timer import TimingConfig

from uvc.arch.cost import macs
from uvc.arch.keep import BlockKeep, KeepSet
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec, ViTSpec

log = logging.getLogger("bench.reference")

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")
TARGET_MACS = 0.5


def _width(n: int, f: float, align: int | None) -> int:
    """Kept count of ``n`` at fraction ``f``: a multiple of ``align``, or never a multiple of 8."""
    if align:
        return min(n, max(align, round(n * f / align) * align))
    w = min(n, max(1, round(n * f)))
    return w - 1 if w % 8 == 0 and 1 < w < n else w


def keep_at(spec: ViTSpec, f: float, align: int | None, seed: int = 0) -> KeepSet:
    """Random indices keeping about ``f`` of every block's heads, per-head dims and MLP units."""
    rng = random.Random(seed)
    pick = lambda n, k: tuple(sorted(rng.sample(range(n), k)))  # noqa: E731
    return tuple(
        BlockKeep(
            pick(b.heads, w.heads),
            pick(b.qk_dim, w.qk_dim),
            pick(b.v_dim, w.v_dim),
            pick(b.mlp_dim, w.mlp_dim),
        )
        for b, w in zip(spec.blocks, widths_at(spec, f, align).blocks, strict=True)
    )


def widths_at(spec: ViTSpec, f: float, align: int | None) -> ViTSpec:
    """The spec ``keep_at`` materializes to (arithmetic only, no index sampling)."""
    return spec.replace(
        blocks=tuple(
            BlockSpec(
                max(1, round(b.heads * f)),
                _width(b.qk_dim, f, align),
                _width(b.v_dim, f, align),
                _width(b.mlp_dim, f, align),
            )
            for b in spec.blocks
        )
    )


def half_keep(spec: ViTSpec, align: int | None, target: float = TARGET_MACS) -> KeepSet:
    """The ``keep_at`` whose MACs are closest to ``target`` x the dense model's."""
    full = macs(spec)
    fractions = [i / 200 for i in range(40, 201)]
    best = min(fractions, key=lambda f: abs(macs(widths_at(spec, f, align)) / full - target))
    return keep_at(spec, best, align)


def compressed_models(name: str, seed: int = 0) -> list[BenchModel]:
    """Dense ``name`` and its two ~50%-MACs materializations (unaligned, aligned to 16)."""
    from uvc.export.materialize import materialize

    from uvc.files.source import resolve_spec

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dense = ViT(resolve_spec(name)).eval()  # random weights: timing does not depend on values
    short = name.split("_patch")[0]
    out = [BenchModel(short, dense, load_s=time.perf_counter() - t0)]
    for align, tag in ((None, "-50%"), (16, "-50%-a16")):
        t0 = time.perf_counter()
        model = materialize(dense, half_keep(dense.spec, align)).eval()
        out.append(BenchModel(short + tag, model, load_s=time.perf_counter() - t0))
    return out


def ort_op_profile(bm: BenchModel, batch: int, threads: int, reps: int = 10) -> dict[str, float]:
    """ONNX Runtime's profiler: milliseconds per call spent in each operator type."""
    import onnxruntime as ort

    assert bm.onnx is not None, "export the model first (ensure_onnx)"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(bm.onnx.with_suffix("")) + "-prof"
    sess = ort.InferenceSession(str(bm.onnx), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *bm.input_shape).numpy()
    name = sess.get_inputs()[0].name
    warmup = 3
    for _ in range(warmup + reps):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    start = runs[warmup] if len(runs) > warmup else 0  # only the timed runs count
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        kernel = e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
        if kernel and e["ts"] >= start:
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / reps
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def widths(bm: BenchModel) -> str:
    """Block widths of a model, compactly (heads x qk/v, mlp), for the report."""
    b = bm.model.spec.blocks
    uniq = sorted({(x.heads, x.qk_dim, x.v_dim, x.mlp_dim) for x in b})
    return ", ".join(f"{h}x{q}/{v} mlp {m}" for h, q, v, m in uniq)


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``_run_reference`` with ONNX files and profiles in a temporary folder (~100 MB)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="uvc-reference-") as tmp:
        return _run_reference(args, Path(tmp))


def _run_reference(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Benchmark each reference model family, profile it, check a latency table; the record."""
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = BenchConfig(
        backends=tuple(args.backends.split(",")),
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        threads=args.threads,
        timing=TimingConfig(warmup=2, rounds=args.rounds, reps=args.reps),
        workdir=workdir,
    )
    record: dict[str, Any] = {"runs": [], "profiles": {}, "lut": None}
    md = [
        "# Reference benchmark",
        "",
        f"Command: `python -m uvc.bench.reference --out {args.out}` (threads {args.threads}, "
        f"{args.rounds} rounds x {args.reps} reps per model, models interleaved).",
        "",
    ]
    results: list[BenchResult] = []
    for name in args.models.split(","):
        models = compressed_models(name)
        res = run_benchmark(models, config)
        results.append(res)
        record["runs"].append(res.to_dict())
        md += [f"## {name}", ""]
        md += [f"- `{m.label}`: {macs(m.model.spec) / 1e9:.3f} GMACs; {widths(m)}" for m in models]
        md += ["", format_table(res, markdown=True), ""]
        if args.profile and "ort" in args.backends:
            batch = max(config.batch_sizes)
            prof = {m.label: ort_op_profile(m, batch, args.threads, 5) for m in models if m.onnx}
            record["profiles"][name] = prof
            md += _profile_table(prof, batch)
        log.info("%s done after %.0f s", name, time.perf_counter() - t_start)
    if args.lut_specs > 0:
        md += _lut_section(args, record)
    env = results[0].environment if results else {}
    elapsed = time.perf_counter() - t_start
    md[3:3] = [
        f"Machine: {env.get('device_name')} ({env.get('cpu_count')} CPUs), "
        f"{env.get('platform')}; versions {env.get('versions')}; {env.get('time_utc')}. "
        f"Whole run: {elapsed:.0f} s.",
        "",
    ]
    record["elapsed_s"] = elapsed
    (out / "reference.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "reference.md").write_text("\n".join(md) + "\n")
    log.info("wrote %s and %s (%.0f s)", out / "reference.json", out / "reference.md", elapsed)
    return record


def _profile_table(prof: dict[str, dict[str, float]], batch: int) -> list[str]:
    """Markdown: ms per call by ONNX Runtime operator type, each model, with the ratio to dense."""
    labels = list(prof)
    ops = sorted({op for p in prof.values() for op in p}, key=lambda o: -prof[labels[0]].get(o, 0))
    head = (
        "| op | "
        + " | ".join(f"{lb} ms" for lb in labels)
        + " | "
        + " | ".join(f"{lb} / dense" for lb in labels[1:])
        + " |"
    )
    lines = [f"ONNX Runtime profile, batch {batch}, ms per call by operator type:", "", head]
    lines.append("|" + "---|" * (1 + 2 * len(labels) - 1))
    totals = {lb: sum(prof[lb].values()) for lb in labels}
    for op in [*ops, "total"]:
        vals = [totals[lb] if op == "total" else prof[lb].get(op, 0.0) for lb in labels]
        ratios = [f"{v / vals[0]:.2f}" if vals[0] > 0 else "-" for v in vals[1:]]
        lines.append(
            f"| {op} | " + " | ".join(f"{v:.2f}" for v in vals) + " | " + " | ".join(ratios) + " |"
        )
    return [*lines, ""]


def _lut_section(args: argparse.Namespace, record: dict[str, Any]) -> list[str]:
    """Measure a latency table for the first model and its prediction error over random specs."""
    from uvc.bench.lut import LutConfig, build_lut

    from uvc.files.source import resolve_spec

    name = args.models.split(",")[0]
    spec = resolve_spec(name)
    cfg = LutConfig.for_spec(spec, batch=1, threads=args.threads)
    _, err = build_lut(cfg, Path(args.out) / "lut.json", args.lut_specs)
    assert err is not None
    record["lut"] = {
        "model": name,
        "predicted_ms": err.predicted_ms,
        "measured_ms": err.measured_ms,
        "median_rel_error": err.median_rel_error,
    }
    rows = [
        f"| {i} | {p:.2f} | {m:.2f} | {abs(p - m) / m:.1%} |"
        for i, (p, m) in enumerate(zip(err.predicted_ms, err.measured_ms, strict=True))
    ]
    return [
        f"## Latency table ({name}, eager, batch 1)",
        "",
        f"`lut.json`: {len(cfg.heads) * len(cfg.qk_dims) * len(cfg.v_dims)} attention points, "
        f"{len(cfg.mlp_dims)} MLP points. Prediction of whole random compressed models:",
        "",
        "| spec | predicted ms | measured ms | error |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Median |predicted - measured| / measured over {len(rows)} specs: "
        f"**{err.median_rel_error:.1%}**.",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``make bench``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results", help="output folder")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated timm names")
    p.add_argument("--backends", default="eager,ort")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument(
        "--lut-specs", type=int, default=5, help="random specs for the LUT check (0: skip)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    run_reference(args)


if __name__ == "__main__":
    main()
