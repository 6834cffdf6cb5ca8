"""Dual signs and clamps, the proximal factor, pure schedules and the final projection."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_spec
from uvc.arch.cost import macs
from uvc.arch.keep import random_keep, spec_after
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.methods.common.importance import magnitude
from uvc.methods.common.resource import ResourceModel
from uvc.methods.common.structure import Structure, keep_from_hard
from uvc.methods.uvc.dual import (
    Duals,
    ascend_groups,
    ascend_z,
    project_to_budget,
    proximal_shrink_,
    shrink_factor,
)
from uvc.train.schedules import cosine_lr, geometric, linear


def test_z_grows_over_budget_and_clamps_at_zero_under() -> None:
    z = torch.tensor(0.1, dtype=torch.float64)
    up = ascend_z(z, r=0.9, budget=0.5, lr=0.5)
    assert float(up) == pytest.approx(0.1 + 0.5 * 0.4)  # not clipped to +-0.5 of (R - budget)
    far = ascend_z(z, r=1.0, budget=0.1, lr=1.0)
    assert float(far) == pytest.approx(1.0)  # R - budget = 0.9 used as is
    down = ascend_z(z, r=0.45, budget=0.5, lr=1.0)
    assert float(down) == pytest.approx(0.05)
    assert float(ascend_z(z, r=0.1, budget=0.5, lr=1.0)) == 0.0


def test_group_duals_grow_with_pruned_norms_and_stay_nonnegative() -> None:
    d = Duals.zeros(2)
    share = torch.tensor([[0.5, 0.0, 0.2, 1.0], [0.0, 0.0, 0.0, 0.0]])
    ascend_groups(d, share, 0.1)
    torch.testing.assert_close(d.y, torch.tensor([[0.05, 0.1], [0.0, 0.0]]))
    torch.testing.assert_close(d.p, torch.tensor([[0.0, 0.02], [0.0, 0.0]]))
    assert (d.per_part() >= 0).all()


def test_proximal_shrink_scales_exactly_the_pruned_groups() -> None:
    spec = tiny_spec()
    model = ViT(spec)
    keep = random_keep(spec, 0.5, 1)
    d = Duals.zeros(spec.depth)
    d.y[:] = torch.tensor([2.0, 3.0])
    d.p[:] = torch.tensor([4.0, 5.0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = 0.01
    shares = proximal_shrink_(model, keep, d, lr)
    k0, a = keep[0], model.blocks[0].attn
    w0, w1 = before["blocks.0.attn.proj.weight"].view(-1, 4, 8), a.proj.weight.view(-1, 4, 8)
    pruned_head = next(h for h in range(4) if h not in k0.heads)
    torch.testing.assert_close(w1[:, pruned_head], w0[:, pruned_head] * shrink_factor(lr, 2.0))
    kh = k0.heads[0]
    kept_v, pruned_v = k0.v[0], next(j for j in range(8) if j not in k0.v)
    torch.testing.assert_close(w1[:, kh, kept_v], w0[:, kh, kept_v])
    torch.testing.assert_close(w1[:, kh, pruned_v], w0[:, kh, pruned_v] * shrink_factor(lr, 5.0))
    fc2 = model.blocks[2].mlp.fc2.weight
    pm = next(j for j in range(96) if j not in keep[2].mlp)
    ref = before["blocks.2.mlp.fc2.weight"]
    torch.testing.assert_close(fc2[:, pm], ref[:, pm] * shrink_factor(lr, 3.0))
    torch.testing.assert_close(fc2[:, keep[2].mlp[0]], ref[:, keep[2].mlp[0]])
    assert shrink_factor(0.01, 2.0) == pytest.approx(1 / 1.04)
    assert ((shares > 0) & (shares < 1)).all()


def test_schedules_are_pure_functions_of_the_step() -> None:
    assert cosine_lr(0, 100, 1.0) == 1.0 and cosine_lr(100, 100, 1.0, final=0.1) == pytest.approx(
        0.1
    )
    assert cosine_lr(4, 100, 1.0, warmup=10) == pytest.approx(0.5)
    assert [cosine_lr(s, 50, 0.3) for s in range(50)] == [cosine_lr(s, 50, 0.3) for s in range(50)]
    assert geometric(0, 11, 1.0, 0.01) == 1.0 and geometric(10, 11, 1.0, 0.01) == pytest.approx(
        0.01
    )
    assert geometric(5, 11, 1.0, 0.01) == pytest.approx(0.1)
    assert linear(0, 11, 0.1, 1.1) == 0.1 and linear(5, 11, 0.1, 1.1) == pytest.approx(0.6)


@pytest.mark.parametrize("budget", [0.5, 0.7])
@pytest.mark.parametrize("per_head_v", [False, True])
def test_projection_meets_the_budget_within_one_percent(budget: float, per_head_v: bool) -> None:
    for spec in (tiny_spec(), ViTSpec.uniform(4, 64, 2, img_size=32, patch_size=8, num_classes=10)):
        model = ViT(spec)
        scores = magnitude(model)
        s = Structure(spec, per_head_v=per_head_v)
        res = ResourceModel(spec)
        hard = project_to_budget(s.hard(), scores, res, budget)
        keep = keep_from_hard(spec, scores, hard)
        frac = macs(spec_after(spec, keep)) / macs(spec)
        assert budget * 0.99 <= frac <= budget


def test_projection_restores_when_far_under_budget() -> None:
    spec = tiny_spec()
    scores = magnitude(ViT(spec))
    s = Structure(spec)
    with torch.no_grad():
        for p in s.parameters():
            p.fill_(1.0)
    s.project_()  # the smallest model
    res = ResourceModel(spec)
    hard = project_to_budget(s.hard(), scores, res, 0.8)
    frac = macs(spec_after(spec, keep_from_hard(spec, scores, hard))) / macs(spec)
    assert 0.8 * 0.99 <= frac <= 0.8
