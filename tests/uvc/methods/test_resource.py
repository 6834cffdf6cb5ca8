"""R equals uvc.arch.cost exactly at hard decisions, for every metric."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_spec
from uvc.arch.cost import LatencyTable, macs, params
from uvc.arch.keep import random_keep, spec_after
from uvc.arch.model import ViT
from uvc.errors import SpecError
from uvc.methods.common.importance import magnitude
from uvc.methods.common.resource import Metric, ResourceModel
from uvc.methods.common.structure import Structure, keep_from_hard
from uvc.methods.uvc.gates import ATTN, BLOCK, MLP, Gates


def _lut(spec) -> LatencyTable:
    """A hand-made table: attention ms = 0.01*h*(q+2v) + 0.1, MLP ms = 0.002*m + 0.05."""
    heads, qk, v, mlp = [1, 2, 4], [1, 4, 8, 16], [1, 4, 8, 16], [1, 32, 64, 128]
    ms = [[[0.01 * h * (q + 2 * w) + 0.1 for w in v] for q in qk] for h in heads]
    return LatencyTable.from_dict(
        {
            "format": "uvc-latency-lut",
            "version": 1,
            "embed_dim": spec.embed_dim,
            "tokens": spec.num_tokens,
            "fixed_ms": 0.3,
            "attn": {"heads": heads, "qk_dim": qk, "v_dim": v, "ms": ms},
            "mlp": {"mlp_dim": mlp, "ms": [0.002 * m + 0.05 for m in mlp]},
        }
    )


def _random_state(spec, seed: int, per_head_v: bool = False, align: int = 1):
    torch.manual_seed(seed)
    s, g = Structure(spec, per_head_v=per_head_v, align=align), Gates(spec.depth)
    with torch.no_grad():
        for p in s.parameters():
            p.uniform_(0, 1)
        g.logits.normal_()
    s.project_()
    return s, g


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize("seed", range(6))
def test_soft_r_equals_cost_of_the_keep_set(metric: Metric, seed: int) -> None:
    spec = tiny_spec()
    lut = _lut(spec)
    res = ResourceModel(spec, metric, lut)
    model = ViT(spec)
    s, g = _random_state(spec, seed, per_head_v=seed % 2 == 1, align=1 + seed % 3)
    scores = magnitude(model)
    soft, gst, gh = s(scores, scores), g.straight_through(), g.hard()
    r = res.total(
        [
            res.block(
                b.heads, b.qk, b.v, b.mlp, gst[i, BLOCK] * gst[i, ATTN], gst[i, BLOCK] * gst[i, MLP]
            )
            for i, b in enumerate(soft)
        ]
    )
    hard = [
        hb.__class__(
            **{
                **hb.__dict__,
                "attn_on": bool(gh[i, 0] & gh[i, 1]),
                "mlp_on": bool(gh[i, 0] & gh[i, 2]),
            }
        )
        for i, hb in enumerate(s.hard())
    ]
    new = spec_after(spec, keep_from_hard(spec, scores, hard))
    expected = {
        Metric.MACS: macs(new),
        Metric.PARAMS: params(new),
        Metric.LATENCY: lut.model_ms(new),
    }
    if metric is Metric.LATENCY:
        assert float(r.detach()) == pytest.approx(expected[metric], rel=1e-12)
    else:
        assert float(r.detach()) == expected[metric]  # exact
    r.backward()
    assert s.mlp.grad is not None and g.logits.grad is not None


@pytest.mark.parametrize("seed", range(4))
def test_hard_blocks_with_removed_parts(seed: int) -> None:
    spec = tiny_spec()
    keep = random_keep(spec, 0.5, seed, drop_attn=[seed % 3], drop_mlp=[(seed + 1) % 3])
    new = spec_after(spec, keep)
    for metric, ref in ((Metric.MACS, macs), (Metric.PARAMS, params)):
        res = ResourceModel(spec, metric)
        assert res.of_spec(new) == ref(new)
        assert res.full == ref(spec)


def test_latency_needs_a_table() -> None:
    with pytest.raises(SpecError, match="lookup table"):
        ResourceModel(tiny_spec(), Metric.LATENCY)
    other = tiny_spec(img_size=64)
    with pytest.raises(SpecError, match="tokens"):
        ResourceModel(other, Metric.LATENCY, _lut(tiny_spec()))


def test_float_fast_path_matches_the_tensor_path() -> None:
    spec = tiny_spec()
    for metric in (Metric.MACS, Metric.PARAMS):
        res = ResourceModel(spec, metric)
        for h, q, v, m in ((0, 0, 0, 5), (3, 2, 7, 0), (1, 1, 1, 1), (4, 8, 8, 64)):
            assert res.block_float(h, q, v, m) == float(res.block(h, q, v, m, 1.0, 1.0))
