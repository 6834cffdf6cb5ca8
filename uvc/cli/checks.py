"""Up-front checks of ``uvc bench`` and ``uvc lut`` options: fail in a second, before the timing.

Both commands spend minutes measuring before they write anything; an output path that cannot be
written, a table too large for memory, or models that cannot be compared must be refused first.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError
from uvc.pipeline.preflight import available_bytes

log = logging.getLogger(__name__)

MAX_TOKENS = 16_385  # 1 + 128x128 patches: far beyond any ViT in use; N^2 attention grows fast
MAX_EMBED = 16_384
MAX_CHECK_SPECS = 100  # each is a whole model timed in every round
BYTES = 4  # fp32


def check_writable_file(path: str | Path, option: str) -> Path:
    """Refuse an output file path that is a folder or lies where nothing can be written."""
    p = Path(path)
    if p.is_dir():
        raise UvcError(f"{option} {p} is a folder; give a file name")
    probe = p.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UvcError(f"{option} {p}: {probe} is a file, so nothing can be written under it")
    # Permission bits say little for root or special filesystems (/proc): try a real write.
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".uvc-write-test-"):
            pass
    except OSError as exc:
        raise UvcError(f"{option} {p} is not writable ({exc.strerror} in {probe})") from None
    return p


def lut_memory_bytes(spec: ViTSpec, batch: int, mlp_max: int | None = None) -> int:
    """A lower estimate of the memory ``uvc lut`` needs for its largest grid point (fp32).

    The largest attention point holds its weights, the token batch, q/k/v and the ``N x N``
    attention matrix of every head; the largest MLP point its weights and ``batch x N x mlp``
    activations; the fixed parts the image batch. All grid modules are alive at once (they are
    timed round-robin), so the weights add up.
    """
    n, d = spec.num_tokens, spec.embed_dim
    att = [b for b in spec.blocks if b.has_attn]
    h = max((b.heads for b in att), default=1)
    q = max((b.qk_dim for b in att), default=8)
    v = max((b.v_dim for b in att), default=8)
    m = mlp_max or max([b.mlp_dim for b in spec.blocks] + [16])
    attn_w = d * h * (2 * q + v) + h * v * d
    attn_act = batch * n * (d + h * (2 * q + v)) + batch * h * n * n
    mlp_w = 2 * d * m
    mlp_act = batch * n * (d + m)
    image = batch * spec.in_chans * spec.img_size * spec.img_size
    grid_points = 27 + 4  # 3x3x3 attention + 4 MLP widths (the default grids)
    weights = grid_points * max(attn_w, mlp_w)
    return BYTES * (weights + 2 * max(attn_act, mlp_act, image))


def check_lut_size(spec: ViTSpec, batch: int, device: str, check_specs: int) -> None:
    """Refuse a latency table that cannot fit in memory or whose inputs are absurd."""
    if check_specs > MAX_CHECK_SPECS:
        raise UvcError(
            f"--check-specs {check_specs} is too many: each is a whole model timed in every "
            f"round (at most {MAX_CHECK_SPECS})"
        )
    need, have = lut_memory_bytes(spec, batch), available_bytes(device)
    if need > have:
        raise UvcError(
            f"this table needs at least {need / 2**30:.1f} GiB of {device} memory for batch "
            f"{batch}, embed {spec.embed_dim}, {spec.num_tokens} tokens; "
            f"{have / 2**30:.1f} GiB is available: lower --batch or the model size"
        )
    # Within memory but beyond any ViT in use: the grid would take hours to time.
    if spec.num_tokens > MAX_TOKENS:
        raise UvcError(f"--tokens {spec.num_tokens} is too large (at most {MAX_TOKENS})")
    if spec.embed_dim > MAX_EMBED:
        raise UvcError(f"--embed-dim {spec.embed_dim} is too large (at most {MAX_EMBED})")


def check_bench_batches(specs: Sequence[ViTSpec], batches: Sequence[int], device: str) -> None:
    """Refuse batch sizes whose activations cannot fit in memory for the largest model."""
    have = available_bytes(device)
    for s in specs:
        n, d = s.num_tokens, s.embed_dim
        h = max((b.heads for b in s.blocks), default=1)
        m = max((b.mlp_dim for b in s.blocks), default=0)
        for b in batches:
            need = BYTES * 2 * b * max(n * (4 * d + m), h * n * n, s.in_chans * s.img_size**2)
            if need > have:
                raise UvcError(
                    f"--batch-sizes {b} needs at least {need / 2**30:.1f} GiB of {device} "
                    f"memory for a {s.img_size}px, embed-{d} model; {have / 2**30:.1f} GiB is "
                    "available"
                )


def check_comparable(named: Sequence[tuple[str, ViTSpec]], allow: bool) -> None:
    """Refuse (or, with ``allow``, warn loudly about) models with other inputs or classes.

    A speedup between a 32 px 10-class model and a 224 px 1000-class one measures the input
    size, not the compression: the efficiency it implies is meaningless.
    """
    base_name, base = named[0]
    for name, s in named[1:]:
        diffs = []
        if (s.img_size, s.in_chans) != (base.img_size, base.in_chans):
            diffs.append(f"input {s.img_size}px vs {base.img_size}px")
        if s.num_classes != base.num_classes:
            diffs.append(f"{s.num_classes} vs {base.num_classes} classes")
        if not diffs:
            continue
        what = f"{name} and the baseline {base_name} differ ({', '.join(diffs)})"
        if not allow:
            raise UvcError(
                f"{what}: their speedup and efficiency would be meaningless; compare models of "
                "the same input and classes, or pass --allow-mismatch"
            )
        log.warning("!!! %s: speedups and efficiencies below compare unlike models !!!", what)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is here, else cpu; cuda without a GPU is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UvcError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    return device


def bench_preflight(
    models: Sequence[str],
    baseline: str | None,
    config: object,
    json_path: str | None,
    plot_path: str | None,
    allow_mismatch: bool,
) -> None:
    """``uvc bench``'s checks before timing: output files, comparable models, batch memory."""
    from uvc.files.source import resolve_spec

    for option, path in (("--json", json_path), ("--plot", plot_path)):
        if path:
            check_writable_file(path, option)
    names = ([baseline] if baseline is not None else []) + [m for m in models if m != baseline]
    named = [(n, resolve_spec(n)) for n in names]
    check_comparable(named, allow_mismatch)
    batches = getattr(config, "batch_sizes", ())
    check_bench_batches([s for _, s in named], batches, getattr(config, "device", "cpu"))
