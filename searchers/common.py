"""Shared machinery of the model-based searchers: history, cheap objectives, inner NSGA-II, batch selection."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bitnas.errors import ConfigError
from bitnas.searchers.base import CheapFn, Objective, Searcher, cheap_rows
from bitnas.searchers.pareto import hypervolume, non_dominated
from bitnas.space import Candidate, SearchSpace

# every searcher draws its first population from this stream, so for one seed they all start alike
INIT_STREAM = 7
# "random": uniform samples; "cheap-front": spread along the front of the exact cheap objectives
INIT_DESIGNS = ("random", "cheap-front")

# a model of the objectives over canonical ordinal gene rows (n x genes) -> minimization values (n x objectives)
ModelFn = Callable[[np.ndarray], np.ndarray]


class HistorySearcher(Searcher):
    """A searcher that remembers every told candidate and computes cheap objectives exactly."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, batch_size: int | None = None, init: str = "random"):
        super().__init__(space, objectives, seed, constraints, cheap)
        if init not in INIT_DESIGNS:
            raise ConfigError(f"unknown init '{init}' (known: {', '.join(INIT_DESIGNS)})")
        self.init = init
        self.pop_size = int(pop_size)
        self.batch_size = int(batch_size or max(1, pop_size // 2))
        self.rng = np.random.default_rng([seed, 1])
        self._init_rng = np.random.default_rng([seed, INIT_STREAM])
        self.X: list[Candidate] = []
        self.Y: list[np.ndarray] = []
        self.seen: set[str] = set()
        self._cheap_cache: dict[str, dict[str, float]] = {}
        self._cheap_names: list[str] | None = None

    # ----------------------------------------------------------------- history
    def tell(self, candidates: Sequence[Candidate], values: np.ndarray) -> None:
        for c, v in zip(candidates, np.asarray(values, dtype=float)):
            if c.id not in self.seen:
                self.seen.add(c.id)
                self.X.append(c)
                self.Y.append(np.asarray(v, dtype=float))

    @property
    def F(self) -> np.ndarray:
        return np.array(self.Y).reshape(len(self.Y), len(self.objectives))

    # ----------------------------------------------------------------- cheap objectives
    def cheap_values(self, c: Candidate) -> dict[str, float]:
        if self.cheap is None:
            return {}
        hit = self._cheap_cache.get(c.id)
        if hit is None:
            hit = self._cheap_cache[c.id] = dict(self.cheap(c))
        return hit

    def violation(self, candidate: Candidate) -> float:
        if not self.constraints:
            return 0.0
        v = self.cheap_values(candidate)
        return float(sum(max(0.0, v[k] - lim) / max(abs(lim), 1e-12) for k, lim in self.constraints.items()))

    @property
    def cheap_index(self) -> list[int]:
        """Indices of the objectives the cheap evaluator gives exactly."""
        if self.cheap is None:
            return []
        if self._cheap_names is None:
            names = set(self.cheap(self.space.smallest()))
            self._cheap_names = [o.name for o in self.objectives if o.name in names]
        return [i for i, o in enumerate(self.objectives) if o.name in self._cheap_names]

    @property
    def model_index(self) -> list[int]:
        """Indices of the objectives that need a predictor."""
        cheap = set(self.cheap_index)
        return [i for i in range(len(self.objectives)) if i not in cheap]

    def cheap_matrix(self, cands: Sequence[Candidate]) -> np.ndarray:
        """Minimization values of the cheap objectives (columns ``cheap_index``), scored in one batch."""
        todo = [c for c in dict.fromkeys(cands) if c.id not in self._cheap_cache]
        if todo and self.cheap is not None:
            values = cheap_rows(self.cheap, self.space, np.array([self.space.encode(c) for c in todo]))
            for r, c in enumerate(todo):
                self._cheap_cache[c.id] = {n: float(v[r]) for n, v in values.items()}
        return self.cheap_rows_matrix(None, [self.cheap_values(c) for c in cands])

    def cheap_rows_matrix(self, X: np.ndarray | None, values: list[dict[str, float]] | None = None) -> np.ndarray:
        """Minimization values of the cheap objectives of ordinal rows ``X`` (or of given value dicts)."""
        idx = self.cheap_index
        if values is None:
            got = cheap_rows(self.cheap, self.space, X) if len(X) else {}
            out = np.zeros((len(X), len(idx)))
            for j, i in enumerate(idx):
                o = self.objectives[i]
                out[:, j] = got[o.name] if o.sense == "min" else -got[o.name]
            return out
        out = np.zeros((len(values), len(idx)))
        for r, v in enumerate(values):
            for j, i in enumerate(idx):
                o = self.objectives[i]
                out[r, j] = v[o.name] if o.sense == "min" else -v[o.name]
        return out

    def violations(self, X: np.ndarray) -> np.ndarray:
        """Relative excess over each constraint (n x constraints) of ordinal rows ``X``; <= 0 is feasible."""
        limits = list(self.constraints.items())
        if not limits or not len(X):
            return np.zeros((len(X), len(limits)))
        got = cheap_rows(self.cheap, self.space, X)
        return np.column_stack([(got[k] - lim) / max(abs(lim), 1e-12) for k, lim in limits])

    # ----------------------------------------------------------------- sampling
    def sample_feasible(self, n: int, rng: np.random.Generator, exclude: set[str] | None = None,
                        tries: int = 200) -> list[Candidate]:
        """Up to ``n`` distinct feasible random candidates not in ``exclude`` (constraints checked in batches)."""
        exclude = set(exclude or ())
        out: list[Candidate] = []
        drawn = 0
        while len(out) < n and drawn < n * tries:
            chunk = [self.space.sample(rng) for _ in range(min(max(2 * (n - len(out)), 16), n * tries - drawn))]
            drawn += len(chunk)
            chunk = [c for c in chunk if c.id not in exclude]
            if self.constraints and chunk:
                ok = np.all(self.violations(np.array([self.space.encode(c) for c in chunk])) <= 0, axis=1)
                chunk = [c for c, good in zip(chunk, ok) if good]
            for c in chunk:
                if len(out) < n and c.id not in exclude:
                    exclude.add(c.id)
                    out.append(c)
        return out

    def initial_population(self) -> list[Candidate]:
        """The first ``pop_size`` candidates: uniform, or (``init="cheap-front"``) a cheap-objective design."""
        if self.init == "cheap-front" and self.cheap_index and self.model_index:
            return self.cheap_front_design(self.pop_size)
        return self.sample_feasible(self.pop_size, self._init_rng, set(self.seen))

    def cheap_front_design(self, n: int, pool_factor: int = 20) -> list[Candidate]:
        """``n`` candidates from a uniform pool of ``pool_factor * n``: half spread along the pool's front in
        the exact cheap objectives (greedy hypervolume order), half uniform for the predictors to learn from.

        Before any true evaluation only the cheap objectives (LUT latency, size) are known, and a random
        candidate is usually dominated in them by another one of the same pool; the free information decides
        where the first evaluations go, as APQ uses its LUT before evaluating anything.
        """
        pool = self.sample_feasible(n * pool_factor, self._init_rng, set(self.seen))
        C = self.cheap_matrix(pool)
        front: list[int] = []
        left = np.arange(len(pool))
        while len(front) < (n + 1) // 2 and len(left):  # peel fronts: the first, then the next, ...
            layer = left[non_dominated(C[left])]
            order = greedy_hv_select(np.zeros((0, C.shape[1])), C[layer], len(layer))
            front += [int(layer[i]) for i in order][: (n + 1) // 2 - len(front)]
            left = np.setdiff1d(left, layer)
        taken = set(front)
        rest = [i for i in range(len(pool)) if i not in taken][: n - len(front)]
        return [pool[i] for i in front + rest]

    def fill(self, chosen: list[Candidate], n: int) -> list[Candidate]:
        """Top ``chosen`` up to ``n`` with mutations of evaluated front members, then random candidates."""
        have = set(self.seen) | {c.id for c in chosen}
        front = [self.X[i] for i in np.flatnonzero(non_dominated(self.F))] if self.X else []
        for _ in range(50 * n):
            if len(chosen) >= n or not front:
                break
            c = self.space.mutate(front[self.rng.integers(len(front))], self.rng, 0.15)
            if c.id not in have and self.feasible(c):
                have.add(c.id)
                chosen.append(c)
        if len(chosen) < n:
            chosen += self.sample_feasible(n - len(chosen), self.rng, have)
        return chosen


def normalizer(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, span) that map the rows of ``F`` to [0, 1] per objective."""
    lo, hi = F.min(axis=0), F.max(axis=0)
    return lo, np.where(hi > lo, hi - lo, 1.0)


def greedy_hv_select(F_known: np.ndarray, F_pool: np.ndarray, n: int) -> list[int]:
    """Indices of up to ``n`` pool rows chosen one at a time for the largest hypervolume gain.

    Objectives are normalized by the known points' range and the reference point sits 10% beyond their
    worst values; once no pool row adds volume, the rest follow in pool order.
    """
    if len(F_pool) == 0:
        return []
    both = np.vstack([F_known, F_pool]) if len(F_known) else F_pool
    lo, span = normalizer(both if not len(F_known) else F_known)
    ref = np.full(F_pool.shape[1], 1.1)
    K = (F_known - lo) / span if len(F_known) else np.zeros((0, F_pool.shape[1]))
    P = (F_pool - lo) / span
    current = K[non_dominated(K)] if len(K) else K
    base = hypervolume(current, ref) if len(current) else 0.0
    chosen: list[int] = []
    alive = np.ones(len(P), dtype=bool)
    for _ in range(min(n, len(P))):
        best, gain = -1, 1e-12
        # a row dominated by (or equal to) the current set cannot add volume
        for i in np.flatnonzero(alive):
            p = P[i]
            if len(current) and np.any(np.all(current <= p, axis=1)):
                alive[i] = False
                continue
            g = hypervolume(np.vstack([current, p]) if len(current) else p[None], ref) - base
            if g > gain:
                best, gain = i, g
        if best < 0:
            break
        chosen.append(int(best))
        alive[best] = False
        current = np.vstack([current, P[best]]) if len(current) else P[best][None]
        current = current[non_dominated(current)]
        base += gain
    rest = [i for i in range(len(P)) if i not in set(chosen)]
    return chosen + rest[: max(0, n - len(chosen))]


def nsga2_on_model(searcher: HistorySearcher, model: ModelFn, pop_size: int, n_gen: int, seed: int,
                   start: Sequence[Candidate] = ()) -> tuple[np.ndarray, np.ndarray]:
    """NSGA-II (pymoo) on a cheap model of the objectives; returns the distinct feasible canonical gene rows it
    visited and their model values.

    ``model(X)`` gives minimization values of canonical ordinal rows; constraints of ``searcher`` enter as
    pymoo inequality constraints, scored in one batch per generation. The first population holds ``start``
    (e.g. the evaluated front) topped up at random.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.optimize import minimize

    space = searcher.space
    n_limits = len(searcher.constraints)
    visited: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    class _Model(Problem):
        def __init__(self):
            super().__init__(n_var=space.n_genes, n_obj=len(searcher.objectives), n_ieq_constr=n_limits,
                             xl=0, xu=space.upper_bounds().astype(float), vtype=int)

        def _evaluate(self, X, out, *args, **kwargs):
            rows = space.canonical(X)
            F = np.asarray(model(rows), dtype=float)
            out["F"] = F
            if n_limits:
                G = searcher.violations(rows)
                out["G"] = G
                ok = np.all(G <= 0, axis=1)
            else:
                ok = np.ones(len(rows), dtype=bool)
            for x, f, good in zip(rows, F, ok):
                if good:
                    visited.setdefault(x.tobytes(), (x, f))

    rng = np.random.default_rng([seed, 2])
    init = [space.encode(c) for c in start][:pop_size]
    while len(init) < pop_size:
        init.append(space.encode(space.sample(rng)))
    algo = NSGA2(pop_size=pop_size, sampling=np.array(init, dtype=float),
                 crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    minimize(_Model(), algo, ("n_gen", n_gen), seed=int(seed), verbose=False)
    rows = np.array([v[0] for v in visited.values()], np.int64).reshape(len(visited), space.n_genes)
    F = np.array([v[1] for v in visited.values()]).reshape(len(visited), len(searcher.objectives))
    return rows, F


def propose_by_model(searcher: HistorySearcher, model: ModelFn, inner_pop: int, inner_gens: int) -> list[Candidate]:
    """One model-based round: NSGA-II on ``model`` seeded with the evaluated front, then the fresh predicted
    non-dominated candidates that add the most hypervolume to the evaluated front, topped up by ``fill``."""
    space = searcher.space
    F = searcher.F
    front = [searcher.X[i] for i in np.flatnonzero(non_dominated(F))]
    rows, Fp = nsga2_on_model(searcher, model, inner_pop, inner_gens,
                              seed=searcher.seed * 1000 + searcher.rounds, start=front)
    seen = {space.encode(c).tobytes() for c in searcher.X}
    fresh = [i for i, x in enumerate(rows) if x.tobytes() not in seen]
    rows, Fp = rows[fresh], Fp[fresh]
    if len(rows):
        keep = non_dominated(Fp)
        rows, Fp = rows[keep], Fp[keep]
    pick = greedy_hv_select(F, Fp, searcher.batch_size)
    return searcher.fill([space.decode(rows[i]) for i in pick], searcher.batch_size)
