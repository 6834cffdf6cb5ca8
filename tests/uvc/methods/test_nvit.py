"""NViT (``--method nvit``): saliency, global chunk ranking, the budget, embedding width, resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from uvc.export.materialize import materialize

from tests.helpers import fvcore_macs, tiny_spec
from uvc.arch.cost import model_cost
from uvc.arch.keep import KeepSet, masked_dense_gap, masked_keep, random_keep, spec_after
from uvc.arch.model import ViT
from uvc.arch.spec import BlockSpec, ViTSpec
from uvc.arch.structmap import Kind
from uvc.files.checkpoint import load_checkpoint
from uvc.methods.nvit.method import NViT, chunk_sizes, rank_chunks
from uvc.methods.nvit.saliency import Saliency, unit_sums
from uvc.methods.search import SearchConfig, run_search
from uvc.train.distill import DistillConfig, DistillLoss

CPU = torch.device("cpu")


def _data(n: int, seed: int = 0, img: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, img, img, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(n)]  # fmt: skip


def _brute_force(model: ViT) -> dict[str, torch.Tensor]:
    """sum(w * grad) per unit, by slicing every tensor by hand (no structural map)."""
    p = {n: (w.detach().double() * w.grad.double()) for n, w in model.named_parameters()}
    spec, out = model.spec, {}
    for i, b in enumerate(spec.blocks):
        h, dq, dv, pre = b.heads, b.qk_dim, b.v_dim, f"blocks.{i}."
        qkv = p[pre + "attn.qkv.weight"].sum(1) + p[pre + "attn.qkv.bias"]  # per row
        proj = p[pre + "attn.proj.weight"].sum(0)  # per input column
        q, k, v = qkv[: h * dq], qkv[h * dq : 2 * h * dq], qkv[2 * h * dq :]
        out[f"{i}.head"] = torch.stack([
            q[j * dq : (j + 1) * dq].sum() + k[j * dq : (j + 1) * dq].sum()
            + v[j * dv : (j + 1) * dv].sum() + proj[j * dv : (j + 1) * dv].sum()
            for j in range(h)
        ])  # fmt: skip
        out[f"{i}.qk"] = q.view(h, dq).sum(0) + k.view(h, dq).sum(0)
        out[f"{i}.v"] = v.view(h, dv).sum(0) + proj.view(h, dv).sum(0)
        fc1 = p[pre + "mlp.fc1.weight"].sum(1) + p[pre + "mlp.fc1.bias"]
        out[f"{i}.mlp"] = fc1 + p[pre + "mlp.fc2.weight"].sum(0)
    d = spec.embed_dim
    emb = p["patch_embed.proj.weight"].sum((1, 2, 3)) + p["patch_embed.proj.bias"]
    emb = emb + p["cls_token"].reshape(-1, d).sum(0) + p["pos_embed"].reshape(-1, d).sum(0)
    for i in range(spec.depth):
        pre = f"blocks.{i}."
        for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                  "attn.proj.bias", "mlp.fc2.bias"):  # fmt: skip
            emb = emb + p[pre + n]
        emb = emb + p[pre + "attn.qkv.weight"].sum(0) + p[pre + "mlp.fc1.weight"].sum(0)
        emb = emb + p[pre + "attn.proj.weight"].sum(1) + p[pre + "mlp.fc2.weight"].sum(1)
    out["embed"] = emb + p["norm.weight"] + p["norm.bias"] + p["head.weight"].sum(0)
    return out


def test_saliency_equals_a_brute_force_per_group_computation() -> None:
    torch.manual_seed(0)
    spec = tiny_spec()
    model = ViT(spec)
    sal = Saliency(spec)
    want: dict[str, torch.Tensor] = {}
    for x, t in _data(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), t).backward()
        got, ref = unit_sums(model), _brute_force(model)
        assert got.keys() == ref.keys()
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-12)
            # Embedding channels span every block: their sum is divided by the depth first.
            div = spec.depth if key == "embed" else 1
            want[key] = want.get(key, 0) + (ref[key] / div).square() / 2
        sal.observe(model)
    for key, s in sal.scores().items():
        torch.testing.assert_close(s, want[key], rtol=1e-9, atol=1e-15)


def test_global_ranking_removes_exactly_the_lowest_chunks() -> None:
    torch.manual_seed(1)
    spec = tiny_spec()
    cfg = SearchConfig(method="nvit", budget=0.2, nvit_lambda=0.0, nvit_chunk=(2, 1, 2, 2, 4))
    nv = NViT(ViT(spec), cfg, CPU, _single())
    for key, live in nv.alive.items():  # a made-up saliency, one observed batch
        nv.saliency.total[key] = torch.rand(len(live), dtype=torch.float64)
    nv.saliency.batches = 1
    scores = nv.saliency.scores()
    ranked = rank_chunks(nv.alive, scores, nv.sizes, nv.mins, nv._savings(), 0.0)
    # Every group is cut from its lowest units, and all chunks of all groups sorted by sum.
    sums = [c.saliency for c in ranked]
    assert sums == sorted(sums) and len({c.key for c in ranked}) == len(nv.alive)
    for c in ranked:
        assert len(c.units) == nv.sizes[c.key]
        assert c.saliency == pytest.approx(float(scores[c.key][list(c.units)].sum()))
    first = {c.key: c for c in reversed(ranked)}  # the lowest chunk of each group
    for key, c in first.items():
        others = set(range(len(nv.alive[key]))) - set(c.units)
        assert max(scores[key][list(c.units)]) <= min(scores[key][list(others)])
    alive, _, removed = nv._decide(0.0, 5)
    want: dict[str, set[int]] = {}
    for c in ranked[:5]:
        want.setdefault(c.key, set()).update(c.units)
    for key, flags in alive.items():
        assert {j for j, f in enumerate(flags) if not f} == want.get(key, set()), key
    assert removed == {k: len(v) for k, v in want.items()}
    # lambda > 0 moves the chunks that save more cost up the ranking.
    lam = rank_chunks(nv.alive, scores, nv.sizes, nv.mins, nv._savings(), 5.0)
    assert [c.score for c in lam] == sorted(c.score for c in lam)
    big = max(lam, key=lambda c: c.saving)
    assert lam.index(big) <= ranked.index(next(c for c in ranked if c.units == big.units
                                               and c.key == big.key))  # fmt: skip


def _single():  # type: ignore[no-untyped-def]
    from uvc.train.dist import DistInfo

    return DistInfo()


def _search(out: Path | None, resume: bool = False, hang_at: int | None = None, **kw: object):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    spec = kw.pop("spec", None) or tiny_spec()
    model, teacher = ViT(spec), ViT(spec)  # type: ignore[arg-type]
    teacher.load_state_dict(model.state_dict())
    settings = {"method": "nvit", "budget": 0.5, "epochs": 3, "warmup_epochs": 1, "lr": 1e-3,
                "nvit_interval": 2, "progress": False, **kw}  # fmt: skip
    cfg = SearchConfig(**settings)  # type: ignore[arg-type]

    def log(rec: dict) -> None:
        if hang_at is not None and rec.get("kind") == "search_step" and rec["step"] >= hang_at:
            (out / "hanging").touch()  # type: ignore[operator]
            time.sleep(120)  # mid-epoch, waiting for the test's kill -9

    return run_search(model, teacher, _data(6), None, DistillLoss(DistillConfig()), cfg, out,
                      device=CPU, resume=resume, log=log)  # fmt: skip


@pytest.mark.parametrize(("metric", "budget"), [("macs", 0.5), ("params", 0.6)])
def test_the_budget_is_met_within_one_percent(metric: str, budget: float) -> None:
    res = _search(None, metric=metric, budget=budget, log_every=1)
    cost = model_cost(res.spec)
    full = model_cost(tiny_spec())
    ratio = getattr(cost, metric) / getattr(full, metric)
    assert budget * 0.99 <= ratio <= budget
    assert res.cost_final == pytest.approx(ratio, abs=1e-12)  # R is the cost model's number
    assert res.spec.embed_dim < tiny_spec().embed_dim  # embedding width was pruned
    steps = [r for r in res.history if r["kind"] == "search_step"]
    assert any("pruned" in r for r in steps)
    # Head alignment: every block is a standard attention (one qk and one v width per block).
    for b in res.spec.blocks:
        assert b.heads >= 1 and b.qk_dim >= 1 and b.v_dim >= 1


def test_kill_9_mid_pruning_and_resume_give_the_same_architecture(tmp_path: Path) -> None:
    killed = tmp_path / "b"
    killed.mkdir()
    code = ("from pathlib import Path; from tests.uvc.methods.test_nvit import _search; "
            f"_search(Path({str(killed)!r}), hang_at=13, log_every=1)")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process: bit-identical arithmetic
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env)
    straight = _search(tmp_path / "a", log_every=1)  # meanwhile, the uninterrupted run
    deadline = time.time() + 120
    while not (killed / "hanging").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # in epoch 2 of 0..2
    assert proc.wait() == -signal.SIGKILL and (killed / "hanging").exists()
    extra = load_checkpoint(killed / "search.pt").extra
    assert extra["events"] and not extra["done"]  # the checkpoint is mid-pruning
    resumed = _search(killed, resume=True, log_every=1)
    assert resumed.keep == straight.keep and resumed.spec == straight.spec
    assert (tmp_path / "a" / "keep.json").read_text() == (tmp_path / "b" / "keep.json").read_text()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embedding_keep_set_materializes_to_the_cost_model() -> None:
    torch.manual_seed(2)
    spec = ViTSpec(img_size=16, patch_size=4, embed_dim=24, num_classes=5,
                   blocks=(BlockSpec(3, 8, 8, 40), BlockSpec(2, 6, 10, 30)))  # fmt: skip
    model = ViT(spec).eval()
    keep = KeepSet(random_keep(spec, 0.6, 3), sorted(random.Random(1).sample(range(24), 14)))
    dense = materialize(model, keep).eval()
    cost = model_cost(spec_after(spec, keep))
    assert dense.spec == spec_after(spec, keep) and dense.spec.embed_dim == 14
    assert sum(p.numel() for p in dense.parameters()) == cost.params
    assert fvcore_macs(dense.set_fused_attn(False), torch.randn(1, 3, 16, 16)) == cost.macs
    # The masked forward normalises over the kept channels: it computes the dense model.
    x = torch.randn(3, 3, 16, 16)
    gap = masked_dense_gap(model, dense, keep, [x])
    assert gap["max_logit_diff"] < 1e-5 and gap["top1_agreement"] == 100.0
    with torch.no_grad(), masked_keep(model, keep):
        assert model.embed_mask is not None
    assert model.embed_mask is None and model.blocks[0].embed_mask is None  # restored


def test_default_chunks_scale_nvits_deit_b_chunks() -> None:
    deit_b = ViTSpec.uniform(12, 768, 12, img_size=224, patch_size=16)
    want = {Kind.EMBED: 16, Kind.HEAD: 2, Kind.QK: 8, Kind.V: 8, Kind.MLP: 16}
    assert chunk_sizes(deit_b, None, 1) == want
    tiny = chunk_sizes(ViTSpec.uniform(4, 64, 4), None, 8)
    assert all(v % 8 == 0 for k, v in tiny.items() if k is not Kind.HEAD)
    with pytest.raises(ValueError, match="multiples of align"):
        SearchConfig(method="nvit", align=8, nvit_chunk=(16, 2, 8, 4, 16))
    with pytest.raises(ValueError, match="nvit_end"):
        SearchConfig(method="nvit", nvit_end=0.0)


def test_train_config_passes_nvit_settings_and_refuses_them_elsewhere() -> None:
    from uvc.api import search_config
    from uvc.settings import TrainConfig

    cfg = TrainConfig(method="nvit", nvit_lambda=0.0, nvit_interval=3)
    sc = search_config(cfg)
    assert (sc.method, sc.nvit_lambda, sc.nvit_interval) == ("nvit", 0.0, 3)
    assert search_config(TrainConfig(method="nvit")).nvit_lambda == SearchConfig().nvit_lambda
    with pytest.raises(ValueError, match="only apply to --method nvit"):
        TrainConfig(method="uvc", nvit_lambda=0.5)
    with pytest.raises(ValueError, match="nvit_interval must be >= 1"):
        TrainConfig(method="nvit", nvit_interval=0)
