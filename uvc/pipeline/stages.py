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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uvc.arch.demo import DEMO_MODEL
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError
from uvc.settings import RUN_FILES, SEARCH_SEED_EPOCH, TrainConfig

log = logging.getLogger("uvc.pipeline")


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


RUN_KIND = "train"  # the marker kind of a train/demo run folder (``uvc.files.rundir``)


def train(
    cfg: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or continue) the whole job and return its result.

    Everything is checked before any compute (``uvc.pipeline.preflight``); a refused run leaves
    nothing behind. The output folder is then claimed (``uvc.files.rundir``): uvc writes only into
    a new
    or empty folder, or into a run folder it created itself.

    Args:
        cfg: the run's settings; a folder that already holds a run with the same settings is
            continued, one with other settings is refused.
        resume: a run folder: continue it with the settings saved there (``cfg`` is ignored).
        overrides: with ``resume``, settings that do not change results (device, workers,
            progress) to take instead of the saved ones.
    """
    from uvc.files.rundir import check_claimable, claim
    from uvc.pipeline.preflight import preflight

    if resume is not None:
        check_resumable(resume)
        cfg = TrainConfig.load(resume)
        changes = dict(overrides or {})
        bad = sorted(set(changes) - RESUME_OVERRIDES)
        if bad:
            raise UvcError(f"a resumed run keeps its saved settings; cannot change {bad}")
        try:
            cfg = dataclasses.replace(cfg, out=str(resume), **changes)
        except ValueError as exc:
            raise UvcError(str(exc)) from None
        log.info("resuming the run in %s", resume)
    elif cfg is None:
        raise UvcError("train() needs a TrainConfig or a run folder to resume")
    elif _is_main_rank():
        check_claimable(cfg.out, RUN_KIND)
        _claim_out_dir(cfg)
    preflight(cfg)
    if _is_main_rank():  # under torchrun only rank 0 writes (other ranks may see a half claim)
        claim(cfg.out, RUN_KIND)
    return run_stages(cfg)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_resumable(folder: str | Path) -> None:
    """Raise ``UvcError`` unless ``folder`` is a run folder uvc created (nothing is read)."""
    from uvc.files.rundir import MARKER, is_own

    if not Path(folder).is_dir():
        raise UvcError(f"{folder} holds no uvc run to resume (no such folder)")
    if not is_own(folder, RUN_KIND):
        raise UvcError(
            f"{folder} holds no uvc run to resume (no {MARKER}: uvc did not create it); "
            "nothing was changed"
        )


# Settings a resumed run may change: they do not change its results.
RESUME_OVERRIDES = frozenset({"progress", "device", "workers"})


def _claim_out_dir(cfg: TrainConfig) -> None:
    """Refuse to mix two runs in one folder; continuing the same settings is allowed."""
    saved = Path(cfg.out) / "config.json"
    if not saved.is_file():
        return
    old = TrainConfig.load(cfg.out)
    diff = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RESUME_OVERRIDES and getattr(old, f.name) != getattr(cfg, f.name)
    ]
    if diff:
        raise UvcError(
            f"{cfg.out} already holds a run with other settings ({', '.join(diff)}); use "
            f"--resume {cfg.out} to continue it, or choose another --out"
        )
    log.info("%s already holds this run: continuing it", cfg.out)


def clear_run(out_dir: str | Path) -> list[str]:
    """Delete the files a run writes in ``out_dir`` (only those), for a fresh start.

    Only a folder uvc created (``uvc.files.rundir`` marker) is touched; its other files stay.
    Returns
    the names removed.

    Raises:
        RunDirError: ``out_dir`` holds files but was not created by uvc.
    """
    from uvc.files.rundir import check_claimable, remove_own_files

    out = Path(out_dir)
    check_claimable(out, RUN_KIND)
    if not out.is_dir() or not any(out.iterdir()):
        return []
    return remove_own_files(out, set(RUN_FILES))


def demo(
    out: str | Path = "runs/demo",
    *,
    fresh: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """The whole job on the built-in default: a tiny ViT on ``digits``, a few minutes on a CPU.

    Args:
        fresh: delete the files of a previous demo run in ``out`` first (only in a folder uvc
            created, and only the files a run writes).
        threads: CPU threads for torch (None: torch's default). One by default: the demo's
            matrices are too small to gain from more, and on a busy machine spin-waiting threads
            made a training step 25x slower (3.4 s vs 0.14 s measured on the 2-core dev box).
    """
    if threads is not None and threads < 1:
        raise UvcError(f"threads must be >= 1 (or None: torch's default), got {threads}")
    try:
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
    except ValueError as exc:
        raise UvcError(str(exc)) from None
    if fresh:
        clear_run(out)
    if threads is not None:
        torch.set_num_threads(threads)
    return train(cfg)


def evaluate_final(out_dir: str | Path, device: str = "cpu") -> float:
    """Top-1 (%) of ``out_dir/final.pt`` on the run's validation split, rebuilt from scratch."""
    from uvc.files.checkpoint import load_checkpoint
    from uvc.train.accuracy import model_val_loader
    from uvc.train.finetune import evaluate

    cfg = TrainConfig.load(out_dir)
    ckpt = load_checkpoint(Path(out_dir) / "final.pt")
    model = ViT(ckpt.spec)
    model.load_state_dict(ckpt.state_dict)
    val, _ = model_val_loader(ckpt.spec, cfg.data, cfg.batch_size, cfg.val_split, 0, cfg.seed)
    return evaluate(model, val, torch.device(device))


# --- the stages -----------------------------------------------------------------------------------


def run_stages(cfg: TrainConfig) -> TrainResult:
    """Teacher (if needed) -> search -> materialize -> finetune -> final.pt, each resumable.

    The three compression stages are ``uvc.api.compress_stages``, the same ones ``uvc.compress``
    runs; this adds the data, the teacher stage, the run folder's files and the summary.
    """
    from uvc._fs import atomic_write_text
    from uvc.api import compress_stages
    from uvc.train.data import seed_epoch
    from uvc.train.dist import init_distributed
    from uvc.train.runlog import RunLog
    from uvc.train.teacher import Teachers, build_timm_teacher

    dist, device = init_distributed(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    data, model, trained = _data_and_model(cfg, dist)
    original = model.spec
    # Only a run that got this far (valid data and model) writes its settings.
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    runlog = RunLog(out / "log.jsonl" if dist.is_main else None)
    teacher_acc = _teacher_stage(cfg, model, trained, data, out, device, dist, runlog)
    extra = None
    if cfg.teacher is not None:
        extra = build_timm_teacher(cfg.teacher, cfg.teacher_weights, data.num_classes)
    teachers = Teachers(copy.deepcopy(model), extra).to(device)
    # The search's gate noise must not depend on whether the teacher stage ran in this process
    # or was restored from teacher.pt (search.pt restores its own RNG state when it exists).
    seed_epoch(cfg.seed, SEARCH_SEED_EPOCH)
    dense, search, accuracy = compress_stages(
        copy.deepcopy(model), teachers, data.train, data.val, cfg, out,
        device=device, dist=dist, log=runlog, mixup=data.mixup,
    )  # fmt: skip
    return _finish(cfg, out, dist, runlog, original, dense, search, teacher_acc, accuracy, data)


def _data_and_model(cfg: TrainConfig, dist: Any) -> tuple[Any, ViT, bool]:
    """The loaders (the data decides the classes) and the uncompressed model (it decides the
    image size, unless --img-size does; a model recording its preprocessing gets its own)."""
    from uvc.train.data import DataConfig, build_data
    from uvc.train.teacher import load_base_model

    probe = None if cfg.model == DEMO_MODEL else _spec_of(cfg.model)
    img_size = cfg.img_size or (probe.img_size if probe else 32)
    pre = probe.preprocess if probe is not None else None
    stats = {"mean": tuple(pre.mean), "std": tuple(pre.std)} if pre is not None else {}
    data_cfg = DataConfig(
        cfg.data, img_size, cfg.batch_size, cfg.val_split, cfg.workers, cfg.seed,
        cfg.mixup, cfg.cutmix, **stats,
    )  # fmt: skip
    data = build_data(data_cfg, dist)
    model, trained = load_base_model(cfg.model, cfg.weights, data.num_classes, cfg.img_size)
    return data, model, trained


def _teacher_stage(
    cfg: TrainConfig,
    model: ViT,
    trained: bool,
    data: Any,
    out: Path,
    device: torch.device,
    dist: Any,
    runlog: Any,
) -> float:
    """Stage 0: a teacher that fits the data (the uncompressed model trained with labels only,
    when it came without weights for this data); returns its top-1 (%)."""
    from uvc.api import finetune_config
    from uvc.train.distill import DistillConfig, DistillLoss
    from uvc.train.finetune import evaluate, finetune

    if not trained and cfg.teacher_epochs > 0:
        labels_only = DistillLoss(DistillConfig("none", 0.0, 1.0, cfg.label_smoothing))
        res = finetune(
            model, None, data.train, data.val, labels_only,
            finetune_config(cfg, "teacher", cfg.teacher_epochs), out,
            device=device, dist=dist, resume=True, log_fn=runlog, mixup=data.mixup,
        )  # fmt: skip
        acc = res.accuracy
    else:
        if not trained:
            log.warning("the uncompressed model is untrained (teacher_epochs=0): weak teacher")
        acc = evaluate(model.to(device), data.val, device)
    runlog({"stage": "teacher", "event": "done", "acc": acc})
    return acc


def _finish(
    cfg: TrainConfig,
    out: Path,
    dist: Any,
    runlog: Any,
    original: ViTSpec,
    dense: ViT,
    search: Any,
    teacher_acc: float,
    accuracy: float,
    data: Any,
) -> TrainResult:
    """final.pt, architecture.png, summary.txt (with R before and after the projection)."""
    from uvc.arch.cost import macs, params
    from uvc.arch.plot import plot_architecture
    from uvc.files.checkpoint import Checkpoint, save_checkpoint
    from uvc.train.runlog import SummaryRow, summary_table

    rows = [
        SummaryRow("uncompressed", teacher_acc, macs(original), params(original)),
        SummaryRow("compressed", accuracy, macs(dense.spec), params(dense.spec)),
    ]
    table = summary_table(rows)
    table += (
        f"\n{cfg.method} search: {cfg.metric} ratio {search.cost_searched:.4f} before the final "
        f"projection, {search.cost_final:.4f} after (budget {cfg.budget})"
    )
    meta = {
        "kind": "final",
        "teacher_acc": teacher_acc,
        "accuracy": accuracy,
        "macs_before": rows[0].macs,
        "macs_after": rows[1].macs,
        "params_before": rows[0].params,
        "params_after": rows[1].params,
        "R_searched": search.cost_searched,
        "R_final": search.cost_final,
        "budget": cfg.budget,
        "metric": cfg.metric,
        "method": cfg.method,
        "data": cfg.data,
        "classes": data.classes,
        "original_spec": original.to_dict(),
        "keep": search.keep.to_json(),
    }
    if dist.is_main:
        save_checkpoint(out / "final.pt", Checkpoint(dense.spec, dense.state_dict(), meta))
        plot_architecture(original, dense.spec, out / "architecture.png")
        (out / "summary.txt").write_text(table + "\n")
        runlog({"stage": "final", "event": "done", **{k: meta[k] for k in list(meta)[1:10]}})
        log.info("summary (%s):\n%s", out, table)
    return TrainResult(
        out, dense.cpu().eval(), original, teacher_acc, accuracy,
        rows[0].macs, rows[1].macs, rows[0].params, rows[1].params, table, meta,
    )  # fmt: skip


def _spec_of(target: str) -> ViTSpec:
    from uvc.files.source import resolve_spec

    return resolve_spec(target)
