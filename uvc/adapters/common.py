"""What every adapter shares: the conversion result, the parity measurement, key helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import SpecError, WeightsError

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-5
KINDS = ("timm", "torchvision", "hf", "torch-encoder")


@dataclass
class Conversion:
    """A converted model and how closely it matches the original.

    Args:
        model: the uvc ``ViT`` (eval mode), weights loaded.
        kind: the adapter used (``timm``, ``torchvision``, ``hf``, ``torch-encoder``).
        max_abs_diff: largest |logit difference| against the original on random images
            (None when no original module was available to compare with).
        notes: what the adapter decided (e.g. layout keys it recognised).
    """

    model: ViT
    kind: str
    max_abs_diff: float | None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ViTSpec:
        """The converted model's spec."""
        return self.model.spec


def refuse(what: str, source: str) -> SpecError:
    """The error for a feature uvc's ViT cannot reproduce exactly (named, never silently wrong)."""
    return SpecError(f"{source}: {what} is not supported by uvc's ViT; refusing to convert")


def build(spec: ViTSpec, state: dict[str, Tensor]) -> ViT:
    """A ``ViT`` of ``spec`` with ``state`` loaded strictly (every key named on mismatch)."""
    from uvc.files.weights import load_weights

    model = ViT(spec)
    load_weights(model, state)
    return model.eval()


def measure_parity(
    original: Callable[[Tensor], Tensor],
    ours: ViT,
    *,
    batch: int = 2,
    seed: int = 0,
) -> float:
    """Max |original(x) - ours(x)| over a random batch of images at the model's input size."""
    spec = ours.spec
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=g)
    ours.eval()
    with torch.no_grad():
        want, got = original(x), ours(x)
    if isinstance(want, (tuple, list)):
        raise WeightsError("the original model returned a tuple; put it in eval mode")
    if want.shape != got.shape:
        raise WeightsError(
            f"output shapes differ: original {tuple(want.shape)}, uvc {tuple(got.shape)}"
        )
    if not want.abs().max() > 0:
        # torchvision initialises its head to zeros: such a comparison proves nothing.
        log.warning("the original's outputs are all zero: parity on them says nothing")
    return (want.float() - got.float()).abs().max().item()


def check_parity(diff: float, atol: float, source: str) -> None:
    """Raise when a conversion is not exact within ``atol`` (silent mismatches are the worst)."""
    if not diff <= atol:  # also catches NaN
        raise WeightsError(
            f"{source}: the converted model differs from the original by max |diff| {diff:.3g} "
            f"(> {atol:g}); the description (heads, norm placement, activation, layout) does not "
            "match the model"
        )
    log.info("%s: parity max |diff| %.3g", source, diff)


def subtree(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


def take(state: dict[str, Tensor], key: str, source: str) -> Tensor:
    """``state[key]`` or a ``WeightsError`` naming the missing key."""
    if key not in state:
        raise WeightsError(f"{source}: missing key {key!r}")
    return state[key]


def square_side(n: int, what: str) -> int:
    """The side of a square grid of ``n`` cells."""
    side = round(n**0.5)
    if side * side != n:
        raise SpecError(f"{what}: {n} patches is not a square grid")
    return side


def eval_module(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode (dropout off) and return it."""
    return module.eval()
