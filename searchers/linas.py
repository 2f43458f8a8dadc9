"""LINAS (SimQ-NAS / DyNAS-T): predictor-guided multi-objective search with an inner NSGA-II.

Each round fits one predictor per objective that needs a true evaluation (ridge or SVR, chosen by k-fold
cross-validation on the evaluated candidates, one-hot encoding), runs NSGA-II on the predictors (and on
the exact cheap objectives, e.g. LUT latency and size) for ``inner_pop * inner_gens`` model evaluations,
and sends the ``batch_size`` predicted candidates that add the most hypervolume to the evaluated front to
true evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bitnas.searchers.base import CheapFn, Objective
from bitnas.searchers.common import HistorySearcher, propose_by_model
from bitnas.searchers.predictors import make_predictor, onehot, select_by_cv
from bitnas.space import Candidate, SearchSpace


class LinasSearcher(HistorySearcher):
    """Evaluate a population, fit predictors, search them with NSGA-II, evaluate the best predicted, repeat."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, batch_size: int | None = None, inner_pop: int = 80, inner_gens: int = 30,
                 predictors: Sequence[str] = ("ridge", "svr"), init: str = "cheap-front"):
        super().__init__(space, objectives, seed, constraints, cheap, pop_size, batch_size, init)
        self.inner_pop, self.inner_gens = int(inner_pop), int(inner_gens)
        self.predictor_kinds = tuple(predictors)
        self.rounds = 0
        self.chosen_predictors: list[dict[str, str]] = []

    def _fit_models(self) -> dict[int, object]:
        X = onehot(self.space, self.X)
        F = self.F
        models, chosen = {}, {}
        for i in self.model_index:
            kind, _ = select_by_cv(X, F[:, i], self.predictor_kinds, seed=self.seed + self.rounds)
            models[i] = make_predictor(kind, self.seed).fit(X, F[:, i])
            chosen[self.objectives[i].name] = kind
        self.chosen_predictors.append(chosen)
        return models

    def model_fn(self, models: dict[int, object]):
        def fn(rows: np.ndarray) -> np.ndarray:
            out = np.zeros((len(rows), len(self.objectives)))
            if models:
                X = self.space.onehot_matrix(rows).astype(np.float64)
                for i, m in models.items():
                    out[:, i] = m.predict(X)
            if self.cheap_index:
                out[:, self.cheap_index] = self.cheap_rows_matrix(rows)
            return out
        return fn

    def ask(self) -> list[Candidate]:
        if len(self.X) < 3:
            return self.initial_population()
        self.rounds += 1
        models = self._fit_models()
        return propose_by_model(self, self.model_fn(models), self.inner_pop, self.inner_gens)
