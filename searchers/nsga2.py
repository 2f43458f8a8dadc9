"""NSGA-II (pymoo) over the ordinal encoding of the joint architecture + bitwidth space.

On true evaluations this is QFA's search; ``bitnas.searchers.common.nsga2_on_model`` runs the same
algorithm on predictors (LINAS, BO). Constraints are pymoo inequality constraints: a candidate that
violates them is told back to the algorithm at once with its violation (from the cheap evaluator) and is
never asked for a true evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bitnas.errors import InternalError
from bitnas.searchers.base import CheapFn, Objective, Searcher
from bitnas.space import Candidate, SearchSpace

_PENALTY = 1e12  # objective value given to infeasible members; pymoo ranks them by violation first


class Nsga2Searcher(Searcher):
    """pymoo's NSGA-II driven by ask/tell; integer genes via SBX/PM with rounding repair."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0, pop_size: int = 20,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None):
        super().__init__(space, objectives, seed, constraints, cheap)
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling

        self._limits = list(self.constraints.items())
        self._problem = Problem(n_var=space.n_genes, n_obj=len(self.objectives), n_ieq_constr=len(self._limits),
                                xl=0, xu=space.upper_bounds().astype(float), vtype=int)
        self._algo = NSGA2(
            pop_size=pop_size,
            sampling=IntegerRandomSampling(),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        self._algo.setup(self._problem, termination=("n_gen", 10**9), seed=seed, verbose=False)
        self._pending = None

    def _G(self, c: Candidate) -> np.ndarray:
        v = self.cheap(c)
        return np.array([(v[k] - lim) / max(abs(lim), 1e-12) for k, lim in self._limits])

    def _tell(self, pop, F: np.ndarray, G: np.ndarray | None) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        kw = {"F": np.asarray(F, dtype=float)}
        if G is not None:
            kw["G"] = np.asarray(G, dtype=float)
        Evaluator().eval(StaticProblem(self._problem, **kw), pop)
        self._algo.tell(infills=pop)

    def ask(self) -> list[Candidate]:
        if self._pending is not None:
            raise InternalError("NSGA-II: ask() called twice without tell()")
        for _ in range(1000):
            pop = self._algo.ask()
            cands = [self.space.decode(x) for x in pop.get("X")]
            if not self._limits:
                self._pending = (pop, list(range(len(cands))), [], None)
                return cands
            G = np.array([self._G(c) for c in cands])
            ok = np.all(G <= 0, axis=1)
            good, bad = list(np.flatnonzero(ok)), list(np.flatnonzero(~ok))
            if good:
                self._pending = (pop, good, bad, G)
                return [cands[i] for i in good]
            # a whole generation over budget: tell it at once, no true evaluation is spent on it
            self._tell(pop, np.full((len(pop), len(self.objectives)), _PENALTY), G)
        raise InternalError("NSGA-II: no feasible candidate in 1000 generations; are the constraints satisfiable?")

    def tell(self, candidates: Sequence[Candidate], values: np.ndarray) -> None:
        if self._pending is None:
            raise InternalError("NSGA-II: tell() without ask()")
        pop, good, bad, G = self._pending
        self._pending = None
        n = len(candidates)
        idx = list(good[:n]) + list(bad)
        F = np.vstack([np.asarray(values, dtype=float).reshape(n, -1),
                       np.full((len(bad), len(self.objectives)), _PENALTY)])
        self._tell(pop[idx], F, None if G is None else G[idx])
