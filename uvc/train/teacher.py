"""Teachers for distillation: the uncompressed model, and optionally any timm model from a file.

An extra timm teacher (a CNN, a bigger ViT) may expect another resolution: ``ResizingTeacher``
resizes each batch for it. ``Teachers`` bundles the main teacher and the extra one; it is an
``nn.Module`` whose ``forward`` gives one set of logits (what the search stage consumes) and whose
``pair`` gives both (what a distillation-token student consumes: main -> class head, extra ->
distillation head).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uvc.arch.demo import DEMO_MODEL, demo_spec
from uvc.arch.model import ViT
from uvc.errors import WeightsError

log = logging.getLogger("uvc.teacher")  # the name logs have always shown


class ResizingTeacher(nn.Module):
    """A frozen classifier that sees the batch resized to its own input resolution.

    Args:
        model: the classifier (eval mode, gradients off).
        img_size: the side it expects; None keeps the batch as is.
    """

    def __init__(self, model: nn.Module, img_size: int | None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.img_size = img_size

    def train(self, mode: bool = True) -> ResizingTeacher:
        """A teacher stays in eval mode whatever its parent does."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``x`` (B, C, H, W), resized when the resolutions differ."""
        if self.img_size is not None and x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear")
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


class Teachers(nn.Module):
    """The main teacher (the uncompressed model) plus an optional extra timm teacher.

    Args:
        main: the uncompressed model, or None (an extra teacher alone).
        extra: another teacher, or None.
    """

    def __init__(self, main: nn.Module | None, extra: nn.Module | None = None) -> None:
        super().__init__()
        if main is None and extra is None:
            raise ValueError("Teachers needs at least one teacher")
        self.main = None if main is None else ResizingTeacher(main, None)
        self.extra = extra

    def train(self, mode: bool = True) -> Teachers:
        """Teachers are always in eval mode."""
        super().train(False)
        return self

    @torch.no_grad()
    def pair(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(class-head teacher logits, distillation-token teacher logits or None)``."""
        main = self.main(x) if self.main is not None else None
        extra = self.extra(x) if self.extra is not None else None
        if main is None:
            return extra, extra  # type: ignore[return-value]
        return main, extra

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """One set of logits: the two teachers' logits averaged when there are two."""
        main, extra = self.pair(x)
        return main if extra is None else (main + extra) / 2


def teacher_logits(
    teacher: nn.Module | None, x: Tensor, distilled: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Teacher logits for a batch, as ``DistillLoss`` wants them.

    Args:
        teacher: a ``Teachers``, any module returning logits, or None.
        x: the batch.
        distilled: whether the student has a distillation token (then the extra teacher, when
            there is one, feeds its head alone; otherwise the teachers are averaged).
    """
    if teacher is None:
        return None, None
    if isinstance(teacher, Teachers):
        main, extra = teacher.pair(x)
        if distilled:
            return main, extra
        return (main if extra is None else (main + extra) / 2), None
    with torch.no_grad():
        out = teacher(x)
    return (out[0] if isinstance(out, tuple) else out), None


def build_timm_teacher(name: str, weights: str | Path, num_classes: int) -> ResizingTeacher:
    """A frozen timm model (any architecture) with weights from a local file.

    Args:
        name: timm model name, e.g. ``resnet18`` or ``deit_small_patch16_224``.
        weights: local state-dict file (``.pth``/``.safetensors``/DeiT ``{"model": ...}``).
        num_classes: the dataset's classes; the checkpoint's classifier must match.
    """
    import timm

    from uvc.files.weights import read_state_dict

    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (RuntimeError, ValueError) as exc:
        raise WeightsError(f"unknown timm teacher model {name!r}: {exc}") from None
    state = read_state_dict(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(
            f"teacher weights {weights} do not fit timm model {name!r} with {num_classes} "
            f"classes ({first})"
        ) from None
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    log.info("extra teacher %s (%d px input) from %s", name, size, weights)
    return ResizingTeacher(model, int(size))


# --- the uncompressed model -----------------------------------------------------------------------


def load_base_model(
    target: str, weights: str | None, num_classes: int, img_size: int | None = None
) -> tuple[ViT, bool]:
    """The uncompressed model for a dataset with ``num_classes`` classes.

    Args:
        target: ``uvc-tiny``, a timm ViT/DeiT name, a spec JSON or a uvc checkpoint.
        weights: local weights, or None.
        num_classes: the dataset's classes; a different classifier is replaced by a fresh one.
        img_size: input side for a model without weights (None: the model's own).

    Returns:
        ``(model, trained)``: ``trained`` is whether its weights (classifier included) already
        fit the dataset, i.e. whether it can serve as a teacher without training.
    """
    from uvc.files.source import load_model
    from uvc.files.weights import load_weights

    if target == DEMO_MODEL:
        from uvc.files.weights import read_state_dict

        state = read_state_dict(weights) if weights is not None else None
        head = None if state is None else state.get("head.weight")
        classes = num_classes if head is None else int(head.shape[0])
        model = ViT(demo_spec(classes, img_size or 32))
        if state is not None:
            load_weights(model, state)
    else:
        model = load_model(target, weights)
    has_weights = weights is not None or Path(target).suffix == ".pt"
    spec = model.spec
    if img_size is not None and img_size != spec.img_size:
        if has_weights:
            raise WeightsError(
                f"--img-size {img_size} differs from the weights' resolution {spec.img_size}"
            )
        model = ViT(spec.replace(img_size=img_size))
    if model.spec.num_classes != num_classes:
        log.info("new %d-class classifier (the model had %d)", num_classes, spec.num_classes)
        fresh = ViT(model.spec.replace(num_classes=num_classes))
        body = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
        fresh.load_state_dict(body, strict=False)
        return fresh, False
    return model, has_weights
