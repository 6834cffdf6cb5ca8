"""The search loop: budget met, files written, masked validation, resume equivalence."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from uvc.export.materialize import materialize

from tests.helpers import tiny_spec
from uvc.arch.cost import macs
from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError
from uvc.files.checkpoint import load_checkpoint
from uvc.methods.search import SearchConfig, SearchResult, evaluate_masked, run_search
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillConfig, DistillLoss

CPU = torch.device("cpu")


def _batches(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
        for _ in range(n)
    ]


def _run(
    cfg: SearchConfig, out: Path | None, resume: bool = False, log: Any = None
) -> SearchResult:
    torch.manual_seed(0)
    spec = tiny_spec()
    model, teacher = ViT(spec), ViT(spec)
    teacher.load_state_dict(model.state_dict())
    loss = DistillLoss(DistillConfig())
    return run_search(
        model,
        teacher,
        _batches(),
        _batches(2, 1),
        loss,
        cfg,
        out,
        device=CPU,
        resume=resume,
        log=log,
    )


@pytest.mark.parametrize("budget", [0.5, 0.7])
def test_search_meets_the_budget_and_writes_its_files(budget: float, tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    # The configured rates as they are (the schedule-aware pace is tested on its own below).
    cfg = SearchConfig(
        budget=budget, epochs=2, warmup_epochs=1, lr=1e-3, log_every=1, schedule_aware=False
    )
    res = _run(cfg, tmp_path, log=records.append)
    full = macs(tiny_spec())
    assert budget * 0.99 <= macs(res.spec) / full <= budget
    assert res.cost_final == pytest.approx(macs(res.spec) / full)
    assert materialize(res.model, res.keep).spec == res.spec
    assert ViTSpec.load(tmp_path / "spec.json") == res.spec
    assert len(json.loads((tmp_path / "keep.json").read_text())) == res.spec.depth
    ck = load_checkpoint(tmp_path / "search.pt")
    assert ck.extra["epoch"] == 1 and ck.extra["step"] == 8
    kinds = {r["kind"] for r in records}
    assert kinds == {"search_step", "search_epoch", "search_final"}
    step = next(r for r in records if r["kind"] == "search_step")
    assert {"loss", "R", "z", "budget", "lr", "gumbel_tau", "z_lr"} <= set(step)
    epoch = [r for r in records if r["kind"] == "search_epoch"]
    assert all(0.0 <= r["val_acc_masked"] <= 100.0 for r in epoch)  # percent, as everywhere
    # Over budget from the start, z only grows while R > budget.
    zs = [r["z"] for r in records if r["kind"] == "search_step"]
    assert zs[-1] > 0


def test_z_schedule_takes_effect() -> None:
    records: list[dict[str, Any]] = []
    cfg = SearchConfig(
        epochs=1, warmup_epochs=0, z_lr=0.01, z_lr_end=0.1, log_every=1, schedule_aware=False
    )
    _run(cfg, None, log=records.append)
    zlr = [r["z_lr"] for r in records if r["kind"] == "search_step"]
    assert zlr[0] == pytest.approx(0.01) and zlr[-1] == pytest.approx(0.1)
    z = [r["z"] for r in records if r["kind"] == "search_step"]
    r = [r["R"] for r in records if r["kind"] == "search_step"]
    expected, zz = [], 0.0
    for lr, rr in zip(zlr, r, strict=True):
        zz = max(0.0, zz + lr * (rr - 0.5))
        expected.append(zz)
    assert z == pytest.approx(expected)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("kill_at", ["between_epochs", "mid_epoch"])
def test_resume_ends_with_the_same_architecture(kill_at: str, tmp_path: Path) -> None:
    cfg = SearchConfig(budget=0.5, epochs=3, warmup_epochs=1, lr=1e-3, log_every=1)
    straight = _run(cfg, tmp_path / "a")

    def killer(rec: dict[str, Any]) -> None:
        if kill_at == "between_epochs" and rec["kind"] == "search_epoch" and rec["epoch"] == 1:
            raise _Kill
        if kill_at == "mid_epoch" and rec["kind"] == "search_step" and rec["step"] == 10:
            raise _Kill

    with pytest.raises(_Kill):
        _run(cfg, tmp_path / "b", log=killer)
    assert load_checkpoint(tmp_path / "b" / "search.pt").extra["epoch"] == 1
    resumed = _run(cfg, tmp_path / "b", resume=True)
    assert resumed.keep == straight.keep
    assert resumed.spec == straight.spec
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    epochs = [r for r in resumed.history if r["kind"] == "search_epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]  # nothing lost, nothing repeated
    assert epochs == [r for r in straight.history if r["kind"] == "search_epoch"]


def test_masked_validation_is_the_materialized_accuracy() -> None:
    from uvc.arch.keep import random_keep

    spec = tiny_spec()
    model = ViT(spec).eval()
    keep = random_keep(spec, 0.5, 2, drop_mlp=[1])
    val = _batches(3, 5)
    acc = evaluate_masked(model, keep, val, CPU, DistInfo())
    dense = materialize(model, keep)
    hits = sum(int((dense(x).argmax(-1) == t).sum()) for x, t in val)
    assert acc == pytest.approx(100 * hits / 12)  # percent, as every accuracy


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="budget"):
        SearchConfig(budget=0.0)
    with pytest.raises(ValueError, match="lookup table"):
        SearchConfig(metric="latency")
    with pytest.raises(ValueError, match="importance"):
        SearchConfig(importance="random")
    with pytest.raises(ValueError, match="amp"):
        SearchConfig(amp="int8")
    with pytest.raises(UvcError, match="CUDA"):
        _run(SearchConfig(amp="bf16", epochs=1, warmup_epochs=0), None)


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_gradient_criteria_and_per_head_v_run(importance: str) -> None:
    cfg = SearchConfig(
        budget=0.6, epochs=1, warmup_epochs=0, importance=importance, per_head_v=True, align=2
    )
    res = _run(cfg, None)
    assert 0.6 * 0.99 <= macs(res.spec) / macs(tiny_spec()) <= 0.6
    assert materialize(res.model, res.keep).spec == res.spec


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision search needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_search_on_gpu(amp: str) -> None:
    torch.manual_seed(0)
    spec = tiny_spec()
    model, teacher = ViT(spec), ViT(spec)
    cfg = SearchConfig(budget=0.6, epochs=1, warmup_epochs=0, amp=amp)
    dev = torch.device("cuda")
    res = run_search(
        model, teacher, _batches(), None, DistillLoss(DistillConfig()), cfg, None, device=dev
    )
    assert 0.6 * 0.99 <= macs(res.spec) / macs(spec) <= 0.6
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values())


def test_latency_budget_with_a_lookup_table(tmp_path: Path) -> None:
    from tests.uvc.methods.test_resource import _lut

    spec = tiny_spec()
    lut = _lut(spec)
    lut.save(tmp_path / "lut.json")
    cfg = SearchConfig(
        budget=0.6, metric="latency", lut=str(tmp_path / "lut.json"), epochs=1, warmup_epochs=0
    )
    res = _run(cfg, None)
    frac = lut.model_ms(res.spec) / lut.model_ms(spec)
    assert 0.6 * 0.99 <= frac <= 0.6 + 1e-9
    assert res.cost_final == pytest.approx(frac)


def test_budget_hinge_stops_the_push_below_budget() -> None:
    """Under budget, a large z must not move the counts when the hinge is on (and must without)."""
    from uvc.methods.uvc.primal_dual import PrimalDual

    spec = tiny_spec()
    x, t = _batches(1)[0]
    moved = {}
    for hinge in (True, False):
        torch.manual_seed(0)
        model = ViT(spec)
        cfg = SearchConfig(budget=0.95, epochs=1, warmup_epochs=0, y_lr=0.0, budget_hinge=hinge)
        runs = []
        for z in (0.0, 50.0):
            s = PrimalDual(ViT(spec), cfg, CPU, DistInfo())
            s.model.load_state_dict(model.state_dict())
            with torch.no_grad():
                s.structure.mlp.fill_(0.5)  # R well under the 0.95 budget
            s.duals.z = torch.tensor(z, dtype=torch.float64)
            rec = s.step(x, t, None, DistillLoss(DistillConfig()), 0, 10, True)
            assert rec["R"] < 0.95
            runs.append(torch.cat([p.detach().flatten() for p in s.structure.parameters()]))
        moved[hinge] = not torch.equal(runs[0], runs[1])
    assert moved == {True: False, False: True}


@pytest.mark.parametrize("budget", [0.5, 0.62])
def test_a_short_search_reaches_the_budget_by_itself(budget: float) -> None:
    """With the schedule-aware pace the primal-dual alone ends near the budget, the final
    projection only rounds (36 pruning steps; at the configured rates R stays far above). On
    random data (no signal to pull R back up once under budget) within 5%; on the digits demo
    settings it lands within 1% (README, "Training")."""
    torch.manual_seed(0)
    spec = tiny_spec()
    model, teacher = ViT(spec), ViT(spec)
    teacher.load_state_dict(model.state_dict())
    train = _batches(12, 3)
    results = {}
    for aware in (True, False):
        cfg = SearchConfig(budget=budget, epochs=4, warmup_epochs=1, lr=1e-3, schedule_aware=aware)
        student = ViT(spec)
        student.load_state_dict(teacher.state_dict())
        res = run_search(student, teacher, train, None, DistillLoss(DistillConfig()), cfg, None,
                         device=CPU)  # fmt: skip
        results[aware] = res.cost_searched
    assert abs(results[True] / budget - 1) <= 0.05, results
    assert results[False] / budget - 1 > 0.03, results  # what the pace fixes


def test_count_steps_settle_over_the_second_half() -> None:
    """The count and gate steps keep their rate over the first half of the pruning steps, then
    shrink monotonically to ``SETTLE_FLOOR`` at the last step; the paper's constant rate when
    ``schedule_aware`` is off. The step record reports the rate the counts really took."""
    from uvc.methods.uvc.primal_dual import SETTLE_FLOOR, PrimalDual

    spec = tiny_spec()
    total = 100
    aware = PrimalDual(ViT(spec), SearchConfig(epochs=4, warmup_epochs=2), CPU, DistInfo())
    plain = PrimalDual(ViT(spec), SearchConfig(epochs=4, warmup_epochs=2, schedule_aware=False),
                       CPU, DistInfo())  # fmt: skip
    ours = [aware.settle(s, total) for s in range(total)]
    assert ours[:75] == [1.0] * 75  # 50 warmup steps, then the first half of the 50 pruning ones
    assert all(a >= b for a, b in itertools.pairwise(ours))
    assert ours[-1] == pytest.approx(SETTLE_FLOOR, abs=0.01) and ours[87] < 0.6
    assert [plain.settle(s, total) for s in range(total)] == [1.0] * total

    x, t = _batches(1)[0]
    loss = DistillLoss(DistillConfig())
    before = torch.cat([p.detach().flatten() for p in aware.structure.parameters()])
    rec = aware.step(x, t, None, loss, total - 1, total, False)
    after = torch.cat([p.detach().flatten() for p in aware.structure.parameters()])
    rate = aware.cfg.struct_lr * aware.pace(total - 1, total) * ours[-1]
    assert rec["struct_lr"] == pytest.approx(rate) and rec["struct_lr"] < 0.15 * aware.cfg.struct_lr
    # The step is norm-clipped at struct_clip, so the counts moved at most the settled rate.
    assert 0 < float((after - before).norm()) <= rec["struct_lr"] * aware.cfg.struct_clip + 1e-7


def test_landing_steps_never_cross_the_budget() -> None:
    """In the last tenth of the pruning steps a count step that would take the integer decisions
    over the budget is undone; one that lowers the cost goes. Earlier the same step crosses."""
    from uvc.methods.uvc.primal_dual import PrimalDual

    spec = tiny_spec()
    mlp = spec.blocks[0].mlp_dim

    def state(budget: float, sign: float) -> PrimalDual:
        s = PrimalDual(ViT(spec), SearchConfig(budget=budget, epochs=1, warmup_epochs=0), CPU,
                       DistInfo())  # fmt: skip
        with torch.no_grad():  # 17 units pruned, within 1e-4 of the boundary the step goes to
            s.structure.mlp[0] = 16 / mlp + 1e-4 if sign > 0 else 17 / mlp - 1e-4
        return s

    budget = state(1.0, 1.0).cost()  # the decisions sit exactly on the budget
    assert state(1.0, -1.0).cost() == budget
    total = 100
    for step, sign, crosses in ((99, 1.0, False), (95, -1.0, True), (0, 1.0, True)):
        s = state(budget, sign)
        assert s.landing(step, total) == (step >= 90)
        s.structure.mlp.grad = torch.zeros_like(s.structure.mlp)
        s.structure.mlp.grad[0] = sign  # +: prune less (cost up), -: prune more (cost down)
        before = s.structure.mlp.detach().clone()
        s._structure_step(step, total, warmup=False)
        moved = not torch.equal(before, s.structure.mlp.detach())
        if sign > 0 and not crosses:
            assert not moved and s.cost() == budget  # landing: the step over the budget is undone
        elif sign > 0:
            assert moved and s.cost() > budget  # before landing the same step crosses
        else:
            assert moved and s.cost() < budget  # a step that lowers the cost goes while landing


def test_short_gated_search_warns_to_turn_the_gates_off(caplog: pytest.LogCaptureFixture) -> None:
    """Gates learned over fewer than 3 post-warmup epochs: one warning naming --gates none."""
    from uvc.methods.uvc.primal_dual import PrimalDual

    cases = [(dict(epochs=2, warmup_epochs=0), True), (dict(epochs=5, warmup_epochs=1), False),
             (dict(epochs=1, warmup_epochs=0, gates="none"), False)]  # fmt: skip
    for kwargs, warns in cases:
        caplog.clear()
        with caplog.at_level("WARNING", logger="uvc.methods.uvc.primal_dual"):
            PrimalDual(ViT(tiny_spec()), SearchConfig(**kwargs), CPU, DistInfo())
        said = [r.getMessage() for r in caplog.records if "--gates none" in r.getMessage()]
        assert len(said) == int(warns), (kwargs, said)
