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
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return buf.getvalue()
