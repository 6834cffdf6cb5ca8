"""How close the primal-dual alone gets to the budget on a short search (README, "Training").

Trains the demo teacher on digits once (cached in ``--cache``), then runs the UVC search with the
given budget and epochs and prints R before and after the final projection, per epoch too::

    python -m uvc.bench.short_search --budget 0.62 --epochs 3 --warmup 1 --batch 64
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from uvc.arch.demo import demo_spec
from uvc.arch.model import ViT
from uvc.methods.search import SearchConfig, run_search
from uvc.train.data import DataConfig, build_data
from uvc.train.distill import DistillConfig, DistillLoss
from uvc.train.finetune import FinetuneConfig, evaluate, finetune


def main() -> None:
    """Parse the flags, train or load the teacher, search, print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=0.62)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-schedule-aware", action="store_true")
    p.add_argument("--cache", type=Path, default=Path("runs/short_search_teacher.pt"))
    args = p.parse_args()
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    data = build_data(DataConfig("digits", 32, args.batch, seed=0))
    torch.manual_seed(0)
    teacher = ViT(demo_spec(10, 32))
    if args.cache.is_file():
        teacher.load_state_dict(torch.load(args.cache, weights_only=True))
    else:
        labels_only = DistillLoss(DistillConfig("none", 0.0, 1.0, 0.1))
        cfg = FinetuneConfig(epochs=25, lr=2e-3, progress=False)
        finetune(teacher, None, data.train, data.val, labels_only, cfg, None, device=dev)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), args.cache)
    print(f"teacher top-1 {evaluate(teacher, data.val, dev):.2f}%")
    cfg = SearchConfig(
        budget=args.budget, epochs=args.epochs, warmup_epochs=args.warmup, lr=2e-3,
        progress=False, schedule_aware=not args.no_schedule_aware,
    )  # fmt: skip
    t0 = time.time()
    res = run_search(copy.deepcopy(teacher), copy.deepcopy(teacher).eval(), data.train, data.val,
                     DistillLoss(DistillConfig()), cfg, None, device=dev)  # fmt: skip
    for r in res.history:
        if r["kind"] == "search_epoch":
            print(
                f"epoch {r['epoch']}: R {r['R_hard']:.4f}, masked top-1 {r['val_acc_masked']:.2f}%"
            )
    print(
        f"budget {args.budget}: R {res.cost_searched:.4f} before the projection, "
        f"{res.cost_final:.4f} after ({time.time() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
