"""``TrainConfig``: every setting of a ``uvc train`` run, validated at construction and saved as
``config.json`` in the run folder (so ``--resume DIR`` needs no flags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uvc.errors import UvcError
from uvc.teacher import DEMO_MODEL

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
