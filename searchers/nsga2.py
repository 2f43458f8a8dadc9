"""NSGA-II (pymoo) over the ordinal encoding of the joint architecture + bitwidth space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnas.errors import InternalError
from bitnas.searchers.base import Objective, Searcher
from bitnas.space import Candidate, SearchSpace


class Nsga2Searcher(Searcher):
    """pymoo's NSGA-II driven by ask/tell; integer genes via SBX/PM with rounding repair."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0, pop_size: int = 20):
        super().__init__(space, objectives, seed)
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling

        self._problem = Problem(n_var=space.n_genes, n_obj=len(self.objectives), xl=0,
                                xu=space.upper_bounds().astype(float), vtype=int)
        self._algo = NSGA2(
            pop_size=pop_size,
            sampling=IntegerRandomSampling(),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        self._algo.setup(self._problem, termination=("n_gen", 10**9), seed=seed, verbose=False)
        self._pending = None

    def ask(self) -> list[Candidate]:
        if self._pending is not None:
            raise InternalError("NSGA-II: ask() called twice without tell()")
        self._pending = self._algo.ask()
        X = self._pending.get("X")
        return [self.space.decode(x) for x in X]

    def tell(self, candidates: Sequence[Candidate], values: np.ndarray) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        if self._pending is None:
            raise InternalError("NSGA-II: tell() without ask()")
        pop = self._pending[: len(candidates)]
        self._pending = None
        Evaluator().eval(StaticProblem(self._problem, F=np.asarray(values, dtype=float)), pop)
        self._algo.tell(infills=pop)
