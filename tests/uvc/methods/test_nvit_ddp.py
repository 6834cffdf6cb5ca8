"""Under DDP (2 CPU processes, gloo) every NViT pruning decision is the same on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from tests.helpers import tiny_spec
    from uvc.arch.model import ViT
    from uvc.methods.search import SearchConfig, run_search
    from uvc.train.dist import DistInfo
    from uvc.train.distill import DistillConfig, DistillLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(rank)  # different initial weights: run_search syncs them from rank 0
        spec = tiny_spec()
        model, teacher = ViT(spec), ViT(spec)
        g = torch.Generator().manual_seed(100 + rank)  # every rank sees its own data shard
        data = [
            (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(4)
        ]
        cfg = SearchConfig(method="nvit", budget=0.5, epochs=3, warmup_epochs=1, lr=1e-3,
                           nvit_interval=1, log_every=1, progress=False)  # fmt: skip
        res = run_search(model, teacher, data, None, DistillLoss(DistillConfig()), cfg,
                         Path(out_dir) / "run" if rank == 0 else None,
                         device=torch.device("cpu"), dist=DistInfo(rank, WORLD, rank))  # fmt: skip
        steps = [r for r in res.history if r["kind"] == "search_step"]
        out = {f"model.{k}": v for k, v in res.model.state_dict().items()}
        out["R"] = torch.tensor([r["R"] for r in steps], dtype=torch.float64)
        out["pruned"] = torch.tensor([len(r.get("pruned", {})) for r in steps])
        out["keep"] = res.keep.to_json()
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_take_identical_pruning_decisions(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert a.keys() == b.keys()
    assert int((a["pruned"] > 0).sum()) >= 2  # several pruning steps happened
    assert a["keep"] == b["keep"] and "embed" in a["keep"]
    for k in a:
        if k != "keep":
            assert torch.equal(a[k], b[k]), k
    assert float(a["R"][-1]) <= 0.5
