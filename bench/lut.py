"""Latency lookup tables: measure a ViT's parts on a grid, predict whole models from them.

A block's latency is modelled as attention(heads, qk_dim, v_dim) + MLP(mlp_dim), each a sub-layer
exactly as ``uvc.arch.model.Block`` runs it (LayerNorm, the branch, the residual add), measured
alone at
the table's embed width, token count and batch; the fixed parts (patch embedding, tokens, final
norm, head) are measured once as a model whose only block is empty. The table is written in
``uvc.arch.cost.LatencyTable``'s format, which the trainer reads for ``--metric latency``.

Backends: the PyTorch runners (eager, compile, cudagraph) time the modules themselves; ``ort``
times them as the deployed graph runs them: every sub-layer (and the fixed parts, and each checked
whole model) is exported to its own ONNX graph with the exporter ``uvc export`` uses, then run by
ONNX Runtime with the benchmark's session settings (``uvc.bench.ort_runner.OrtRunner``); ``trt``
builds a TensorRT engine of each graph (profile pinned to the table's batch, one shared timing
cache) and runs it like ``uvc bench --backends trt``.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# How modules are timed (runners, graph export, engines) lives in ``lut_timing``; re-exported here.
from uvc.bench.lut_config import LUT_BACKENDS, LUT_EXPORTERS, LutConfig, default_grid  # noqa: F401
from uvc.bench.lut_timing import CallOverhead, export_module, time_modules  # noqa: F401
from uvc.bench.timer import set_threads

from uvc.arch.cost import LUT_FORMAT, LUT_VERSION, LUT_VERSION_EMBED, LatencyTable
from uvc.arch.keep import KeepSet, random_keep, spec_after
from uvc.arch.model import ViT, block_for
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import BackendUnavailable, SpecError

log = logging.getLogger(__name__)


def frame_spec(
    embed_dim: int, tokens: int, patch_size: int = 16, num_classes: int = 1000
) -> ViTSpec:
    """A one-block spec with ``tokens`` tokens (class token + a square patch grid).

    Raises:
        SpecError: ``tokens - 1`` is not a square number.
    """
    side = math.isqrt(tokens - 1) if tokens > 1 else 0
    if side < 1 or side * side != tokens - 1:
        raise SpecError(f"tokens must be 1 + a square number of patches (e.g. 197), got {tokens}")
    return ViTSpec(
        img_size=side * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        num_classes=num_classes,
        blocks=(BlockSpec(0, 0, 0, 0),),
    )


def measure_lut(config: LutConfig) -> LatencyTable:
    """Measure the attention grid, the MLP grid and the fixed parts; return the table."""
    return _measure(config, ())[0]


def _measure(config: LutConfig, specs: Sequence[ViTSpec]) -> tuple[LatencyTable, list[float]]:
    """The table, and the measured latency of whole models of ``specs``, all timed in the same
    round-robin passes (a check measured minutes later would see another machine load)."""
    set_threads(config.threads)
    spec = config.spec
    d, n = spec.embed_dim, spec.num_tokens
    widths = config.embed_dims or (d,)
    points = [
        BlockSpec(h, q, v, 0) for h in config.heads for q in config.qk_dims for v in config.v_dims
    ] + [BlockSpec(0, 0, 0, m) for m in config.mlp_dims]
    modules: list[tuple[nn.Module, tuple[int, ...]]] = []
    for e in widths:
        at = spec.replace(embed_dim=e)
        modules += [(block_for(at, b), (n, e)) for b in points]
    # What one call costs beyond its work (ONNX Runtime's run(), Python dispatch): each sub-layer
    # pays it once when timed alone, a whole model once in all; it is taken out of every point.
    modules.append((CallOverhead(), (n, d)))
    # Fixed parts: the same model with one empty block (an identity), so nothing of a block counts.
    img = (spec.in_chans, spec.img_size, spec.img_size)
    for e in widths:
        modules.append((ViT(spec.replace(embed_dim=e, blocks=(BlockSpec(0, 0, 0, 0),))), img))
    modules += [(ViT(s), (s.in_chans, s.img_size, s.img_size)) for s in specs]
    ms = time_modules(modules, config)
    ms, whole = ms[: len(modules) - len(specs)], ms[len(modules) - len(specs) :]
    k, n_attn = len(points), len(points) - len(config.mlp_dims)
    overhead, fixed = ms[len(widths) * k], ms[len(widths) * k + 1 :]
    grid = torch.tensor([max(0.0, v - overhead) for v in ms[: len(widths) * k]]).view(-1, k)
    attn = grid[:, :n_attn].reshape(-1, len(config.heads), len(config.qk_dims), len(config.v_dims))
    mlp = grid[:, n_attn:]
    log.info(
        "measured %d attention, %d MLP points and the fixed parts at %d embed width(s); %.4f ms "
        "per-call overhead taken out of every point",
        n_attn,
        len(config.mlp_dims),
        len(widths),
        overhead,
    )
    data = {
        "format": LUT_FORMAT,
        "version": LUT_VERSION_EMBED if config.embed_dims else LUT_VERSION,
        "unit": "ms",
        "device": _device_name(config.device),
        "backend": config.backend.value,
        "batch": config.batch,
        "embed_dim": d,
        "tokens": n,
        "fixed_ms": fixed[widths.index(d)],
        "attn": {
            "heads": list(config.heads),
            "qk_dim": list(config.qk_dims),
            "v_dim": list(config.v_dims),
            "ms": (attn if config.embed_dims else attn[0]).tolist(),
        },
        "mlp": {
            "mlp_dim": list(config.mlp_dims),
            "ms": (mlp if config.embed_dims else mlp[0]).tolist(),
        },
    }
    if config.embed_dims:
        data["embed"] = {"embed_dim": list(widths), "fixed_ms": list(fixed)}
    return LatencyTable.from_dict(data), whole


def _device_name(device: str) -> str:
    import platform

    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device")
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()})"


def random_specs(
    spec: ViTSpec, n: int, seed: int = 0, low: float = 0.3, min_embed: int | None = None
) -> list[ViTSpec]:
    """``n`` random compressed versions of ``spec`` (keep fractions in [low, 1], some blocks'
    attention or MLP removed; with ``min_embed`` also a random embed width from there up to the
    spec's) -- the kind of spec a search visits."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        depth = spec.depth
        drop_attn = [b for b in range(depth) if rng.random() < 0.15]
        drop_mlp = [b for b in range(depth) if rng.random() < 0.1]
        keep = random_keep(
            spec, rng.uniform(low, 1.0), seed + i, drop_attn=drop_attn, drop_mlp=drop_mlp
        )
        if min_embed is not None:
            width = rng.randint(min_embed, spec.embed_dim)
            keep = KeepSet(keep, sorted(rng.sample(range(spec.embed_dim), width)))
        out.append(spec_after(spec, keep))
    return out


@dataclass(frozen=True)
class LutError:
    """How well a table predicts measured whole-model latency.

    Args:
        predicted_ms, measured_ms: per spec.
        median_rel_error: median of |predicted - measured| / measured.
    """

    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]
    median_rel_error: float

    @property
    def rel_errors(self) -> tuple[float, ...]:
        """|predicted - measured| / measured per spec."""
        return tuple(
            abs(p - m) / m for p, m in zip(self.predicted_ms, self.measured_ms, strict=True)
        )


