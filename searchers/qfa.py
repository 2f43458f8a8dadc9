"""QFA's search (BatchQuant): NSGA-II over an accuracy predictor trained once on sampled subnets.

QFA trains its mixed-precision supernet once, then measures ``samples`` random quantized subnets, trains an
accuracy predictor on their one-hot encodings, and runs NSGA-II on the predictor and the exact complexity
(BitOps) to get a whole Pareto population at once, with no evaluation inside the evolution. Here the
first ``samples`` true evaluations are uniform random candidates (feasible under the constraints); the
predictor (``predictor``: QFA's MLP by default) is then fitted once (``refit=False``; ``True`` refits it on
every evaluation so far before each round, which LINAS does with model selection). Each later ask runs
NSGA-II (``inner_pop`` x ``inner_gens``) on the predictor and the exact cheap objectives, and sends the
``batch_size`` fresh predicted non-dominated candidates adding most hypervolume to the evaluated front to
true evaluation, so the budget after the samples verifies the predicted front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bitnas.errors import ConfigError
from bitnas.searchers.base import CheapFn, Objective
from bitnas.searchers.common import propose_by_model
from bitnas.searchers.linas import LinasSearcher
from bitnas.searchers.predictors import make_predictor, onehot
from bitnas.space import Candidate, SearchSpace


class QfaSearcher(LinasSearcher):
    """Sample, fit the accuracy predictor once, NSGA-II on it, evaluate the predicted front."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, samples: int | None = None, predictor: str = "mlp",
                 batch_size: int | None = None, inner_pop: int = 100, inner_gens: int = 50, refit: bool = False):
        super().__init__(space, objectives, seed, constraints, cheap, pop_size, batch_size, inner_pop, inner_gens,
                         (predictor,), init="random")
        self.samples = int(samples if samples is not None else pop_size)
        if self.samples < 3:
            raise ConfigError(f"samples {self.samples}: the accuracy predictor needs at least 3 measured subnets")
        make_predictor(predictor, seed)  # an unknown kind is refused now, not after the samples are paid for
        self.refit = bool(refit)
        self._models: dict[int, object] | None = None

    def _fit_models(self) -> dict[int, object]:
        if self._models is not None and not self.refit:
            return self._models
        X = onehot(self.space, self.X)
        self._models = {i: make_predictor(self.predictor_kinds[0], self.seed).fit(X, self.F[:, i])
                        for i in self.model_index}
        self.chosen_predictors.append({self.objectives[i].name: self.predictor_kinds[0] for i in self.model_index})
        return self._models

    def ask(self) -> list[Candidate]:
        if len(self.X) < self.samples and self.model_index:
            n = min(self.pop_size, self.samples - len(self.X))
            return self.sample_feasible(n, self._init_rng, set(self.seen))
        if not self.model_index:  # nothing to predict: every objective is exact
            return self.initial_population()
        self.rounds += 1
        return propose_by_model(self, self.model_fn(self._fit_models()), self.inner_pop, self.inner_gens)
