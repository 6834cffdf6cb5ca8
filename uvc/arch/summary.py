"""Human and machine summaries of a spec's cost (``uvc inspect``)."""

from __future__ import annotations

from typing import Any

from uvc.arch.cost import model_cost
from uvc.arch.spec import ViTSpec


def cost_summary(spec: ViTSpec) -> dict[str, Any]:
    """One JSON-ready object: totals, per-block widths/MACs/params, and the spec itself."""
    cost = model_cost(spec)
    return {
        "macs": cost.macs,
        "params": cost.params,
        "embed_macs": cost.embed_macs,
        "head_macs": cost.head_macs,
        "tokens": spec.num_tokens,
        "embed_dim": spec.embed_dim,
        "blocks": [
            {
                "index": i,
                "heads": b.heads,
                "qk_dim": b.qk_dim,
                "v_dim": b.v_dim,
                "mlp_dim": b.mlp_dim,
                "macs": c.total,
                "params": p,
                **(
                    {"tokens_in": spec.tokens_in(i), "merge_r": r}
                    if (r := spec.block_merge(i))
                    else {}
                ),
            }
            for i, (b, c, p) in enumerate(
                zip(spec.blocks, cost.blocks, cost.block_params, strict=True)
            )
        ],
        "spec": spec.to_dict(),
    }


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return str(int(n))


def cost_table(spec: ViTSpec) -> str:
    """A per-block text table (heads, qk, v, mlp, MACs, params, share of MACs) with totals."""
    s = cost_summary(spec)
    total = s["macs"]
    head = (
        f"{'block':>5} {'heads':>5} {'qk':>4} {'v':>4} {'mlp':>5} "
        f"{'MACs':>10} {'params':>10} {'share':>6}"
    )
    lines = [
        f"embed {spec.embed_dim}, {spec.num_tokens} tokens "
        f"({spec.img_size}px / patch {spec.patch_size}), {spec.num_classes} classes"
        + (", distillation token" if spec.dist_token else "")
        + (
            f"; token merging r={list(spec.merge_r)}: {spec.tokens_in(spec.depth)} tokens left"
            if spec.merge_r
            else ""
        ),
        head,
        "-" * len(head),
    ]
    for b in s["blocks"]:
        lines.append(
            f"{b['index']:>5} {b['heads']:>5} {b['qk_dim']:>4} {b['v_dim']:>4} {b['mlp_dim']:>5} "
            f"{_si(b['macs']):>10} {_si(b['params']):>10} {100 * b['macs'] / total:>5.1f}%"
        )
    lines.append("-" * len(head))
    lines.append(
        f"{'embed+head':>28} {_si(s['embed_macs'] + s['head_macs']):>10} "
        f"{'':>10} {100 * (s['embed_macs'] + s['head_macs']) / total:>5.1f}%"
    )
    lines.append(f"{'total':>28} {_si(total):>10} {_si(s['params']):>10} {100.0:>5.1f}%")
    return "\n".join(lines)
