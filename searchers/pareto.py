"""Pareto front, knee point and hypervolume for minimization problems."""

from __future__ import annotations

import numpy as np


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``F`` (minimization) that no other row dominates."""
    F = np.asarray(F, dtype=float)
    n = len(F)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominates_i = np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1)
        if dominates_i.any():
            mask[i] = False
    return mask


def knee_point(F: np.ndarray) -> int:
    """Index of the front point closest to the ideal point after normalizing each objective to [0, 1]."""
    F = np.asarray(F, dtype=float)
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = (F - lo) / span
    return int(np.argmin(np.linalg.norm(norm, axis=1)))


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=float)
    inside = np.all(F < ref, axis=1)
    if not inside.any():
        return 0.0
    return float(HV(ref_point=np.asarray(ref, dtype=float))(F[inside]))
