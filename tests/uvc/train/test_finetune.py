"""Stage 2: the schedule, learning on a tiny problem, exact resume, refusals."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import CheckpointError, UvcError
from uvc.files.checkpoint import load_checkpoint
from uvc.train.data import DigitsDataset, EpochSampler
from uvc.train.distill import DistillConfig, DistillLoss
from uvc.train.finetune import FinetuneConfig, finetune, lr_at
from uvc.train.teacher import Teachers

CPU = torch.device("cpu")


def _spec() -> ViTSpec:
    return ViTSpec.uniform(2, 32, 2, 2.0, img_size=16, patch_size=4, num_classes=10)


def _loaders(n_train: int = 256, seed: int = 0, batch: int = 32) -> tuple[DataLoader, DataLoader]:
    # Four digit classes: a problem a 2-block ViT learns in a few dozen steps.
    train, val = DigitsDataset(16, train=True), DigitsDataset(16, train=False)
    ti, vi = train.targets < 4, val.targets < 4
    tr = TensorDataset(train.images[ti][:n_train], train.targets[ti][:n_train])
    va = TensorDataset(val.images[vi][:128], val.targets[vi][:128])
    g = torch.Generator()
    tl = DataLoader(tr, batch_size=batch, sampler=EpochSampler(len(tr), True, seed, g), generator=g)
    vl = DataLoader(va, batch_size=64, sampler=EpochSampler(len(va), False))
    return tl, vl


def _cfg(**kw: object) -> FinetuneConfig:
    base: dict[str, object] = {"epochs": 3, "warmup_epochs": 1, "lr": 3e-3, "progress": False}
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def test_lr_schedule_is_warmup_then_cosine() -> None:
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_at(0, 10, 0, 1.0, 0.0) == pytest.approx(1.0)


def test_loss_decreases_and_model_learns() -> None:
    tl, vl = _loaders()
    model = ViT(_spec())
    loss = DistillLoss(DistillConfig("none", label_smoothing=0.0))
    res = finetune(
        model, None, tl, vl, loss, _cfg(epochs=6, lr=1e-2, warmup_epochs=0.5), None, device=CPU
    )
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < 0.6 * losses[0]
    assert all(b < a for a, b in itertools.pairwise(losses[:4]))
    assert res.accuracy > 45.0  # chance is 25 %
    assert not model.training


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    tl, vl = _loaders(n_train=96)
    teacher_model = ViT(_spec())
    loss = DistillLoss(DistillConfig("soft", alpha=0.5))
    torch.manual_seed(1)
    init = ViT(_spec()).state_dict()

    def run(out: Path, crash_after: int | None = None, resume: bool = False) -> ViT:
        model = ViT(_spec())
        model.load_state_dict(init)

        def log_fn(rec: dict) -> None:
            end = rec.get("event") == "epoch_end"
            if end and crash_after is not None and rec["epoch"] + 1 == crash_after:
                raise KeyboardInterrupt  # a kill right after the epoch's checkpoint

        teacher = Teachers(teacher_model)
        finetune(model, teacher, tl, vl, loss, _cfg(), out, device=CPU, resume=resume,
                 log_fn=log_fn)  # fmt: skip
        return model

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_after=1)
    assert load_checkpoint(tmp_path / "b" / "finetune.pt").extra["epoch"] == 1
    resumed = run(tmp_path / "b", resume=True)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    ckpt = load_checkpoint(tmp_path / "b" / "finetune.pt")
    assert ckpt.meta["complete"] and len(ckpt.extra["history"]) == 3
    # A finished stage returns at once with its recorded accuracy.
    again = finetune(ViT(_spec()), None, tl, vl, loss, _cfg(), tmp_path / "b", device=CPU,
                     resume=True)  # fmt: skip
    assert again.accuracy == ckpt.meta["accuracy"]


def test_resume_refuses_another_architecture(tmp_path: Path) -> None:
    tl, vl = _loaders(n_train=32)
    loss = DistillLoss(DistillConfig("none"))
    finetune(ViT(_spec()), None, tl, vl, loss, _cfg(epochs=1), tmp_path, device=CPU)
    other = ViT(_spec().replace(embed_dim=16))
    with pytest.raises(CheckpointError, match="another architecture"):
        finetune(other, None, tl, vl, loss, _cfg(epochs=1), tmp_path, device=CPU, resume=True)


def test_amp_needs_a_gpu() -> None:
    tl, vl = _loaders(n_train=32)
    with pytest.raises(UvcError, match="CUDA"):
        finetune(ViT(_spec()), None, tl, vl, DistillLoss(DistillConfig()), _cfg(amp="fp16"),
                 None, device=CPU)  # fmt: skip
    with pytest.raises(ValueError):
        FinetuneConfig(amp="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16/fp16 autocast needs a CUDA GPU")
def test_amp_on_gpu() -> None:
    tl, vl = _loaders(n_train=64)
    loss = DistillLoss(DistillConfig("none"))
    dev = torch.device("cuda")
    for amp in ("bf16", "fp16"):
        res = finetune(ViT(_spec()), None, tl, vl, loss, _cfg(epochs=2, amp=amp), None, device=dev)
        assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_distilled_student_with_two_teachers_and_mixup() -> None:
    from uvc.train.data import DataConfig, make_mixup
    from uvc.train.teacher import ResizingTeacher

    tl, vl = _loaders(n_train=64)
    student = ViT(_spec().replace(dist_token=True))
    extra = ResizingTeacher(ViT(_spec().replace(img_size=32, patch_size=8)), 32)
    teachers = Teachers(ViT(_spec()), extra)
    mix = make_mixup(DataConfig(mixup=0.8), num_classes=10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    res = finetune(student, teachers, tl, vl, DistillLoss(DistillConfig("hard", alpha=0.5)),
                   _cfg(epochs=1), None, device=CPU, mixup=mix)  # fmt: skip
    assert res.history[0]["loss"] > 0 and 0 <= res.accuracy <= 100
    assert not torch.equal(before["head_dist.weight"], student.head_dist.weight)
    assert not student.distilled_training  # back to inference behaviour (heads averaged)
