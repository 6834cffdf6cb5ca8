"""Checks of a ``uvc train`` run that need the machine and the files, done before any compute.

``TrainConfig`` validates each option on its own; ``preflight`` checks what depends on the world:
the device, the output path, the data folder (layout and a sample of images), the model and its
weights, the extra teacher, the latency table (readable, measured for this model), and whether the
budget can be reached at all. Everything a run would otherwise discover after the teacher has
trained for hours fails here, in seconds, with one line, before the output folder is touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from uvc.arch.merge_schedule import unmerged, with_merge
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.errors import UvcError
from uvc.settings import TrainConfig

FLOOR_SHAPES = {
    "uvc": "1 head, minimal qk/v widths and 1 MLP unit in every block",
    "uniform": "1 head and 1 MLP unit in every block",
    "nvit": "the last chunk of every width, the embedding included",
}


@dataclass(frozen=True)
class Floor:
    """The smallest cost the search can reach, as a fraction of the uncompressed model's."""

    ratio: float
    fixed_ratio: float  # embedding and head alone: what is left if every block were skipped


def preflight(cfg: TrainConfig) -> ViTSpec:
    """Check everything ``cfg`` needs from this machine and its files; return the model's spec.

    Raises:
        UvcError: the first problem found (one line, naming the option to change).
    """
    from uvc.files.rundir import check_out_path
    from uvc.train.data import check_folder

    check_device(cfg.device, cfg.amp)
    check_out_path(cfg.out)
    for option, value in (("--weights", cfg.weights), ("--teacher-weights", cfg.teacher_weights)):
        if value is not None and not Path(value).is_file():
            raise UvcError(f"{option} {value}: file not found")
    classes = check_folder(cfg.data, cfg.val_split)
    spec = with_merge(model_spec(cfg, len(classes)), cfg.merge)
    if cfg.teacher is not None:
        from uvc.train.teacher import build_timm_teacher

        build_timm_teacher(cfg.teacher, cfg.teacher_weights, len(classes))  # type: ignore[arg-type]
    lut = None
    if cfg.metric == "latency":
        lut = load_lut(cfg.lut, spec)  # type: ignore[arg-type]
    method = getattr(cfg, "method", "uvc")
    floor = budget_floor(spec, cfg.metric, lut, cfg.align, method)
    if not 0 < floor.ratio < float("inf"):
        raise UvcError(f"the cost model gives an unusable floor ({floor.ratio}) for this model")
    if cfg.budget < floor.ratio:
        raise UvcError(
            f"--budget {cfg.budget:g} cannot be reached: the smallest model --method {method} "
            f"can build ({FLOOR_SHAPES.get(method, 'its narrowest')}) keeps {floor.ratio:.4f} "
            f"of the {cfg.metric}; pass --budget {_round_up(floor.ratio)} or more"
        )
    return spec


def check_device(device: str, amp: str | None) -> None:
    """``--device cuda`` and ``--amp`` need a CUDA GPU here."""
    cuda = torch.cuda.is_available()
    if device.startswith("cuda"):
        if not cuda:
            raise UvcError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UvcError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if amp is not None:
        on_cpu = device == "cpu" or (device == "auto" and not cuda)
        if on_cpu:
            raise UvcError(f"--amp {amp} needs a CUDA GPU; this run would use the CPU")
        if amp == "bf16" and not torch.cuda.is_bf16_supported():
            raise UvcError("--amp bf16: this GPU does not support bfloat16 (use --amp fp16)")


def model_spec(cfg: TrainConfig, num_classes: int) -> ViTSpec:
    """The uncompressed model's spec for this data, its weights checked when it has any."""
    from uvc.arch.demo import DEMO_MODEL, demo_spec
    from uvc.files.source import resolve_spec
    from uvc.train.teacher import load_base_model

    if cfg.model == DEMO_MODEL:
        spec = demo_spec(num_classes, cfg.img_size or 32)
    else:
        spec = resolve_spec(cfg.model, num_classes)
        if cfg.img_size is not None:
            spec = spec.replace(img_size=cfg.img_size)
    check_fits(spec, cfg.batch_size, cfg.device)
    if cfg.weights is None and not Path(cfg.model).is_file():
        return spec
    # Files and weights are read once here, so that a mismatch fails now, not after the data.
    model, _ = load_base_model(cfg.model, cfg.weights, num_classes, cfg.img_size)
    return model.spec


def check_fits(spec: ViTSpec, batch: int = 1, device: str = "cpu", copies: int = 8) -> None:
    """Refuse a run that cannot fit in memory: the weights (student, teacher, optimizer state:
    ``copies`` fp32 copies) plus a lower estimate of one training step's saved activations.

    A damaged spec can claim absurd widths, and ``--img-size``/``--batch-size`` absurd inputs;
    either would otherwise fail after the data is loaded, or take the machine down.
    """
    from uvc.arch.cost import params

    try:
        weights = params(spec) * 4 * copies
        n, depth = spec.num_tokens, spec.depth
        widest = max(b.heads * n * n + n * (4 * spec.embed_dim + b.mlp_dim) for b in spec.blocks)
        acts = 4 * batch * depth * widest
    except (OverflowError, ValueError, TypeError) as exc:
        raise UvcError(f"the model's spec is unusable: {exc}") from None
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    where = "cuda" if on_gpu else "cpu"
    have = available_bytes(where)
    if weights + acts > have:
        raise UvcError(
            f"this run needs at least {(weights + acts) / 2**30:.1f} GiB of {where} memory "
            f"({params(spec) / 1e6:.1f} M parameters, {spec.num_tokens} tokens, batch {batch}); "
            f"{have / 2**30:.1f} GiB is available: lower --batch-size or --img-size"
        )


