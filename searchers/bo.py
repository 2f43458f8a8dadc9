"""BOMP-NAS-style Bayesian optimization: GP surrogate with a Matérn kernel over the one-hot encoding.

Two acquisitions:

- ``ucb``: BOMP-NAS. One GP models the scalarized score of eq. 1 (each maximized objective divided by
  its user reference value, plus each minimized objective's reference value divided by the objective),
  and the batch maximizes the upper confidence bound ``mean + kappa * std``.
- ``hvi`` (default): one GP per objective that needs a true evaluation; cheap objectives (LUT latency,
  size) are exact. The batch is chosen greedily for the hypervolume improvement of the optimistic
  (lower-confidence-bound) objective vectors over the evaluated front, SMS-EGO's acquisition: it is an
  upper-confidence-bound analogue of expected hypervolume improvement that needs no 3-D integration,
  and it returns a front rather than one point. Candidates come from NSGA-II run on the optimistic model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from bitnas.errors import ConfigError
from bitnas.searchers.base import CheapFn, Objective
from bitnas.searchers.common import HistorySearcher, propose_by_model
from bitnas.searchers.predictors import GpPredictor, onehot
from bitnas.space import Candidate, SearchSpace


def scalarize(objectives: Sequence[Objective], raw: Mapping[str, float], references: Mapping[str, float]) -> float:
    """BOMP-NAS eq. 1: sum of value/reference for maximized and reference/value for minimized objectives."""
    score = 0.0
    for o in objectives:
        v, ref = float(raw[o.name]), float(references[o.name])
        score += v / ref if o.sense == "max" else ref / max(v, 1e-12)
    return score


def ucb(gp: GpPredictor, X: np.ndarray, kappa: float) -> np.ndarray:
    """Upper confidence bound ``mean + kappa * std`` of the GP at one-hot rows ``X`` (a score to maximize)."""
    mean, std = gp.predict_std(X)
    return mean + kappa * std


class BoSearcher(HistorySearcher):
    """Gaussian-process Bayesian optimization with UCB (scalarized) or optimistic hypervolume improvement."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, batch_size: int | None = 5, acquisition: Literal["hvi", "ucb"] = "hvi",
                 kappa: float = 1.0, references: Mapping[str, float] | None = None, inner_pop: int = 80,
                 inner_gens: int = 25, pool_size: int = 400, init: str = "cheap-front"):
        super().__init__(space, objectives, seed, constraints, cheap, pop_size, batch_size, init)
        if acquisition not in ("hvi", "ucb"):
            raise ConfigError(f"bo: unknown acquisition '{acquisition}' (hvi or ucb)")
        self.acquisition, self.kappa = acquisition, float(kappa)
        self.references = dict(references) if references else None
        if self.references is not None:
            missing = [o.name for o in self.objectives if o.name not in self.references]
            if missing:
                raise ConfigError(f"bo: reference values missing for objective(s) {missing}")
            bad = [k for k, v in self.references.items() if not v > 0]
            if bad:
                raise ConfigError(f"bo: reference values must be positive ({bad})")
        self.inner_pop, self.inner_gens, self.pool_size = int(inner_pop), int(inner_gens), int(pool_size)
        self.rounds = 0

    def _raw(self, y: np.ndarray) -> dict[str, float]:
        return {o.name: (v if o.sense == "min" else -v) for o, v in zip(self.objectives, y)}

    def ask(self) -> list[Candidate]:
        if len(self.X) < 3:
            return self.initial_population()
        self.rounds += 1
        return self._ask_hvi() if self.acquisition == "hvi" else self._ask_ucb()

    def _ask_hvi(self) -> list[Candidate]:
        X = onehot(self.space, self.X)
        F = self.F
        gps = {i: GpPredictor(seed=self.seed).fit(X, F[:, i]) for i in self.model_index}

        def optimistic(rows: np.ndarray) -> np.ndarray:
            out = np.zeros((len(rows), len(self.objectives)))
            if gps:
                Xc = self.space.onehot_matrix(rows).astype(np.float64)
                for i, gp in gps.items():
                    mean, std = gp.predict_std(Xc)
                    out[:, i] = mean - self.kappa * std
            if self.cheap_index:
                out[:, self.cheap_index] = self.cheap_rows_matrix(rows)
            return out

        return propose_by_model(self, optimistic, self.inner_pop, self.inner_gens)

    def _ask_ucb(self) -> list[Candidate]:
        raws = [self._raw(y) for y in self.Y]
        if self.references is None:  # no user values: the medians of the first population
            first = raws[: self.pop_size]
            self.references = {o.name: float(np.median([abs(r[o.name]) for r in first]) or 1.0)
                               for o in self.objectives}
        scores = np.array([scalarize(self.objectives, r, self.references) for r in raws])
        gp = GpPredictor(seed=self.seed).fit(onehot(self.space, self.X), scores)
        self.scores, self.surrogate = scores, gp  # the last round's, to inspect
        have = set(self.seen)
        order = np.argsort(-scores)
        pool: list[Candidate] = []
        for _ in range(self.pool_size * 4):
            if len(pool) >= self.pool_size // 2:
                break
            parent = self.X[order[self.rng.integers(min(10, len(order)))]]
            c = self.space.mutate(parent, self.rng, 0.1)
            if c.id not in have and self.feasible(c):
                have.add(c.id)
                pool.append(c)
        pool += self.sample_feasible(self.pool_size - len(pool), self.rng, have)
        if not pool:
            return []
        acq = ucb(gp, onehot(self.space, pool), self.kappa)
        return [pool[i] for i in np.argsort(-acq, kind="stable")[: self.batch_size]]