def lut_error(table: LatencyTable, specs: Sequence[ViTSpec], config: LutConfig) -> LutError:
    """Measure each spec's whole model as ``config`` says; compare with ``table``'s prediction."""
    if not specs:
        raise ValueError("need at least one spec to check the table against")
    set_threads(config.threads)
    meas = time_modules([(ViT(s), (s.in_chans, s.img_size, s.img_size)) for s in specs], config)
    return _compare(table, specs, meas)


def _compare(table: LatencyTable, specs: Sequence[ViTSpec], measured: Sequence[float]) -> LutError:
    pred = [table.model_ms(s) for s in specs]
    for i, (p, m) in enumerate(zip(pred, measured, strict=True)):
        log.info("spec %d: predicted %.3f ms, measured %.3f ms", i, p, m)
    rel = [abs(p - m) / m for p, m in zip(pred, measured, strict=True)]
    return LutError(tuple(pred), tuple(measured), statistics.median(rel))


def default_frame(embed_dim: int, tokens: int, depth: int = 12) -> ViTSpec:
    """A stock ViT of this width and token count (head dim 64, MLP 4x): the grids' upper ends."""
    heads = max(1, embed_dim // 64)
    block = BlockSpec(heads, embed_dim // heads, embed_dim // heads, 4 * embed_dim)
    return frame_spec(embed_dim, tokens).replace(blocks=(block,) * depth)


def build_lut(
    config: LutConfig, out: str | Path, check_specs: int = 0, seed: int = 0
) -> tuple[LatencyTable, LutError | None]:
    """Measure a table, save it to ``out`` and, if ``check_specs`` > 0, measure its prediction
    error over that many random compressed versions of ``config.spec``."""
    low = min(config.embed_dims) if config.embed_dims else None
    specs = random_specs(config.spec, check_specs, seed, min_embed=low) if check_specs > 0 else []
    table, measured = _measure(config, specs)
    table.save(out)
    log.info("latency table written to %s", out)
    if not specs:
        return table, None
    return table, _compare(table, specs, measured)
