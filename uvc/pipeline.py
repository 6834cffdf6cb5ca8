"""The UVC job (``uvc train``, ``uvc demo``): teacher -> search -> materialize -> finetune.

This is the one place that joins ``uvc/`` (training) and ``export/`` (materialization). Every stage
checkpoints into the output folder, and the run's config is saved there first (``config.json``), so
``train(resume=DIR)`` continues a killed run in whichever stage it was, with the settings it
started with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uvc.errors import UvcError
from uvc.model import ViT
from uvc.spec import ViTSpec
from uvc.teacher import DEMO_MODEL

log = logging.getLogger("uvc.pipeline")

METRICS = ("macs", "params", "latency")
IMPORTANCES = ("magnitude", "taylor", "fisher")
SEARCH_SEED_EPOCH = 1_000_000  # an "epoch" no data loader reaches: the search's own RNG stream
# Files a run writes in its output folder (``fresh`` removes exactly these, nothing else).
RUN_FILES = (
    "config.json",
    "teacher.pt",
    "search.pt",
    "spec.json",
    "keep.json",
    "finetune.pt",
    "final.pt",
    "log.jsonl",
    "architecture.png",
    "summary.txt",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a ``uvc train`` run needs; saved as ``config.json`` in ``out``.

    Args:
        out: output folder.
        model: a timm ViT/DeiT name, a spec JSON, a uvc checkpoint, or ``uvc-tiny`` (built in).
        weights: local weights for ``model`` (timm/DeiT/uvc formats).
        data: an ImageFolder folder or ``digits`` (built in).
        val_split: held-out fraction of a single-folder dataset.
        img_size: input side for a model without weights (default: the model's).
        budget: kept fraction of the resource (0 < budget <= 1).
        metric: resource the budget counts: macs, params or latency (needs ``lut``).
        lut: latency lookup table JSON (``uvc lut``) for ``metric=latency``.
        search_epochs: stage-1 epochs (including ``warmup_epochs``).
        finetune_epochs: stage-2 epochs on the dense model.
        teacher_epochs: epochs to train the uncompressed model first when it has no weights
            fitting the dataset (0: never).
        warmup_epochs: stage-1 epochs with the gates fixed, before pruning starts.
        batch_size: images per batch and process.
        lr: peak learning rate of every stage (AdamW).
        importance: magnitude, taylor or fisher scores for choosing what to prune.
        per_head_v: learn UVC's per-head value dims (padded at materialization).
        align: round kept widths to a multiple of this (8 for tensor cores).
        kd: distillation mode: soft, hard or none.
        alpha: weight of the distillation term.
        tau: distillation temperature.
        label_smoothing: label smoothing of the cross-entropy.
        mixup: Mixup alpha for the dense stages (teacher, finetune); 0 is off.
        cutmix: CutMix alpha for the dense stages; 0 is off.
        teacher: an extra timm teacher model name (with ``teacher_weights``).
        teacher_weights: local weights of ``teacher``.
        amp: None, bf16 or fp16 (GPU only).
        device: auto, cpu or cuda.
        workers: DataLoader workers.
        seed: seed of initialisation, data order and transforms.
        progress: show progress bars.
    """

    out: str = "runs/train"
    model: str = DEMO_MODEL
    weights: str | None = None
    data: str = "digits"
    val_split: float = 0.0
    img_size: int | None = None
    budget: float = 0.5
    metric: str = "macs"
    lut: str | None = None
    search_epochs: int = 10
    finetune_epochs: int = 10
    teacher_epochs: int = 20
    warmup_epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    importance: str = "magnitude"
    per_head_v: bool = False
    align: int = 1
    kd: str = "soft"
    alpha: float = 0.5
    tau: float = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    teacher: str | None = None
    teacher_weights: str | None = None
    amp: str | None = None
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        _choice("metric", self.metric, METRICS)
        _choice("importance", self.importance, IMPORTANCES)
        _choice("kd", self.kd, ("soft", "hard", "none"))
        _choice("amp", self.amp, (None, "bf16", "fp16"))
        _choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        if self.metric == "latency" and not self.lut:
            raise ValueError("metric 'latency' needs a latency table: pass --lut FILE")
        if (self.teacher is None) != (self.teacher_weights is None):
            raise ValueError("--teacher and --teacher-weights go together")
        for name in ("search_epochs", "finetune_epochs", "teacher_epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.warmup_epochs > self.search_epochs:
            raise ValueError("warmup_epochs cannot exceed search_epochs")
        if self.batch_size <= 0 or self.lr <= 0 or self.align <= 0:
            raise ValueError("batch_size, lr and align must be positive")
        if self.img_size is not None and self.img_size <= 0:
            raise ValueError("img_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``config.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, out_dir: str | Path) -> TrainConfig:
        """Read ``out_dir/config.json`` (the settings a run started with)."""
        path = Path(out_dir) / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UvcError(f"{out_dir} holds no uvc run to resume (no {path.name})") from None
        except json.JSONDecodeError as exc:
            raise UvcError(f"{path} is corrupt: {exc}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise UvcError(f"{path} is not a valid run config: {exc}") from None


def _choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        shown = ", ".join(str(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")


@dataclass
class TrainResult:
    """What a run produced (also in ``final.pt``'s meta and ``summary.txt``)."""

    out_dir: Path
    model: ViT
    original: ViTSpec
    teacher_acc: float
    accuracy: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    summary: str
    meta: dict[str, Any] = field(default_factory=dict)


def train(cfg: TrainConfig | None = None, *, resume: str | Path | None = None) -> TrainResult:
    """Run (or continue) the whole job and return its result.

    Args:
        cfg: the run's settings; a folder that already holds a run with the same settings is
            continued, one with other settings is refused.
        resume: a run folder: continue it with the settings saved there (``cfg`` is ignored).
    """
    if resume is not None:
        cfg = TrainConfig.load(resume)
        cfg = dataclasses.replace(cfg, out=str(resume))
        log.info("resuming the run in %s", resume)
    elif cfg is None:
        raise UvcError("train() needs a TrainConfig or a run folder to resume")
    else:
        _claim_out_dir(cfg)
    return run_stages(cfg)


def _claim_out_dir(cfg: TrainConfig) -> None:
    """Refuse to mix two runs in one folder; continuing the same settings is allowed."""
    saved = Path(cfg.out) / "config.json"
    if not saved.is_file():
        return
    old = TrainConfig.load(cfg.out)
    ignore = {"progress", "device", "workers"}  # do not change results
    diff = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in ignore and getattr(old, f.name) != getattr(cfg, f.name)
    ]
    if diff:
        raise UvcError(
            f"{cfg.out} already holds a run with other settings ({', '.join(diff)}); use "
            f"--resume {cfg.out} to continue it, or choose another --out"
        )
    log.info("%s already holds this run: continuing it", cfg.out)


def clear_run(out_dir: str | Path) -> None:
    """Delete the files a run writes in ``out_dir`` (only those), for a fresh start."""
    out = Path(out_dir)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def demo(
    out: str | Path = "runs/demo",
    *,
    fresh: bool = False,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """The whole job on the built-in default: a tiny ViT on ``digits``, a few minutes on a CPU.

    Args:
        threads: CPU threads for torch (None: torch's default). One by default: the demo's
            matrices are too small to gain from more, and on a busy machine spin-waiting threads
            made a training step 25x slower (3.4 s vs 0.14 s measured on the 2-core dev box).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if fresh and Path(out).is_dir():
        clear_run(out)
    cfg = TrainConfig(
        out=str(out),
        model=DEMO_MODEL,
        data="digits",
        budget=0.5,
        teacher_epochs=25,
        search_epochs=8,
        warmup_epochs=2,
        finetune_epochs=12,
        batch_size=32,
        lr=2e-3,
        device=device,
        seed=seed,
        progress=progress,
    )
    return train(cfg)


def evaluate_final(out_dir: str | Path, device: str = "cpu") -> float:
    """Top-1 (%) of ``out_dir/final.pt`` on the run's validation split, rebuilt from scratch."""
    from uvc.checkpoint import load_checkpoint
    from uvc.data import DataConfig, build_data
    from uvc.finetune import evaluate

    cfg = TrainConfig.load(out_dir)
    ckpt = load_checkpoint(Path(out_dir) / "final.pt")
    model = ViT(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    data = build_data(
        DataConfig(cfg.data, ckpt.spec.img_size, cfg.batch_size, cfg.val_split, 0, cfg.seed)
    )
    return evaluate(model, data.val, torch.device(device))


# --- the stages -----------------------------------------------------------------------------------


def _search_config(cfg: TrainConfig) -> Any:
    """The stage-1 ``SearchConfig``, passing only the fields this version of it has."""
    from uvc.search import SearchConfig

    wanted: dict[str, Any] = {
        "budget": cfg.budget,
        "metric": cfg.metric,
        "lut": cfg.lut,
        "epochs": cfg.search_epochs,
        "warmup_epochs": cfg.warmup_epochs,
        "lr": cfg.lr,
        "importance": cfg.importance,
        "per_head_v": cfg.per_head_v,
        "align": cfg.align,
        "amp": cfg.amp,
        "seed": cfg.seed,
        "progress": cfg.progress,
    }
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in wanted.items() if k in names})


def run_stages(cfg: TrainConfig) -> TrainResult:
    """Teacher (if needed) -> search -> materialize -> finetune -> final.pt, each resumable."""
    from uvc.checkpoint import Checkpoint, atomic_write_text, save_checkpoint
    from uvc.cost import macs, params
    from uvc.data import DataConfig, build_data, seed_epoch
    from uvc.dist import init_distributed
    from uvc.distill import DistillConfig, DistillLoss
    from uvc.export.materialize import materialize
    from uvc.finetune import FinetuneConfig, evaluate, finetune
    from uvc.plot import plot_architecture
    from uvc.runlog import RunLog, SummaryRow, summary_table
    from uvc.teacher import Teachers, build_timm_teacher, load_base_model

    dist, device = init_distributed(cfg.device)
    out = Path(cfg.out)
    main = dist.is_main
    torch.manual_seed(cfg.seed)

    # The data decides the classes; the model decides the image size (or --img-size does).
    probe = None if cfg.model == DEMO_MODEL else _spec_of(cfg.model)
    img_size = cfg.img_size or (probe.img_size if probe else 32)
    data_cfg = DataConfig(
        cfg.data,
        img_size,
        cfg.batch_size,
        cfg.val_split,
        cfg.workers,
        cfg.seed,
        cfg.mixup,
        cfg.cutmix,
    )
    data = build_data(data_cfg, dist)
    model, trained = load_base_model(cfg.model, cfg.weights, data.num_classes, cfg.img_size)
    original = model.spec
    # Only a run that got this far (valid data and model) claims the folder.
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    runlog = RunLog(out / "log.jsonl" if main else None)
    loss_fn = DistillLoss(DistillConfig(cfg.kd, cfg.alpha, cfg.tau, cfg.label_smoothing))
    amp = cfg.amp

    def stage_cfg(stage: str, epochs: int) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=epochs,
            warmup_epochs=min(1.0, epochs),
            lr=cfg.lr,
            amp=amp,
            seed=cfg.seed,
            ckpt_name=f"{stage}.pt",
            stage=stage,
            progress=cfg.progress,
        )

    loaders = (data.train, data.val)
    common: dict[str, Any] = {
        "device": device,
        "dist": dist,
        "resume": True,
        "log_fn": runlog,
        "mixup": data.mixup,
    }
    # Stage 0: a teacher that fits the data (the uncompressed model trained with labels only).
    if not trained and cfg.teacher_epochs > 0:
        labels_only = DistillLoss(DistillConfig("none", 0.0, 1.0, cfg.label_smoothing))
        res = finetune(
            model,
            None,
            *loaders,
            labels_only,
            stage_cfg("teacher", cfg.teacher_epochs),
            out,
            **common,
        )
        teacher_acc = res.accuracy
    else:
        if not trained:
            log.warning("the uncompressed model is untrained (teacher_epochs=0): weak teacher")
        teacher_acc = evaluate(model.to(device), data.val, device)
    runlog({"stage": "teacher", "event": "done", "acc": teacher_acc})
    extra = None
    if cfg.teacher is not None:
        extra = build_timm_teacher(cfg.teacher, cfg.teacher_weights, data.num_classes)
    teachers = Teachers(copy.deepcopy(model), extra).to(device)

    # Stage 1: search (masks, gates, duals) on a copy of the uncompressed model.
    from uvc.search import run_search

    student = copy.deepcopy(model).to(device)
    # The search's gate noise must not depend on whether the teacher stage ran in this process
    # or was restored from teacher.pt (search.pt restores its own RNG state when it exists).
    seed_epoch(cfg.seed, SEARCH_SEED_EPOCH)
    result = run_search(
        student,
        teachers,
        data.train,
        data.val,
        loss_fn,
        _search_config(cfg),
        out if main else None,
        device=device,
        dist=dist,
        resume=(out / "search.pt").is_file(),
        log=runlog.stage("search"),
    )

    # Materialize: a new, physically smaller dense model (export/ builds it, uvc/ trains it).
    dense = materialize(result.model, result.keep)
    if dense.spec != result.spec:
        raise UvcError("internal: the materialized spec differs from the searched spec")
    final = finetune(
        dense,
        teachers,
        *loaders,
        loss_fn,
        stage_cfg("finetune", cfg.finetune_epochs),
        out,
        **common,
    )

    rows = [
        SummaryRow("uncompressed", teacher_acc, macs(original), params(original)),
        SummaryRow("compressed", final.accuracy, macs(dense.spec), params(dense.spec)),
    ]
    table = summary_table(rows)
    meta = {
        "kind": "final",
        "teacher_acc": teacher_acc,
        "accuracy": final.accuracy,
        "macs_before": rows[0].macs,
        "macs_after": rows[1].macs,
        "params_before": rows[0].params,
        "params_after": rows[1].params,
        "budget": cfg.budget,
        "metric": cfg.metric,
        "data": cfg.data,
        "classes": data.classes,
        "original_spec": original.to_dict(),
        "keep": [k.to_dict() for k in result.keep],
    }
    if main:
        save_checkpoint(out / "final.pt", Checkpoint(dense.spec, dense.state_dict(), meta))
        plot_architecture(original, dense.spec, out / "architecture.png")
        (out / "summary.txt").write_text(table + "\n")
        runlog({"stage": "final", "event": "done", **{k: meta[k] for k in list(meta)[1:8]}})
        log.info("summary (%s):\n%s", out, table)
    return TrainResult(
        out,
        dense.cpu().eval(),
        original,
        teacher_acc,
        final.accuracy,
        rows[0].macs,
        rows[1].macs,
        rows[0].params,
        rows[1].params,
        table,
        meta,
    )


def _spec_of(target: str) -> ViTSpec:
    from uvc.source import resolve_spec

    return resolve_spec(target)
