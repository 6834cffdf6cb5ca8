"""The Method interface: the uniform baseline, the registry, loaders without len()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

from tests.helpers import tiny_spec
from uvc.arch.cost import macs
from uvc.arch.model import ViT
from uvc.methods import METHODS
from uvc.methods.common.importance import magnitude
from uvc.methods.common.resource import ResourceModel
from uvc.methods.search import SearchConfig, run_search
from uvc.methods.uniform import uniform_ratio, uniform_widths
from uvc.train.distill import DistillConfig, DistillLoss

CPU = torch.device("cpu")


class _Stream(IterableDataset):
    """Batches from a generator: no ``len``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n):
            yield torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)


def _search(method: str, out: Path | None, resume: bool = False, **kw: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    spec = tiny_spec()
    model, teacher = ViT(spec), ViT(spec)
    teacher.load_state_dict(model.state_dict())
    loader = torch.utils.data.DataLoader(_Stream(3, 0), batch_size=None)
    cfg = SearchConfig(method=method, budget=0.5, epochs=2, warmup_epochs=1, lr=1e-3, **kw)
    return run_search(model, teacher, loader, None, DistillLoss(DistillConfig()), cfg, out,
                      device=CPU, resume=resume)  # fmt: skip


def test_registry_and_validation() -> None:
    assert {"uvc", "uniform"} <= set(METHODS)
    with pytest.raises(ValueError, match="method must be one of"):
        SearchConfig(method="nope")


def test_uniform_keeps_the_same_ratio_everywhere_by_magnitude() -> None:
    spec = tiny_spec()
    res = ResourceModel(spec, "macs")
    rho = uniform_ratio(res, 0.5)
    widths = uniform_widths(res, rho)
    assert (res.fixed + sum(res.block_float(w.heads, w.qk, int(w.v), w.mlp) for w in widths)) / (
        res.full
    ) <= 0.5
    # The next ratio up would overshoot the budget: rho is the largest that fits.
    up = uniform_widths(res, min(1.0, rho + 1e-3))
    assert (
        up == widths
        or (res.fixed + sum(res.block_float(w.heads, w.qk, int(w.v), w.mlp) for w in up)) / res.full
        > 0.5
    )
    for b, w in zip(spec.blocks, widths, strict=True):
        assert w.heads == max(1, round(rho * b.heads)) and w.mlp == max(1, round(rho * b.mlp_dim))
        assert (w.qk, w.v) == (b.qk_dim, b.v_dim)


def test_uniform_search_runs_on_an_iterable_loader_and_resumes(tmp_path: Path) -> None:
    res = _search("uniform", tmp_path)
    assert macs(res.spec) / macs(tiny_spec()) <= 0.5
    assert res.cost_searched == res.cost_final  # no projection: decided up front
    # The kept heads are the highest-magnitude ones of the starting weights.
    torch.manual_seed(0)
    start = ViT(tiny_spec())
    scores = magnitude(start)
    for sc, k in zip(scores, res.keep, strict=True):
        top = torch.argsort(sc.heads, descending=True, stable=True)[: len(k.heads)]
        assert sorted(top.tolist()) == list(k.heads)
    again = _search("uniform", tmp_path, resume=True)  # search.pt: nothing left to do
    assert again.keep == res.keep
    assert [r for r in again.history if r["kind"] == "search_step"] == [
        r for r in res.history if r["kind"] == "search_step"
    ]


def test_uvc_search_takes_an_iterable_loader_without_validation() -> None:
    res = _search("uvc", None)
    assert 0.49 <= macs(res.spec) / macs(tiny_spec()) <= 0.5


def test_resume_with_another_method_is_refused(tmp_path: Path) -> None:
    from uvc.errors import UvcError

    _search("uniform", tmp_path)
    torch.manual_seed(0)
    spec = tiny_spec()
    model = ViT(spec)
    loader = torch.utils.data.DataLoader(_Stream(3, 0), batch_size=None)
    cfg = SearchConfig(method="uvc", budget=0.5, epochs=2, warmup_epochs=1)
    with pytest.raises(UvcError, match="'uniform' search"):
        run_search(model, None, loader, None, DistillLoss(DistillConfig()), cfg, tmp_path,
                   device=CPU, resume=True)  # fmt: skip
