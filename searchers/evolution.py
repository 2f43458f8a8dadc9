"""APQ's constrained evolution on a quantization-aware accuracy predictor.

Each ask fits the predictor (APQ's MLP on the one-hot encoding by default) to the evaluated candidates
for the primary objective (the first one that needs a true evaluation, e.g. accuracy), then runs one
short evolution per budget level: top-k parents, mutation and crossover children, and every child over
budget (the user's constraints and the level's budget on the cost objective, both checked with the cheap
evaluator, e.g. the LUT) discarded before the predictor scores it. The budget levels spread over the cost
range of the evaluated candidates, so the best predicted candidate of each level lands on a different
part of the front; those go to true evaluation.

APQ's predictor transfer (``transfer``, on by default): when the primary objective is ``accuracy``, the
predictor is the MLP and the driver gives the supernet and its data (``bitnas search`` does), the MLP is
first pre-trained once on the architecture columns of ``float_samples`` random architectures with their
float-subnet accuracy (extracted from the supernet, BN recalibrated, no quantization, no training), then
each round fine-tunes a copy of it on all columns with the quantized samples evaluated so far.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bitnas.errors import ConfigError
from bitnas.searchers.base import CheapFn, Objective
from bitnas.searchers.common import HistorySearcher
from bitnas.searchers.predictors import make_predictor, onehot, onehot_columns
from bitnas.space import Candidate, SearchSpace


class EvolutionSearcher(HistorySearcher):
    """Constrained evolution (APQ) on a predictor; one budget level per candidate asked."""

    needs_supernet = True  # for the float-accuracy samples of the predictor transfer

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, batch_size: int | None = None, predictor: str = "mlp",
                 inner_pop: int = 40, inner_gens: int = 8, parent_ratio: float = 0.25,
                 mutation_ratio: float = 0.5, mutate_prob: float = 0.1, predictor_epochs: int = 100,
                 init: str = "cheap-front", transfer: bool = True, float_samples: int = 100,
                 calib_batches: int = 4, supernet: Any = None, data: Any = None, lut: Any = None, reduce_range: bool = False):
        super().__init__(space, objectives, seed, constraints, cheap, pop_size, batch_size, init)
        if len(self.objectives) < 2:
            raise ConfigError("evolution needs a primary objective and a cost objective")
        self.predictor = predictor
        make_predictor(predictor)  # fail early on an unknown kind
        self.inner_pop, self.inner_gens = int(inner_pop), int(inner_gens)
        self.parent_ratio, self.mutation_ratio, self.mutate_prob = parent_ratio, mutation_ratio, mutate_prob
        self.predictor_epochs = predictor_epochs
        self.rounds = 0
        self.primary = self.model_index[0] if self.model_index else 0  # the predicted objective
        self.transfer = bool(transfer and predictor == "mlp" and supernet is not None and data is not None
                             and self.objectives[self.primary].name == "accuracy" and float_samples > 0)
        self.supernet, self.data, self.float_samples = supernet, data, int(float_samples)
        self.calib_batches = int(calib_batches)  # train batches (of 64) recalibrating the float samples' BN
        self.pretrained = None  # the float-accuracy predictor, once pre-trained
        self.float_accuracy: dict[str, float] = {}  # candidate id -> float-subnet accuracy, of the samples
        self.float_seconds = 0.0  # spent evaluating the float samples
        self.transfers = 0  # rounds whose predictor came from the pre-trained one

    def pretrain(self):
        """The MLP pre-trained on float-subnet accuracies of ``float_samples`` random architectures (once)."""
        if self.pretrained is None:
            from bitnas.supernets.evaluate import accuracy, calibration_batches, prepare_subnet

            t0 = time.perf_counter()
            rng = np.random.default_rng([self.seed, 11])
            calib = calibration_batches(self.data, self.calib_batches, 64, self.seed)
            samples: dict[str, Candidate] = {}
            for _ in range(20 * self.float_samples):
                if len(samples) >= self.float_samples:
                    break
                c = self.space.make(self.space.sample(rng).arch_dict)  # the policy plays no part
                samples.setdefault(c.id, c)
            cands = list(samples.values())
            for c in cands:
                self.float_accuracy[c.id] = accuracy(prepare_subnet(self.supernet, c, calib), self.data)
            self.float_seconds = time.perf_counter() - t0
            y = np.array([self.float_accuracy[c.id] for c in cands])
            # the predictor learns the primary objective's minimization value: negated accuracy
            self.pretrained = make_predictor("mlp", self.seed, epochs=self.predictor_epochs).fit(
                onehot(self.space, cands), -y, columns=onehot_columns(self.space, "arch"))
        return self.pretrained

    def fit_predictor(self):
        """The primary objective's predictor fitted to the evaluated candidates: a fine-tuned copy of the
        pre-trained one (``transfer``) or one trained from scratch."""
        X, y = onehot(self.space, self.X), self.F[:, self.primary]
        if self.transfer:
            self.transfers += 1
            return copy.deepcopy(self.pretrain()).transfer(np.arange(self.space.onehot_size), X, y)
        kw = {"epochs": self.predictor_epochs} if self.predictor == "mlp" else {}
        return make_predictor(self.predictor, self.seed, **kw).fit(X, y)

    def _models(self):
        """(primary index, cost index, fitness fn, cost fn) with cost from the cheap evaluator when possible."""
        X = onehot(self.space, self.X)
        F = self.F
        primary = self.primary
        prim = self.fit_predictor()
        cheap_idx = [i for i in self.cheap_index if i != primary]
        if cheap_idx:
            cost_i = cheap_idx[0]
            col = self.cheap_index.index(cost_i)

            def cost(cands: Sequence[Candidate]) -> np.ndarray:
                return self.cheap_matrix(cands)[:, col]
        else:
            cost_i = next(i for i in range(len(self.objectives)) if i != primary)
            cm = make_predictor("ridge", self.seed).fit(X, F[:, cost_i])

            def cost(cands: Sequence[Candidate]) -> np.ndarray:
                return cm.predict(onehot(self.space, cands))

        def fitness(cands: Sequence[Candidate]) -> np.ndarray:
            return prim.predict(onehot(self.space, cands))

        return primary, cost_i, fitness, cost

    def _evolve(self, budget: float, fitness, cost, rng: np.random.Generator) -> list[tuple[float, Candidate]]:
        """One constrained evolution; returns (predicted fitness, candidate) of every distinct member seen.

        Proposals are drawn a generation at a time and checked in one batch (the user's constraints and the
        level's budget on the cost); those over budget are discarded before the predictor scores anything.
        """
        def ok(cands: list[Candidate]) -> np.ndarray:
            if not cands:
                return np.zeros(0, dtype=bool)
            X = np.array([self.space.encode(c) for c in cands])
            good = np.asarray(cost(cands), float) <= budget
            if self.constraints:
                good &= np.all(self.violations(X) <= 0, axis=1)
            return good

        def distinct_ok(cands: list[Candidate], have: set[str], n: int) -> list[Candidate]:
            cands = [c for c in dict.fromkeys(cands) if c.id not in have]
            out = [c for c, good in zip(cands, ok(cands)) if good][:n]
            have.update(c.id for c in out)
            return out

        have: set[str] = set()
        pop = distinct_ok(list(self.X), have, len(self.X))
        for _ in range(20):
            if len(pop) >= self.inner_pop:
                break
            pop += distinct_ok([self.space.sample(rng) for _ in range(self.inner_pop)], have,
                               self.inner_pop - len(pop))
        if not pop:
            return []
        scored = dict(zip((c.id for c in pop), zip(fitness(pop), pop)))
        n_parents = max(2, int(self.parent_ratio * self.inner_pop))
        n_mut = int(self.mutation_ratio * self.inner_pop)
        for _ in range(self.inner_gens):
            ranked = sorted(pop, key=lambda c: scored[c.id][0])[:n_parents]  # minimization
            want = self.inner_pop - len(ranked)
            children: list[Candidate] = []
            for _ in range(10):
                if len(children) >= want:
                    break
                proposals = []
                for i in range(want):
                    if i < n_mut:
                        proposals.append(self.space.mutate(ranked[rng.integers(len(ranked))], rng,
                                                           self.mutate_prob))
                    else:
                        a, b = rng.choice(len(ranked), 2, replace=len(ranked) < 2)
                        proposals.append(self.space.crossover(ranked[a], ranked[b], rng))
                children += distinct_ok(proposals, have, want - len(children))  # over budget: discarded
            if children:
                scored.update(zip((c.id for c in children), zip(fitness(children), children)))
            pop = ranked + children
        return sorted(scored.values(), key=lambda t: t[0])

    def ask(self) -> list[Candidate]:
        if len(self.X) < 3:
            return self.initial_population()
        self.rounds += 1
        _, cost_i, fitness, cost = self._models()
        costs = cost(self.X)
        lo, hi = float(np.min(costs)), float(np.max(costs))
        n = self.batch_size
        levels = lo + (hi - lo) * (np.arange(1, n + 1) - self.rng.random(n)) / n
        out: list[Candidate] = []
        taken = set(self.seen)
        for budget in levels:
            rng = np.random.default_rng([self.seed, self.rounds, len(out)])
            for _, c in self._evolve(float(budget), fitness, cost, rng):
                if c.id not in taken:
                    taken.add(c.id)
                    out.append(c)
                    break
        return self.fill(out, n)
