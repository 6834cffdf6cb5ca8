"""Under DDP (2 CPU processes, gloo) counts, gates and duals stay identical on every rank."""

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
        torch.manual_seed(rank)  # different initial weights: run_search must sync them from rank 0
        spec = tiny_spec()
        model, teacher = ViT(spec), ViT(spec)
        g = torch.Generator().manual_seed(100 + rank)  # every rank sees its own data shard
        data = [
            (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g))
            for _ in range(3)
        ]
        snaps: list[dict[str, torch.Tensor]] = []

        out = Path(out_dir) / "run" if rank == 0 else None  # as the pipeline does: rank 0 only

        def log(r: dict) -> None:
            if r["kind"] == "search_step":
                snaps.append({"R": torch.tensor(r["R"]), "z": torch.tensor(r["z"])})

        for epochs, resume in ((2, False), (3, True)):  # then resume: rank 0's state is broadcast
            cfg = SearchConfig(budget=0.5, epochs=epochs, warmup_epochs=1, lr=1e-3, log_every=1)
            res = run_search(
                model,
                teacher,
                data,
                data[:1],
                DistillLoss(DistillConfig()),
                cfg,
                out,
                device=torch.device("cpu"),
                dist=DistInfo(rank, WORLD, rank),
                resume=resume,
                log=log,
            )
            model = ViT(spec)  # a fresh process would start from scratch weights
        epochs_done = [r["epoch"] for r in res.history if r["kind"] == "search_epoch"]
        assert epochs_done == [0, 1, 2], epochs_done
        state = {f"model.{k}": v for k, v in res.model.state_dict().items()}
        state.update(res.state)  # counts, gate logits, duals
        for i, s in enumerate(snaps):
            state.update({f"step{i}.{k}": v for k, v in s.items()})
        state["keep"] = torch.tensor([len(k.heads) * 1000 + len(k.mlp) for k in res.keep])
        torch.save(state, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_stay_identical(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert a.keys() == b.keys() and any(k.startswith("step") for k in a)
    assert {"structure.mlp", "gates.logits", "duals.z", "duals.y"} <= set(a)
    assert float(a["duals.z"]) > 0 and not torch.equal(
        a["gates.logits"][0], torch.tensor([[-1.0, 1.0]] * 3)
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Only rank 0 writes files; the search's own checkpoint holds counts, gates and duals.
    assert (tmp_path / "run" / "search.pt").is_file()
