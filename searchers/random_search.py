"""Random search: the baseline every other searcher must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bitnas.searchers.common import HistorySearcher
from bitnas.space import Candidate


class RandomSearcher(HistorySearcher):
    """Uniform samples of the space (feasible ones only), ``pop_size`` per ask, never one already told."""

    def ask(self) -> list[Candidate]:
        if not self.X:
            return self.initial_population()
        return self.sample_feasible(self.pop_size, self.rng, set(self.seen))

    def tell(self, candidates: Sequence[Candidate], values: np.ndarray) -> None:
        super().tell(candidates, values)
