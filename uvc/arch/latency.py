"""Latency lookup tables: measured per-part latencies of a ViT, interpolated at any width.

``LatencyTable`` holds the latency of attention (over heads, qk and v widths) and MLP (over the
hidden width) blocks measured on one device/backend/batch, plus the fixed parts (patch embedding,
final norm, head), optionally over an embedding-width axis; ``_interp`` is the differentiable
multilinear interpolation that reads it. ``uvc.arch.cost`` re-exports both, so the table stays part
of
the cost model's public surface.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import SpecError

LUT_FORMAT = "uvc-latency-lut"
LUT_VERSION = 1  # a table measured at one embed width
LUT_VERSION_EMBED = 2  # with an embedding-width axis (NViT's embedding pruning)


@dataclass(frozen=True)
class LatencyTable:
    """Measured latency of a ViT's parts on one device/backend/batch, interpolated.

    A block's latency is ``attn(heads, qk_dim, v_dim) + mlp(mlp_dim)`` (0 for a removed part), each
    multilinearly interpolated on its grid; the model adds ``fixed_ms`` (patch embedding, final
    norm and head). The file is JSON::

        {"format": "uvc-latency-lut", "version": 1, "unit": "ms",
         "device": "...", "backend": "...", "batch": 8, "embed_dim": 192, "tokens": 197,
         "fixed_ms": 0.12,
         "attn": {"heads": [1, 2, 3], "qk_dim": [8, 32, 64], "v_dim": [8, 32, 64],
                  "ms": [[[...]]]},          # ms[i][j][k] at heads[i], qk_dim[j], v_dim[k]
         "mlp": {"mlp_dim": [64, 384, 768], "ms": [...]}}

    Version 2 adds an embedding-width axis in front of every grid: ``"embed": {"embed_dim":
    [...], "fixed_ms": [...]}``, ``attn.ms[e][i][j][k]`` and ``mlp.ms[e][m]`` at
    ``embed_dim[e]``; ``embed_dim``/``fixed_ms`` at the top stay the reference (full) width's, and a
    query without a width is at that width. Version 1 files still load.

    Grids must be strictly increasing; queries outside a grid are extrapolated linearly from
    the nearest cell (a warning sign that the table should be re-measured over a wider grid).
    """

    embed_dim: int
    tokens: int
    fixed_ms: float
    attn_grid: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]
    attn_ms: Tensor  # (len(heads), len(qk), len(v))
    mlp_grid: tuple[float, ...]
    mlp_ms: Tensor  # (len(mlp),)
    meta: dict[str, Any]
    embed_grid: tuple[float, ...] | None = None  # v2: attn_ms, mlp_ms gain a leading embed axis
    embed_fixed_ms: Tensor | None = None  # v2: (len(embed_grid),)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Parse and validate the JSON structure described in the class docstring."""
        version = data.get("version")
        if data.get("format") != LUT_FORMAT or version not in (LUT_VERSION, LUT_VERSION_EMBED):
            raise SpecError(f"not a {LUT_FORMAT} v{LUT_VERSION} or v{LUT_VERSION_EMBED} file")
        try:
            emb = data["embed"] if version == LUT_VERSION_EMBED else None
            egrid = None if emb is None else tuple(float(x) for x in emb["embed_dim"])
            efixed = None if emb is None else torch.tensor(emb["fixed_ms"], dtype=torch.float64)
            attn, mlp = data["attn"], data["mlp"]
            grid = tuple(tuple(float(x) for x in attn[k]) for k in ("heads", "qk_dim", "v_dim"))
            attn_ms = torch.tensor(attn["ms"], dtype=torch.float64)
            mlp_grid = tuple(float(x) for x in mlp["mlp_dim"])
            mlp_ms = torch.tensor(mlp["ms"], dtype=torch.float64)
            table = cls(
                embed_dim=int(data["embed_dim"]),
                tokens=int(data["tokens"]),
                fixed_ms=float(data["fixed_ms"]),
                attn_grid=grid,  # type: ignore[arg-type]
                attn_ms=attn_ms,
                mlp_grid=mlp_grid,
                mlp_ms=mlp_ms,
                meta={k: data[k] for k in ("device", "backend", "batch", "unit") if k in data},
                embed_grid=egrid,
                embed_fixed_ms=efixed,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed latency table: {exc!r}") from None
        lead = () if egrid is None else (len(egrid),)
        if attn_ms.shape != (*lead, *(len(g) for g in grid)) or mlp_ms.shape != (
            *lead,
            len(mlp_grid),
        ):
            raise SpecError("latency table: 'ms' arrays do not match their grids")
        if egrid is not None and (efixed is None or efixed.shape != lead):
            raise SpecError("latency table: embed 'fixed_ms' does not match its grid")
        for g in (*grid, mlp_grid, *((egrid,) if egrid is not None else ())):
            if len(g) < 2 or any(b <= a for a, b in itertools.pairwise(g)):
                raise SpecError("latency table grids need >= 2 strictly increasing points")
        return table

    def to_dict(self) -> dict[str, Any]:
        """The JSON structure (inverse of ``from_dict``)."""
        heads, qk, v = self.attn_grid
        out = {
            "format": LUT_FORMAT,
            "version": LUT_VERSION if self.embed_grid is None else LUT_VERSION_EMBED,
            **self.meta,
            "embed_dim": self.embed_dim,
            "tokens": self.tokens,
            "fixed_ms": self.fixed_ms,
            "attn": {"heads": heads, "qk_dim": qk, "v_dim": v, "ms": self.attn_ms.tolist()},
            "mlp": {"mlp_dim": self.mlp_grid, "ms": self.mlp_ms.tolist()},
        }
        if self.embed_grid is not None:
            fixed = self.embed_fixed_ms.tolist()  # type: ignore[union-attr]
            out["embed"] = {"embed_dim": self.embed_grid, "fixed_ms": fixed}
        return out

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table file."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SpecError(f"cannot read latency table {path}: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically)."""
        from uvc._fs import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    def _at(self, values: Tensor, grids: tuple, xs: tuple, embed: Any) -> Tensor:
        """Interpolate ``values``; v2 puts the embed width (default: the reference) first."""
        if self.embed_grid is None:
            return _interp(values, grids, xs)
        e = (
            embed
            if isinstance(embed, Tensor)
            else float(self.embed_dim if embed is None else embed)
        )
        e = e if isinstance(e, Tensor) else torch.tensor(e, dtype=torch.float64)
        return _interp(values, (self.embed_grid, *grids), (e.to(xs[0].device), *xs))

    def attn_ms_at(
        self, heads: Tensor, qk_dim: Tensor, v_dim: Tensor, embed: Tensor | float | None = None
    ) -> Tensor:
        """Differentiable attention latency at (possibly fractional) widths (``embed``: v2 only,
        default the reference width)."""
        return self._at(self.attn_ms, self.attn_grid, (heads, qk_dim, v_dim), embed)

    def mlp_ms_at(self, mlp_dim: Tensor, embed: Tensor | float | None = None) -> Tensor:
        """Differentiable MLP latency at a (possibly fractional) width."""
        return self._at(self.mlp_ms, (self.mlp_grid,), (mlp_dim,), embed)

    def fixed_ms_at(self, embed: float | None = None) -> float:
        """The fixed parts' latency at an embed width (v1: only its own width)."""
        if self.embed_grid is None or embed is None:
            return self.fixed_ms
        x = torch.tensor(float(embed), dtype=torch.float64)
        return float(_interp(self.embed_fixed_ms, (self.embed_grid,), (x,)))  # type: ignore[arg-type]

    def block_ms(
        self,
        block: BlockSpec,
        embed: float | None = None,
        tokens: tuple[float, float] = (1.0, 1.0),
    ) -> float:
        """Latency of one block of a hard spec (at embed width ``embed``: v2 only).

        ``tokens``: the attention's and the MLP's token counts as fractions of the table's; with
        token merging each part's latency is scaled linearly by them (exact for the linear
        layers, an approximation for attention's N^2 matmuls; the merge itself counts 0).
        """
        t = 0.0
        if block.has_attn:
            w = [
                torch.tensor(float(x), dtype=torch.float64)
                for x in (block.heads, block.qk_dim, block.v_dim)
            ]
            t += float(self.attn_ms_at(*w, embed=embed)) * tokens[0]
        if block.has_mlp:
            m = torch.tensor(float(block.mlp_dim), dtype=torch.float64)
            t += float(self.mlp_ms_at(m, embed=embed)) * tokens[1]
        return t

    def check_spec(self, spec: ViTSpec) -> None:
        """Raise ``SpecError`` if the table was measured for another (input) token count or an embed
        width it does not cover (v1: its own width only; v2: within its embed grid)."""
        lo, hi = (
            (self.embed_dim, self.embed_dim)
            if self.embed_grid is None
            else (min(self.embed_grid), max(self.embed_grid))
        )
        if spec.num_tokens != self.tokens or not lo <= spec.embed_dim <= hi:
            width = f"embed_dim={self.embed_dim}" if lo == hi else f"embed_dim {lo:g}..{hi:g}"
            raise SpecError(
                f"latency table is for {width}, tokens={self.tokens}; the model "
                f"has embed_dim={spec.embed_dim}, tokens={spec.num_tokens}"
            )

    def model_ms(self, spec: ViTSpec) -> float:
        """Predicted whole-model latency of ``spec`` (at its own embed width; with token
        merging, each block's parts scaled by the tokens they see, see ``block_ms``)."""
        self.check_spec(spec)
        e = None if spec.embed_dim == self.embed_dim else spec.embed_dim
        n = spec.num_tokens
        return self.fixed_ms_at(e) + sum(
            self.block_ms(b, e, (spec.tokens_in(i) / n, (spec.tokens_in(i + 1)) / n))
            for i, b in enumerate(spec.blocks)
        )


def _interp(values: Tensor, grids: tuple[tuple[float, ...], ...], xs: tuple[Tensor, ...]) -> Tensor:
    """Multilinear interpolation of ``values`` on a rectilinear grid; linear beyond the ends."""
    dtype = xs[0].dtype if xs[0].is_floating_point() else torch.float64
    out = values.to(device=xs[0].device, dtype=dtype)
    # Interpolate one axis at a time, always along the leading axis of what is left.
    for grid, x in zip(grids, xs, strict=True):
        g = torch.tensor(grid, dtype=out.dtype, device=x.device)
        i = torch.clamp(torch.searchsorted(g, x.detach().reshape(1).to(g.dtype)), 1, len(grid) - 1)[
            0
        ]
        lo, hi = g[i - 1], g[i]
        t = (x.to(out.dtype) - lo) / (hi - lo)
        out = out[i - 1] * (1 - t) + out[i] * t
    return out
