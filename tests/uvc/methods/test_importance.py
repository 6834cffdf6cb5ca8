"""Importance criteria pick the groups they should."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_spec
from uvc.arch.model import ViT
from uvc.errors import UvcError
from uvc.methods.common.importance import Criterion, GroupImportance, magnitude


def _model() -> ViT:
    return ViT(tiny_spec())


def test_magnitude_finds_the_small_groups() -> None:
    model = _model()
    a = model.blocks[0].attn  # 4 heads, qk 8, v 8
    with torch.no_grad():
        a.proj.weight[:, 2 * 8 : 3 * 8] *= 1e-3  # head 2's proj columns
        a.proj.weight[:, 5::8] *= 1e-3  # value dim 5 of every head
        h, dq = 4, 8
        a.qkv.weight[[j * dq + 6 for j in range(h)]] *= 1e-3  # q rows of qk dim 6
        a.qkv.weight[[h * dq + j * dq + 6 for j in range(h)]] *= 1e-3  # k rows of qk dim 6
        model.blocks[1].mlp.fc2.weight[:, 17] *= 1e-3
    s = magnitude(model)
    assert int(s[0].heads.argmin()) == 2
    assert int(s[0].v_aligned.argmin()) == 5
    assert int(s[0].qk_aligned.argmin()) == 6
    assert int(s[1].mlp.argmin()) == 17
    expected = model.blocks[1].mlp.fc2.weight.detach().square().sum(0)
    torch.testing.assert_close(s[1].mlp, expected)


def test_taylor_and_fisher_follow_gradients() -> None:
    model = _model()
    fc2 = model.blocks[0].mlp.fc2
    with torch.no_grad():
        fc2.weight.fill_(1.0)
    g = torch.ones_like(fc2.weight)
    g[:, 3] = 0.0  # unit 3: no effect on the loss -> lowest Taylor and Fisher
    g[: g.shape[0] // 2, 7] = 5.0  # unit 7: large but cancelling contributions
    g[g.shape[0] // 2 :, 7] = -5.0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    fc2.weight.grad = g
    taylor, fisher = GroupImportance("taylor"), GroupImportance("fisher")
    taylor.observe(model)
    fisher.observe(model)
    t, f = taylor(model)[0].mlp, fisher(model)[0].mlp
    assert float(t[3]) == 0.0 and float(t[7]) == t.max()  # |w g| sums do not cancel
    assert float(f[3]) == 0.0 and float(f[7]) == 0.0  # (sum w g)^2 does
    assert float(f[0]) == pytest.approx(fc2.weight.shape[0] ** 2)


def test_fisher_aligned_scores_square_the_group_sum() -> None:
    model = _model()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    imp = GroupImportance(Criterion.FISHER)
    imp.observe(model)
    s = imp(model)[0]
    a = model.blocks[0].attn
    wg = (a.proj.weight * a.proj.weight.grad).detach().sum(0).reshape(4, 8)
    torch.testing.assert_close(s.v_aligned, wg.sum(0).square())
    torch.testing.assert_close(s.heads, wg.sum(1).square())


def test_gradient_criteria_need_gradients_and_start_deterministic() -> None:
    model = _model()
    imp = GroupImportance("taylor")
    assert all(float(s.mlp.abs().sum()) == 0.0 for s in imp(model))  # zeros before observe
    with pytest.raises(UvcError, match="gradients"):
        imp.observe(model)
    with pytest.raises(UvcError, match="unknown importance"):
        GroupImportance("random")


def test_importance_state_round_trips() -> None:
    model = _model()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    imp = GroupImportance("taylor")
    imp.observe(model)
    other = GroupImportance("taylor")
    other.load_state_dict(imp.state_dict())
    torch.testing.assert_close(other(model)[1].mlp, imp(model)[1].mlp)
