"""Searcher interface, the append-only study store, and the driver that runs any searcher for a budget.

A study keeps every true evaluation keyed by candidate id, written as each one finishes (SQLite), so a
killed search resumes where it stopped: searchers are deterministic for a seed, so the rerun asks the same
candidates again and the study answers them without paying for a second evaluation.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.api import Objective
from bitnas.errors import UserError
from bitnas.io import atomic_write_json
from bitnas.space import Candidate, SearchSpace


def to_minimization(objectives: Sequence[Objective], values: dict[str, float]) -> np.ndarray:
    return np.array([values[o.name] if o.sense == "min" else -values[o.name] for o in objectives], dtype=float)


CheapFn = Callable[[Candidate], dict[str, float]]


class Searcher(ABC):
    """Ask/tell search strategy over one ``SearchSpace``; objectives arrive as minimization vectors.

    ``cheap`` computes the objectives that need no true evaluation (LUT latency, size) for any candidate;
    ``constraints`` maps such an objective's name to its largest allowed value. Searchers that take
    constraints never ask for a candidate that violates them.
    """

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None):
        self.space = space
        self.objectives = list(objectives)
        self.seed = seed
        self.constraints = dict(constraints or {})
        self.cheap = cheap
        if self.constraints and cheap is None:
            raise UserError("constraints need a cheap evaluator (e.g. the LUT) to check candidates before "
                            "their true evaluation")
        if self.constraints:
            known = set(cheap(space.smallest()))
            for key in self.constraints:
                if key not in known:
                    raise UserError(f"constraint on '{key}', which the cheap evaluator does not compute "
                                    f"({sorted(known)})")

    def violation(self, candidate: Candidate) -> float:
        """Total relative excess of ``candidate`` over the constraints; 0 when it is feasible."""
        if not self.constraints:
            return 0.0
        values = self.cheap(candidate)
        return float(sum(max(0.0, values[k] - lim) / max(abs(lim), 1e-12) for k, lim in self.constraints.items()))

    def feasible(self, candidate: Candidate) -> bool:
        return self.violation(candidate) == 0.0

    @abstractmethod
    def ask(self) -> list[Candidate]: ...

    @abstractmethod
    def tell(self, candidates: Sequence[Candidate], values: np.ndarray) -> None: ...


@dataclass
class Evaluation:
    seq: int
    candidate: Candidate
    objectives: dict[str, float]
    wall_time_s: float


class Study:
    """Append-only SQLite store of evaluated candidates, tagged with the problem it belongs to."""

    def __init__(self, path: str | Path, problem: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS evaluations (id TEXT PRIMARY KEY, seq INTEGER, candidate TEXT, "
                "encoding TEXT, objectives TEXT, wall_time_s REAL, created REAL)"
            )
            row = self.db.execute("SELECT value FROM meta WHERE key='problem'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a bitnas study database ({exc})") from None
        wanted = json.dumps(problem, sort_keys=True)
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('problem', ?)", (wanted,))
        elif row[0] != wanted:
            raise UserError(f"{self.path}: study belongs to another problem (supernet, LUT or evaluator changed); "
                            "use a new study path")
        self.problem = problem

    def get(self, cid: str) -> dict[str, float] | None:
        row = self.db.execute("SELECT objectives FROM evaluations WHERE id=?", (cid,)).fetchone()
        return json.loads(row[0]) if row else None

    def add(self, candidate: Candidate, encoding: np.ndarray, objectives: dict[str, float], wall: float) -> None:
        with self.db:
            seq = self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            self.db.execute(
                "INSERT OR IGNORE INTO evaluations VALUES (?,?,?,?,?,?,?)",
                (candidate.id, seq, json.dumps(candidate.to_dict()), json.dumps(encoding.tolist()),
                 json.dumps(objectives), wall, time.time()),
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    def evaluations(self) -> list[Evaluation]:
        rows = self.db.execute("SELECT seq, candidate, objectives, wall_time_s FROM evaluations ORDER BY seq")
        return [Evaluation(s, Candidate.from_dict(json.loads(c)), json.loads(o), w) for s, c, o, w in rows]

    def export_json(self, path: str | Path, objectives: Sequence[Objective], front_ids: set[str]) -> Path:
        records = [
            {"seq": e.seq, **e.candidate.to_dict(), "objectives": e.objectives, "wall_time_s": e.wall_time_s,
             "on_front": e.candidate.id in front_ids}
            for e in self.evaluations()
        ]
        return atomic_write_json(path, {"problem": self.problem,
                                        "objectives": [{"name": o.name, "sense": o.sense} for o in objectives],
                                        "evaluations": records})

    def close(self) -> None:
        self.db.close()


ProgressFn = Callable[[int, int, dict[str, Any]], None]


def run_search(
    searcher: Searcher,
    evaluate: Callable[[Candidate], dict[str, float]],
    budget: int,
    study: Study,
    progress: ProgressFn | None = None,
    max_idle_rounds: int = 50,
) -> list[Evaluation]:
    """Drive ``searcher`` until the study holds ``budget`` true evaluations; returns them in order."""
    idle = 0
    while len(study) < budget:
        candidates = searcher.ask()
        if not candidates:
            break
        told, values, fresh = [], [], 0
        for c in candidates:
            obj = study.get(c.id)
            if obj is None:
                if len(study) >= budget:
                    break
                t0 = time.perf_counter()
                obj = evaluate(c)
                study.add(c, searcher.space.encode(c), obj, time.perf_counter() - t0)
                fresh += 1
                if progress:
                    progress(len(study), budget, obj)
            told.append(c)
            values.append(to_minimization(searcher.objectives, obj))
        if told:
            searcher.tell(told, np.array(values))
        idle = 0 if fresh else idle + 1
        if idle >= max_idle_rounds:  # the searcher keeps proposing only known candidates
            break
    return study.evaluations()