def load_lut(path: str, spec: ViTSpec) -> object:
    """Read a latency table and check it was measured for ``spec``'s embed width and tokens."""
    import math

    from uvc.arch.cost import LatencyTable

    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise UvcError(f"--lut {path}: file not found") from None
    except OSError as exc:
        raise UvcError(f"cannot read latency table {path}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8, not JSON
        raise UvcError(f"latency table {path} is not a JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise UvcError(f"latency table {path} is not a uvc latency table (not a JSON object)")
    try:
        table = LatencyTable.from_dict(data)
    except UvcError as exc:
        raise UvcError(f"latency table {path}: {exc}") from None
    except (AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        raise UvcError(f"latency table {path} is malformed: {exc!r}") from None
    table.check_spec(spec)
    known = ("eager", "compile", "cudagraph", "ort", "ort-trt", "trt")
    backend, unit = table.meta.get("backend"), table.meta.get("unit", "ms")
    if (backend is not None and backend not in known) or unit != "ms":
        raise UvcError(
            f"latency table {path}: unknown backend {backend!r} or unit {unit!r} (expected "
            f"one of {', '.join(known)}, in ms)"
        )
    values = [table.fixed_ms, *table.attn_ms.flatten().tolist(), *table.mlp_ms.flatten().tolist()]
    if table.embed_fixed_ms is not None:  # a version-2 table (embedding-width axis)
        values += table.embed_fixed_ms.tolist()
    if not all(math.isfinite(v) and 0 <= v < 1e9 for v in values):
        raise UvcError(f"latency table {path} holds negative or non-finite times: re-measure it")
    return table


def budget_floor(
    spec: ViTSpec, metric: str, lut: object = None, align: int = 1, method: str = "uvc"
) -> Floor:
    """The smallest ``metric`` ratio ``method`` can guarantee for ``spec``.

    - uvc: every block down to one head, ``align`` query/key and value dims (1 by default) and
      ``align`` MLP units (``uvc.methods.common.structure``: at least one unit always survives);
      the final
      projection onto the budget (``uvc.methods.uvc.dual.project_to_budget``) goes no lower. Skip
      gates could
      remove whole parts, but the projection never changes gate decisions, so a budget below this
      floor is not guaranteed to be met.
    - uniform: one head (at full qk/v width) and one MLP unit per block (``uvc.methods.uniform``).
    - nvit: each group down to its last chunk above the units that must survive, and the embedding
      width too (unless a latency table has no embedding axis) (``uvc.methods.nvit.method``).
    """
    from uvc.methods.common.resource import ResourceModel
    from uvc.methods.common.structure import aligned_width

    res = ResourceModel(spec, metric, lut)  # type: ignore[arg-type]
    full = res.full
    if method == "nvit":
        return Floor(_nvit_floor(spec, metric, lut, align), res.fixed / full)
    if method == "uniform":
        from uvc.methods.uniform import uniform_widths

        blocks = [BlockSpec(h.heads, h.qk, int(h.v), h.mlp) for h in uniform_widths(res, 0.0)]
    else:
        blocks = [
            BlockSpec(
                1 if b.heads else 0,
                aligned_width(1, b.qk_dim, align) if b.heads else 0,
                aligned_width(1, b.v_dim, align) if b.heads else 0,
                aligned_width(1, b.mlp_dim, align) if b.mlp_dim else 0,
            )
            for b in spec.blocks
        ]
    return Floor(res.of_spec(spec.replace(blocks=tuple(blocks))) / full, res.fixed / full)


def _nvit_floor(spec: ViTSpec, metric: str, lut: object, align: int) -> float:
    """NViT removes whole chunks while more than the survivors are left (its ``mins``)."""
    from uvc.arch.cost import model_cost
    from uvc.arch.structmap import Kind
    from uvc.methods.nvit.method import chunk_sizes, embed_floor

    size = chunk_sizes(spec, None, align)

    def least(n: int, kind: Kind) -> int:
        keep = 1 if kind is Kind.HEAD else min(align, n)
        if kind is Kind.EMBED:
            keep = embed_floor(n, lut, align)
        return n - size[kind] * ((n - keep) // size[kind]) if n else 0

    blocks = tuple(
        BlockSpec(least(b.heads, Kind.HEAD), least(b.qk_dim, Kind.QK), least(b.v_dim, Kind.V),
                  least(b.mlp_dim, Kind.MLP))
        if b.heads else BlockSpec(0, 0, 0, least(b.mlp_dim, Kind.MLP))
        for b in spec.blocks
    )  # fmt: skip
    prune_embed = lut is None or getattr(lut, "embed_grid", None) is not None
    embed = least(spec.embed_dim, Kind.EMBED) if prune_embed else spec.embed_dim
    smallest = spec.replace(embed_dim=embed, blocks=blocks)
    if lut is not None:
        full = lut.model_ms(unmerged(spec))  # type: ignore[attr-defined]
        return float(lut.model_ms(smallest) / full)  # type: ignore[attr-defined]
    cost, base = model_cost(smallest), model_cost(unmerged(spec))
    return cost.macs / base.macs if metric == "macs" else cost.params / base.params


def _round_up(x: float) -> str:
    """``x`` rounded up to 3 significant digits, as text (a budget the user can type)."""
    import math

    digits = 2 - math.floor(math.log10(x)) if x > 0 else 3
    scale = 10**digits
    return f"{math.ceil(x * scale) / scale:g}"


def available_bytes(device: str) -> int:
    """Memory a measurement may use: free GPU memory, or the host's available memory."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
        return 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
