"""Plots people would rather look at than read: the Pareto front of a search."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bitnas.io import atomic_write_bytes

LABELS = {"accuracy": "top-1 accuracy, simulated quantization (%)", "latency_ms": "predicted latency (ms, LUT)",
          "energy_mj": "predicted energy (mJ, LUT)", "size_bytes": "size (KiB)", "bitops": "BitOps (G)"}
SCALE = {"accuracy": 100.0, "size_bytes": 1 / 1024}


def figure_png(fig, dpi: int = 110, **savefig: object) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png", **savefig)
    plt.close(fig)
    return buf.getvalue()


def _axis(name: str, evals) -> np.ndarray:
    return np.array([e.objectives[name] for e in evals], float) * SCALE.get(name, 1.0)


def plot_front(evals, front_ids: set[str], path: Path, objectives: Sequence, title: str) -> None:
    """``front_png`` written atomically to ``path``."""
    atomic_write_bytes(path, front_png(evals, front_ids, objectives, title))


def front_png(evals, front_ids: set[str], objectives: Sequence, title: str) -> bytes:
    """The evaluated candidates in the first two objectives (accuracy up when it is one), coloured by the
    third, the front highlighted, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [o.name for o in objectives]
    y_name = "accuracy" if "accuracy" in names else names[0]
    rest = [n for n in names if n != y_name]
    x_name = rest[0] if rest else y_name
    c_name = rest[1] if len(rest) > 1 else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if evals:
        x, y = _axis(x_name, evals), _axis(y_name, evals)
        c = _axis(c_name, evals) if c_name else None
        on = np.array([e.candidate.id in front_ids for e in evals])
        colour = {} if c is None else {"cmap": "viridis"}
        sc = ax.scatter(x[~on], y[~on], c=None if c is None else c[~on], s=14, alpha=0.5, label="evaluated",
                        **colour)
        ax.scatter(x[on], y[on], c=None if c is None else c[on], s=60, edgecolors="red", linewidths=1.2,
                   label="Pareto front", **colour)
        if c is not None and (~on).any():
            fig.colorbar(sc, ax=ax, label=LABELS.get(c_name, c_name))
        ax.legend(loc="lower right")
    ax.set_xlabel(LABELS.get(x_name, x_name))
    ax.set_ylabel(LABELS.get(y_name, y_name))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def plot_front_bits(front, supernet, path: Path, title: str) -> None:
    """``front_bits_png`` written atomically to ``path``."""
    atomic_write_bytes(path, front_bits_png(front, supernet, title))


def front_bits_png(front, supernet, title: str) -> bytes:
    """Per-layer weight and activation bits of each front member (rows, in front order) over the layers of
    the largest architecture (columns, forward order; a layer the member's architecture skips is blank), as
    two heatmaps, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    layers = [s.name for s in supernet.layers(supernet.space.largest()) if s.name in
              {g.name for g in supernet.space.policy_genes}]
    widths = sorted({b for g in supernet.space.policy_genes for o in g.options for b in o})
    grids = np.full((2, max(len(front), 1), len(layers)), np.nan)
    for r, e in enumerate(front):
        active = {s.name: s.bits for s in supernet.layers(e.candidate)}
        for c, name in enumerate(layers):
            if name in active:
                grids[0, r, c], grids[1, r, c] = active[name]
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0.1, 0.95, len(widths))))
    cmap = cmap.with_extremes(bad="white")
    edges = [widths[0] - 0.5] + [(a + b) / 2 for a, b in zip(widths, widths[1:])] + [widths[-1] + 0.5]
    norm = BoundaryNorm(edges, cmap.N)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.32 * len(layers) * 2 + 2), 1.2 + 0.3 * max(len(front), 1)),
                             sharey=True)
    for ax, grid, what in zip(axes, grids, ("weight bits", "activation bits")):
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(what, fontsize=9)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=90, fontsize=6)
    axes[0].set_yticks(range(len(front)))
    axes[0].set_yticklabels([e.candidate.id[:8] for e in front], fontsize=6)
    axes[0].set_ylabel("front member")
    cb = fig.colorbar(im, ax=list(axes), ticks=widths, fraction=0.03)
    cb.set_label("bits (32 = float)")
    fig.suptitle(title, fontsize=9)
    return figure_png(fig, bbox_inches="tight")
