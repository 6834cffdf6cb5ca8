"""Skip gates: init, hard decisions, deterministic Gumbel noise, inactive gates."""

from __future__ import annotations

import torch

from uvc.methods.uvc.gates import ATTN, BLOCK, MLP, GateMode, Gates


def test_init_keeps_everything() -> None:
    g = Gates(3)
    assert bool(g.hard().all())
    p = g.probs()
    torch.testing.assert_close(p, torch.full((3, 3), torch.sigmoid(torch.tensor(2.0)).item()))


def test_keep_iff_keep_logit_wins() -> None:
    g = Gates(2)
    with torch.no_grad():
        g.logits[0, ATTN] = torch.tensor([0.3, 0.2])  # skip > keep
        g.logits[1, MLP] = torch.tensor([0.2, 0.2])  # tie -> not kept (strict >)
    h = g.hard()
    assert not h[0, ATTN] and not h[1, MLP]
    assert h[0, BLOCK] and h[0, MLP] and h[1, ATTN]


def test_straight_through_is_hard_forward_with_gradient() -> None:
    g = Gates(2)
    st = g.straight_through()
    assert st.tolist() == [[1.0] * 3] * 2
    st.sum().backward()
    assert g.logits.grad is not None and g.logits.grad[..., 1].gt(0).all()


def test_sample_is_a_pure_function_of_seed_and_step() -> None:
    g = Gates(4)
    a, b, c = g.sample(0.5, 0, 7), g.sample(0.5, 0, 7), g.sample(0.5, 0, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, g.sample(0.5, 1, 7))
    assert ((a > 0) & (a < 1)).all()


def test_inactive_gates_are_one() -> None:
    g = Gates(3, GateMode.BLOCK)
    with torch.no_grad():
        g.logits[:, ATTN] = torch.tensor([5.0, -5.0])
    assert g.hard()[:, ATTN].all()
    assert (g.sample(0.5, 0, 0)[:, ATTN] == 1).all()
    assert (Gates(3, GateMode.NONE).straight_through() == 1).all()
