"""``TrainConfig``: every setting of a ``uvc train`` run, validated at construction and saved as
``config.json`` in the run folder (so ``--resume DIR`` needs no flags)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uvc.arch.demo import DEMO_MODEL
from uvc.errors import UvcError
from uvc.methods.common.config import METHODS

METRICS = ("macs", "params", "latency")
IMPORTANCES = ("magnitude", "taylor", "fisher")
SEARCH_SEED_EPOCH = 1_000_000  # an "epoch" no data loader reaches: the search's own RNG stream
# Files a run writes in its output folder (``fresh`` removes exactly these, nothing else).
# Keys every saved config has had since the first version (a file without them is someone else's).
CORE_KEYS = frozenset({"model", "data", "budget", "metric", "search_epochs"})
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
        method: the compression method: uvc (primal-dual search), uniform (naive baseline) or
            nvit (global Hessian-aware structural pruning, embedding width included).
        nvit_lambda / nvit_interval: nvit's cost weight and batches between pruning steps
            (None: ``uvc.methods.search.SearchConfig``'s defaults).
        search_epochs: stage-1 epochs (including ``warmup_epochs``).
        finetune_epochs: stage-2 epochs on the dense model.
        teacher_epochs: epochs to train the uncompressed model first when it has no weights
            fitting the dataset (0: never).
        warmup_epochs: stage-1 epochs with the gates fixed, before pruning starts.
        batch_size: images per batch and process.
        lr: peak learning rate of every stage (AdamW).
        importance: magnitude, taylor or fisher scores for choosing what to prune.
        gates: uvc's skip gates searched: all (block, attention and MLP), block, parts or none.
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
        merge: token merging (ToMe) of the compressed model: one r for every block ("8") or one
            per block ("8,8,4,0,0,0"); None: no merging. The budget counts it.
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
    method: str = "uvc"
    nvit_lambda: float | None = None
    nvit_interval: int | None = None
    search_epochs: int = 10
    finetune_epochs: int = 10
    teacher_epochs: int = 20
    warmup_epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    importance: str = "magnitude"
    gates: str = "all"
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
    merge: str | None = None

    def __post_init__(self) -> None:
        # Every option is checked here, before any data is read or any model built: a run that
        # would fail must fail now, not after the teacher has trained for hours.
        _check_types(self)
        for name in ("budget", "val_split", "lr", "alpha", "tau", "label_smoothing", "mixup",
                     "cutmix"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        _choice("metric", self.metric, METRICS)
        _choice("method", self.method, tuple(sorted(METHODS)))
        _choice("importance", self.importance, IMPORTANCES)
        _choice("gates", self.gates, ("all", "block", "parts", "none"))
        _choice("kd", self.kd, ("soft", "hard", "none"))
        _choice("amp", self.amp, (None, "bf16", "fp16"))
        check_device(self.device)
        if self.metric == "latency" and not self.lut:
            raise ValueError("metric 'latency' needs a latency table: pass --lut FILE")
        if self.lut and self.metric != "latency":
            raise ValueError(
                f"--lut is only used by --metric latency (the budget counts {self.metric}); "
                "drop --lut or pass --metric latency"
            )
        _check_nvit(self)
        if (self.teacher is None) != (self.teacher_weights is None):
            raise ValueError("--teacher and --teacher-weights go together")
        for name in ("search_epochs", "finetune_epochs", "teacher_epochs", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.search_epochs <= self.warmup_epochs:
            raise ValueError(
                f"search_epochs ({self.search_epochs}) must exceed warmup_epochs "
                f"({self.warmup_epochs}): pruning starts after the warmup"
            )
        if self.batch_size <= 0 or not self.lr > 0 or self.align <= 0:
            raise ValueError("batch_size, lr and align must be positive")
        if self.img_size is not None and self.img_size <= 0:
            raise ValueError("img_size must be positive")
        if not self.tau > 0:
            raise ValueError(f"tau (the distillation temperature) must be > 0, got {self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1), got {self.val_split}")
        if self.val_split > 0 and self.data == "digits":
            raise ValueError(
                "--val-split applies to a single-folder dataset; the built-in digits set has a "
                "fixed validation split: drop --val-split"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix must be >= 0, got {self.mixup}, {self.cutmix}")
        if self.merge is not None:
            _check_merge(self.merge)
        if self.amp is not None and self.device == "cpu":
            raise ValueError(f"--amp {self.amp} needs CUDA; it does nothing with --device cpu")

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
        except (OSError, UnicodeDecodeError) as exc:
            raise UvcError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        except json.JSONDecodeError as exc:
            raise UvcError(f"{path} is corrupt: {exc}") from None
        if not isinstance(data, dict) or not set(data) >= CORE_KEYS:
            raise UvcError(
                f"{path} is not a uvc run config (it lacks {', '.join(sorted(CORE_KEYS))})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError, AttributeError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UvcError(f"{path} is not a valid run config: {text}") from None


DEVICES = ("auto", "cpu", "cuda")
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "int": (int,),
    "int | None": (int, type(None)),
    "float": (int, float),
    "float | None": (int, float, type(None)),
    "bool": (bool,),
}


def _check_types(cfg: TrainConfig) -> None:
    """Each field has its declared type (a hand-edited or damaged config.json may not)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = _TYPES.get(str(f.type))
        if allowed is None:
            continue
        bad_bool = isinstance(value, bool) and bool not in allowed
        if bad_bool or not isinstance(value, allowed):
            raise ValueError(f"{f.name} must be {f.type}, got {value!r}")


def _check_nvit(cfg: TrainConfig) -> None:
    """nvit's settings: only with ``--method nvit``, and in range."""
    given = [n for n in ("nvit_lambda", "nvit_interval") if getattr(cfg, n) is not None]
    if given and cfg.method != "nvit":
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"{flags} only apply to --method nvit (this run uses {cfg.method})")
    lam = cfg.nvit_lambda
    if lam is not None and not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"nvit_lambda must be a finite number >= 0, got {lam}")
    if cfg.nvit_interval is not None and cfg.nvit_interval < 1:
        raise ValueError(f"nvit_interval must be >= 1, got {cfg.nvit_interval}")


def _check_merge(merge: str) -> None:
    """--merge's syntax and signs (its length and token bounds need the model: preflight)."""
    from uvc.arch.merge_schedule import merge_schedule

    try:
        merge_schedule(merge, len(merge.split(",")))
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def check_device(device: object) -> None:
    """``device`` must be auto, cpu, cuda or cuda:N (ValueError otherwise)."""
    if not isinstance(device, str):
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    base, _, index = device.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N); got {device!r}")


def _choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        shown = ", ".join(str(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
