"""Time one UVC search step against one plain distillation step (same model, batch, teacher).

Both steps include the teacher's forward. The plain step is: teacher forward, student forward,
KD loss, backward, AdamW step. The search step adds importance scores, soft masks, gates, the
resource model, the proximal shrink, the count/gate updates and the dual ascent.

    python bench/search_overhead.py                       # DeiT-Tiny shape at 32x32, batch 64
    python bench/search_overhead.py --img-size 224 --patch-size 16 --batch 16 --steps 5

With ``--search-budget B`` it instead runs a short ``run_search`` on random data (``--epochs``
epochs of ``--steps`` batches) and prints the cost the primal-dual reached and the final cost after
the projection, both as fractions of the uncompressed model's MACs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from uvc.arch.model import ViT
from uvc.arch.spec import ViTSpec
from uvc.methods.uvc.primal_dual import PrimalDual, SearchConfig
from uvc.train.dist import DistInfo
from uvc.train.distill import DistillConfig, DistillLoss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, steps: int, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``steps`` calls after ``warmup`` calls."""
    for i in range(warmup):
        fn(i)
    wall, cpu = [], []
    for i in range(steps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn(warmup + i)
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main() -> None:
    """Parse options, time both steps interleaved, print medians and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternate plain/search this many times")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--search-budget", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--z-lr", type=float, default=SearchConfig.z_lr)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = ViTSpec.uniform(
        args.depth,
        args.embed_dim,
        args.heads,
        img_size=args.img_size,
        patch_size=args.patch_size,
        num_classes=10,
    )
    if args.search_budget is not None:
        _budget_run(spec, args, device)
        return
    torch.manual_seed(0)
    student, teacher = ViT(spec).to(device), ViT(spec).to(device).eval().requires_grad_(False)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    t = torch.randint(0, 10, (args.batch,), device=device)
    loss_fn = DistillLoss(DistillConfig())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)

    def plain(_: int) -> None:
        with torch.no_grad():
            tl = teacher(x)
        loss = loss_fn(student(x), t, tl)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    cfg = SearchConfig(epochs=1, warmup_epochs=0)
    search = PrimalDual(student, cfg, device, DistInfo())
    total = 10_000

    def search_step(i: int) -> None:
        search.step(x, t, teacher, loss_fn, i, total, warmup=False)

    plain_t: list[float] = []
    search_t: list[float] = []
    plain_c: list[float] = []
    search_c: list[float] = []
    for _ in range(args.rounds):  # interleave, so load changes hit both alike
        w, c = _time(plain, args.steps, args.warmup, device)
        plain_t, plain_c = plain_t + w, plain_c + c
        w, c = _time(search_step, args.steps, args.warmup, device)
        search_t, search_c = search_t + w, search_c + c
    p, s = statistics.median(plain_t), statistics.median(search_t)
    print(
        f"spec: depth {args.depth}, embed {args.embed_dim}, heads {args.heads}, "
        f"{args.img_size}px/{args.patch_size} ({spec.num_tokens} tokens), batch {args.batch}, "
        f"device {device}, threads {torch.get_num_threads()}"
    )
    print(f"plain distillation step: median {p * 1e3:.1f} ms over {len(plain_t)} steps")
    print(f"UVC search step:         median {s * 1e3:.1f} ms over {len(search_t)} steps")
    print(f"ratio search/plain (wall): {s / p:.3f}")
    if device.type == "cpu":
        # On a shared CPU box, process CPU time is the fairer measure of the work done.
        pc, sc = statistics.median(plain_c), statistics.median(search_c)
        print(f"CPU time: plain {pc * 1e3:.1f} ms, search {sc * 1e3:.1f} ms, ratio {sc / pc:.3f}")


def _budget_run(spec: ViTSpec, args: argparse.Namespace, device: torch.device) -> None:
    from uvc.arch.cost import macs
    from uvc.methods.search import run_search

    torch.manual_seed(0)
    student, teacher = ViT(spec), ViT(spec)
    teacher.load_state_dict(student.state_dict())
    g = torch.Generator().manual_seed(0)
    size = (args.batch, 3, args.img_size, args.img_size)
    data = [
        (torch.randn(size, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
        for _ in range(args.steps)
    ]
    cfg = SearchConfig(
        budget=args.search_budget,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        lr=1e-3,
        z_lr=args.z_lr,
        log_every=max(1, args.steps),
    )
    t0 = time.perf_counter()
    res = run_search(
        student, teacher, data, None, DistillLoss(DistillConfig()), cfg, None, device=device
    )
    print(
        f"spec: depth {args.depth}, embed {args.embed_dim}, heads {args.heads}, "
        f"{spec.num_tokens} tokens; {args.epochs} epochs x {args.steps} steps, batch {args.batch}"
    )
    for r in res.history:
        if r["kind"] == "search_epoch":
            print(f"epoch {r['epoch']}: R {r['R_hard']:.4f} z {r['z']:.4f}")
    print(
        f"budget {args.search_budget}: primal-dual reached {res.cost_searched:.4f}, "
        f"final {macs(res.spec) / macs(spec):.4f} ({time.perf_counter() - t0:.0f} s)"
    )
    print(
        f"final spec blocks: {[(b.heads, b.qk_dim, b.v_dim, b.mlp_dim) for b in res.spec.blocks]}"
    )


if __name__ == "__main__":
    main()
