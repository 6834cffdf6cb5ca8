"""Knowledge-distillation losses: soft (KL with temperature), hard, and DeiT's distillation token.

``(1 - alpha) * CE(student, labels) + alpha * KD(student, teacher)`` where the soft KD term is
``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))`` (the tau^2 keeps its gradient
scale independent of tau) and the hard term is ``CE(student, argmax teacher)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch.nn.functional as F
from torch import Tensor, nn

from uvc.errors import UvcError


class KDMode(str, Enum):
    """How the teacher's outputs enter the loss."""

    NONE = "none"  # labels only
    SOFT = "soft"  # KL to the teacher's softened distribution
    HARD = "hard"  # cross-entropy to the teacher's top-1


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings (UVC's official runs: soft, alpha 0.1, tau 1).

    Args:
        mode: soft, hard or none.
        alpha: weight of the distillation term, in [0, 1].
        tau: softmax temperature of the soft term (> 0).
        label_smoothing: smoothing of the label cross-entropy, in [0, 1).
    """

    mode: KDMode = KDMode.SOFT
    alpha: float = 0.1
    tau: float = 1.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", KDMode(self.mode))
        if not 0.0 <= self.alpha <= 1.0:
            raise UvcError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if self.tau <= 0:
            raise UvcError(f"distillation temperature must be > 0, got {self.tau}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UvcError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")


class DistillLoss(nn.Module):
    """Label loss plus distillation, for plain and distillation-token students.

    ``forward(student_out, targets, teacher_logits, token_teacher_logits)``:

    - ``student_out``: logits, or ``(class_logits, dist_logits)`` from a DeiT-distilled student in
      ``distilled_training`` mode. The class head learns from labels (+ the teacher), the
      distillation head from ``token_teacher_logits`` (or ``teacher_logits``); the two are averaged.
    - ``targets``: class indices (B,) or soft targets (B, C) from mixup/cutmix.
    - ``teacher_logits``: the uncompressed model's logits, or None (labels only).
    """

    def __init__(self, cfg: DistillConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def label_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy with label smoothing; accepts class indices or soft targets."""
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.label_smoothing)

    def kd_loss(self, logits: Tensor, teacher: Tensor) -> Tensor:
        """The distillation term alone (soft KL or hard CE), per the config's mode."""
        teacher = teacher.detach()
        if self.cfg.mode is KDMode.HARD:
            return F.cross_entropy(logits, teacher.argmax(dim=-1))
        tau = self.cfg.tau
        return (tau**2) * F.kl_div(
            F.log_softmax(logits / tau, dim=-1),
            F.log_softmax(teacher / tau, dim=-1),
            reduction="batchmean",
            log_target=True,
        )

    def _mix(self, logits: Tensor, targets: Tensor, teacher: Tensor | None) -> Tensor:
        base = self.label_loss(logits, targets)
        if teacher is None or self.cfg.mode is KDMode.NONE:
            return base
        a = self.cfg.alpha
        return (1 - a) * base + a * self.kd_loss(logits, teacher)

    def forward(
        self,
        student_out: Tensor | tuple[Tensor, Tensor],
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        token_teacher_logits: Tensor | None = None,
    ) -> Tensor:
        """The scalar training loss."""
        if isinstance(student_out, tuple):
            cls_logits, dist_logits = student_out
            token_teacher = (
                token_teacher_logits if token_teacher_logits is not None else teacher_logits
            )
            cls_loss = self._mix(cls_logits, targets, teacher_logits)
            if token_teacher is None or self.cfg.mode is KDMode.NONE:
                return (cls_loss + self.label_loss(dist_logits, targets)) / 2
            return (cls_loss + self.kd_loss(dist_logits, token_teacher)) / 2
        return self._mix(student_out, targets, teacher_logits)
