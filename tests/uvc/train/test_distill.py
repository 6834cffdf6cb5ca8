"""Distillation losses (against hand computations) and the teacher wrappers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uvc.errors import UvcError
from uvc.train.distill import DistillConfig, DistillLoss, KDMode
from uvc.train.teacher import ResizingTeacher, Teachers, teacher_logits

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
TEACHER = torch.tensor([[1.0, 1.5, -0.5], [2.0, -1.0, 0.0]])
LABELS = torch.tensor([0, 2])


def _softmax(row: list[float], tau: float) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def test_soft_kl_matches_hand_computation() -> None:
    tau = 2.0
    loss = DistillLoss(DistillConfig(KDMode.SOFT, alpha=1.0, tau=tau, label_smoothing=0.0))
    expected = 0.0
    for s, t in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True):
        ps, pt = _softmax(s, tau), _softmax(t, tau)
        expected += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt, strict=True))
    expected = tau**2 * expected / len(STUDENT)
    assert loss(STUDENT, LABELS, TEACHER).item() == pytest.approx(expected, rel=1e-5)


def test_alpha_mixes_label_and_distillation_terms() -> None:
    cfg = DistillConfig(KDMode.SOFT, alpha=0.3, tau=1.0, label_smoothing=0.0)
    loss = DistillLoss(cfg)
    ce = F.cross_entropy(STUDENT, LABELS)
    kd = loss.kd_loss(STUDENT, TEACHER)
    assert loss(STUDENT, LABELS, TEACHER).item() == pytest.approx((0.7 * ce + 0.3 * kd).item())
    # No teacher, or mode none: labels only.
    assert loss(STUDENT, LABELS).item() == pytest.approx(ce.item())
    none = DistillLoss(DistillConfig(KDMode.NONE, alpha=0.3, label_smoothing=0.0))
    assert none(STUDENT, LABELS, TEACHER).item() == pytest.approx(ce.item())


def test_hard_mode_is_cross_entropy_to_teacher_argmax() -> None:
    loss = DistillLoss(DistillConfig("hard", alpha=1.0, label_smoothing=0.0))
    expected = F.cross_entropy(STUDENT, torch.tensor([1, 0]))
    assert loss(STUDENT, LABELS, TEACHER).item() == pytest.approx(expected.item())


def test_distillation_token_path() -> None:
    cfg = DistillConfig("soft", alpha=0.5, tau=1.0, label_smoothing=0.0)
    loss = DistillLoss(cfg)
    dist_logits = STUDENT.flip(-1)
    token_teacher = TEACHER * 3
    got = loss((STUDENT, dist_logits), LABELS, TEACHER, token_teacher).item()
    cls_part = 0.5 * F.cross_entropy(STUDENT, LABELS) + 0.5 * loss.kd_loss(STUDENT, TEACHER)
    dist_part = loss.kd_loss(dist_logits, token_teacher)
    assert got == pytest.approx(((cls_part + dist_part) / 2).item())
    # Without a token teacher, the class teacher feeds the distillation head.
    got = loss((STUDENT, dist_logits), LABELS, TEACHER).item()
    dist_part = loss.kd_loss(dist_logits, TEACHER)
    assert got == pytest.approx(((cls_part + dist_part) / 2).item())


def test_soft_targets_equal_one_hot_indices() -> None:
    loss = DistillLoss(DistillConfig("soft", alpha=0.2, label_smoothing=0.1))
    one_hot = F.one_hot(LABELS, 3).float()
    a = loss(STUDENT, LABELS, TEACHER).item()
    b = loss(STUDENT, one_hot, TEACHER).item()
    assert a == pytest.approx(b, rel=1e-6)


def test_gradients_flow_to_the_student_only() -> None:
    s = STUDENT.clone().requires_grad_(True)
    t = TEACHER.clone().requires_grad_(True)
    DistillLoss(DistillConfig())(s, LABELS, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 1.5}, {"tau": 0.0}, {"label_smoothing": 1.0}, {"mode": "bogus"}]
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises((UvcError, ValueError)):
        DistillConfig(**kwargs)


class _Recorder(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out, self.seen = out, None
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = tuple(x.shape)
        return self.out.expand(x.shape[0], -1)


def test_resizing_teacher_and_teachers() -> None:
    x = torch.randn(2, 3, 16, 16)
    extra_model = _Recorder(torch.tensor([[4.0, 0.0, 0.0]]))
    extra = ResizingTeacher(extra_model, 24)
    main = _Recorder(torch.tensor([[0.0, 2.0, 0.0]]))
    t = Teachers(main, extra)
    t.train()
    assert not t.training and not extra.training  # teachers stay in eval mode
    assert not any(p.requires_grad for p in t.parameters())
    out = t(x)
    assert extra_model.seen == (2, 3, 24, 24)  # resized for the extra teacher
    assert main.seen == (2, 3, 16, 16)
    assert torch.allclose(out, torch.tensor([[2.0, 1.0, 0.0]]).expand(2, -1))
    cls_t, tok_t = teacher_logits(t, x, distilled=True)
    assert torch.equal(cls_t[0], torch.tensor([0.0, 2.0, 0.0]))
    assert torch.equal(tok_t[0], torch.tensor([4.0, 0.0, 0.0]))
    avg, none = teacher_logits(t, x, distilled=False)
    assert torch.allclose(avg, out) and none is None
    assert teacher_logits(None, x, distilled=False) == (None, None)


def test_timm_teacher_from_a_local_file(tmp_path) -> None:
    import timm

    from uvc.errors import WeightsError
    from uvc.train.teacher import build_timm_teacher

    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    path = tmp_path / "cnn.pth"
    torch.save(cnn.state_dict(), path)
    teacher = build_timm_teacher("resnet10t", path, num_classes=4)
    x = torch.randn(2, 3, 16, 16)
    expected = cnn(F.interpolate(x, size=(teacher.img_size,) * 2, mode="bilinear"))
    assert teacher.img_size == cnn.pretrained_cfg["input_size"][-1]  # its own resolution
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    with pytest.raises(WeightsError, match="do not fit"):
        build_timm_teacher("resnet10t", path, num_classes=7)
