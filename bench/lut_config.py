"""``LutConfig``: what a latency table measures (grids, backend, timing), validated at construction.

Its own module so that ``uvc.bench.lut`` (which builds tables) and ``uvc.bench.lut_timing`` (which
times the sub-layers) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from uvc.bench.runners import Backend, Precision, RunnerConfig
from uvc.bench.timer import TimingConfig

from uvc.arch.spec import BlockSpec, ViTSpec

LUT_BACKENDS = (Backend.EAGER, Backend.COMPILE, Backend.CUDAGRAPH, Backend.ORT, Backend.TRT)
# Graph exporters for --backend ort: "dynamo" is what `uvc export` writes by default.
LUT_EXPORTERS = ("dynamo", "torchscript")


def default_grid(full: int, points: int = 3, low: int = 1, step: int = 8) -> tuple[int, ...]:
    """``points`` widths from ``low`` to ``full``, evenly spaced, inner ones rounded to ``step``."""
    if full <= low:
        return (low, low + 1)
    raw = [low + (full - low) * i / (points - 1) for i in range(points)]
    inner = (min(full - 1, max(low + 1, round(v / step) * step)) for v in raw[1:-1])
    grid = sorted({low, full, *inner})
    return tuple(grid)


@dataclass(frozen=True)
class LutConfig:
    """What to measure.

    Args:
        spec: gives embed width, token count and the fixed parts (patch size, classes, tokens).
        batch: images per call.
        backend: eager, compile or cudagraph (the PyTorch runners), or ort (ONNX Runtime on
            exported sub-layer graphs).
        device, threads, precision: as for ``uvc bench``.
        heads, qk_dims, v_dims: the attention grid; mlp_dims: the MLP grid.
        timing: samples per grid point; ``warmup`` counts per point per round.
        exporter: with ``ort``, the ONNX exporter of every graph (``uvc export``'s is dynamo).
        statistic: ``median`` or ``min`` of each point's samples. On a CPU shared with other
            processes a short call is rarely preempted and a long one often, so medians of short
            sub-layers under-predict long whole models; the minimum estimates the unloaded time
            of both alike.
        embed_dims: an embedding-width axis (NViT's embedding pruning): every grid is measured
            at each of these widths (which must include the spec's) and the table is written as
            version 2; empty: one width, version 1.
    """

    spec: ViTSpec
    batch: int = 1
    backend: Backend = Backend.EAGER
    device: str = "cpu"
    threads: int = 1
    precision: Precision = Precision.FP32
    heads: tuple[int, ...] = (1, 2, 3)
    qk_dims: tuple[int, ...] = (16, 32, 64)
    v_dims: tuple[int, ...] = (16, 32, 64)
    mlp_dims: tuple[int, ...] = (64, 384, 768)
    timing: TimingConfig = field(default_factory=lambda: TimingConfig(warmup=1, rounds=3, reps=5))
    exporter: str = "dynamo"
    statistic: str = "median"
    embed_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.statistic not in ("median", "min"):
            raise ValueError(f"statistic must be median or min, got {self.statistic!r}")
        e = tuple(int(v) for v in self.embed_dims)
        if e and (len(e) < 2 or list(e) != sorted(set(e)) or e[0] < 1):
            raise ValueError(f"embed_dims needs >= 2 increasing positive widths, got {e}")
        if e and self.spec.embed_dim not in e:
            raise ValueError(f"embed_dims must include the model's width {self.spec.embed_dim}")
        object.__setattr__(self, "embed_dims", e)
        object.__setattr__(self, "backend", Backend(self.backend))
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.exporter not in LUT_EXPORTERS:
            raise ValueError(f"exporter must be one of {LUT_EXPORTERS}, got {self.exporter!r}")
        if self.backend not in LUT_BACKENDS:
            names = ", ".join(b.value for b in LUT_BACKENDS)
            raise ValueError(f"latency tables are measured with {names}, not {self.backend.value}")
        if self.backend is Backend.TRT and torch.device(self.device).type != "cuda":
            raise ValueError("trt tables are measured on a GPU: give --device cuda")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        for name in ("heads", "qk_dims", "v_dims", "mlp_dims"):
            g = tuple(int(v) for v in getattr(self, name))
            if len(g) < 2 or list(g) != sorted(set(g)) or g[0] < 1:
                raise ValueError(f"{name} needs >= 2 increasing positive widths, got {g}")
            object.__setattr__(self, name, g)

    @classmethod
    def for_spec(cls, spec: ViTSpec, **kwargs: object) -> LutConfig:
        """Grids spanning ``spec``'s largest widths (3 points each, 4 for the MLP)."""
        att = [b for b in spec.blocks if b.has_attn] or [BlockSpec(1, 8, 8, 0)]
        grids = {
            "heads": default_grid(max(b.heads for b in att), step=1),
            "qk_dims": default_grid(max(b.qk_dim for b in att), low=8),
            "v_dims": default_grid(max(b.v_dim for b in att), low=8),
            "mlp_dims": default_grid(max([b.mlp_dim for b in spec.blocks] + [16]), 4, low=16),
        }
        grids.update(kwargs)  # type: ignore[arg-type]
        return cls(spec=spec, **grids)  # type: ignore[arg-type]

    def runner_config(self) -> RunnerConfig:
        """The runner configuration every measurement uses."""
        return RunnerConfig(self.backend, self.device, self.precision, self.threads)
