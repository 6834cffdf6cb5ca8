"""``architecture.png``: what survived in each block against the original widths."""

from __future__ import annotations

from pathlib import Path

from uvc.arch.spec import ViTSpec


def plot_architecture(original: ViTSpec, compressed: ViTSpec, path: str | Path) -> Path:
    """Bar charts of heads, qk and v dims per head, and MLP units per block (kept vs original).

    Args:
        original: the uncompressed spec.
        compressed: the spec after pruning (same depth).
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = (("heads", "heads"), ("qk_dim", "qk dims / head"), ("v_dim", "v dims / head"),
              ("mlp_dim", "MLP units"))  # fmt: skip
    blocks = range(original.depth)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), constrained_layout=True)
    for ax, (name, title) in zip(axes, fields, strict=True):
        before = [getattr(b, name) for b in original.blocks]
        after = [getattr(b, name) for b in compressed.blocks]
        ax.bar(blocks, before, color="#d0d7e1", label="original")
        ax.bar(blocks, after, color="#2f6db5", width=0.6, label="kept")
        for i, (a, b) in enumerate(zip(after, before, strict=True)):
            ax.text(i, a, f"{a}" if b else "", ha="center", va="bottom", fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("block")
        ax.set_xticks(list(blocks))
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle("kept structure per block (0 = removed)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
