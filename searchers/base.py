"""Searcher interface, the append-only study store, and the driver that runs any searcher for a budget.

A study keeps every true evaluation keyed by candidate id, written as each one finishes (SQLite), so a
killed search resumes where it stopped: searchers are deterministic for a seed, so the rerun asks the same
candidates again and the study answers them without paying for a second evaluation.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnas.api import Objective
from bitnas.errors import InternalError, UserError
from bitnas.io import atomic_write_json
from bitnas.space import Candidate, SearchSpace

if TYPE_CHECKING:
    from bitnas.searchers.executor import Executor


def to_minimization(objectives: Sequence[Objective], values: dict[str, float]) -> np.ndarray:
    return np.array([values[o.name] if o.sense == "min" else -values[o.name] for o in objectives], dtype=float)


CheapFn = Callable[[Candidate], dict[str, float]]
BatchFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class CheapEvaluator:
    """A cheap evaluator that also scores a batch: ``evaluator(candidate)`` gives one candidate's values,
    ``evaluator.batch(X)`` those of ordinal gene rows ``X`` (n x genes) as arrays. A plain ``CheapFn`` also
    serves; ``cheap_rows`` then calls it once per row."""

    def __init__(self, one: CheapFn, batch: BatchFn):
        self.one, self.batch = one, batch

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        return self.one(candidate)


def cheap_rows(cheap: CheapFn, space: SearchSpace, X: np.ndarray) -> dict[str, np.ndarray]:
    """The cheap values of ordinal rows ``X``: in one batch when ``cheap`` can, else one row at a time."""
    batch = getattr(cheap, "batch", None)
    if batch is not None:
        return batch(X)
    rows = [cheap(space.decode(x)) for x in X]
    names = list(rows[0]) if rows else []
    return {n: np.array([r[n] for r in rows], float) for n in names}


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
    """Append-only SQLite store of evaluated candidates, tagged with the problem it belongs to.

    Several processes may share one study: SQLite in WAL mode with a busy timeout serializes the writes,
    and a candidate is claimed (``claim``) before its evaluation, so two processes never pay for the same
    one. A claim names its process; a claim whose process is gone (killed) is taken over. Claims are checked
    on this machine only: a study lives on a local disk, where SQLite's locks hold.
    """

    def __init__(self, path: str | Path, problem: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            with self._write():
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS evaluations (id TEXT PRIMARY KEY, seq INTEGER, candidate TEXT, "
                    "encoding TEXT, objectives TEXT, wall_time_s REAL, created REAL)"
                )
                self.db.execute("CREATE TABLE IF NOT EXISTS claims (id TEXT PRIMARY KEY, owner TEXT, pid INTEGER, "
                                "host TEXT, since REAL)")
                wanted = json.dumps(problem, sort_keys=True)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('problem', ?)", (wanted,))
                row = self.db.execute("SELECT value FROM meta WHERE key='problem'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a bitnas study database ({exc})") from None
        if row[0] != wanted:
            self.db.close()
            raise UserError(f"{self.path}: study belongs to another problem (supernet, LUT or evaluator changed); "
                            "use a new study path")
        self.problem = problem

    @contextmanager
    def _write(self):
        """One write transaction, taken at once (BEGIN IMMEDIATE): reads inside it see no other writer."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, cid: str) -> dict[str, float] | None:
        row = self.db.execute("SELECT objectives FROM evaluations WHERE id=?", (cid,)).fetchone()
        return json.loads(row[0]) if row else None

    def claim(self, cid: str) -> str:
        """Claim ``cid`` for evaluation by this process: 'mine', 'done' (already evaluated) or 'taken' (being
        evaluated by another live process)."""
        with self._write():
            if self.db.execute("SELECT 1 FROM evaluations WHERE id=?", (cid,)).fetchone():
                return "done"
            row = self.db.execute("SELECT owner, pid, host FROM claims WHERE id=?", (cid,)).fetchone()
            if row and row[0] != self.owner and _alive(row[1], row[2]):
                return "taken"
            self.db.execute("INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?)",
                            (cid, self.owner, os.getpid(), socket.gethostname(), time.time()))
            return "mine"

    def release(self) -> None:
        """Drop this process's claims (evaluations it will not finish)."""
        with self._write():
            self.db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))

    def add(self, candidate: Candidate, encoding: np.ndarray, objectives: dict[str, float], wall: float) -> None:
        with self._write():
            seq = self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
            self.db.execute(
                "INSERT OR IGNORE INTO evaluations VALUES (?,?,?,?,?,?,?)",
                (candidate.id, seq, json.dumps(candidate.to_dict()), json.dumps(encoding.tolist()),
                 json.dumps(objectives), wall, time.time()),
            )
            self.db.execute("DELETE FROM claims WHERE id=?", (candidate.id,))

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
        try:
            self.release()
        finally:
            self.db.close()


def _alive(pid: int, host: str) -> bool:
    """Whether the process ``pid`` of ``host`` still runs (one of another machine is taken to)."""
    if host != socket.gethostname() or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


ProgressFn = Callable[[int, int, dict[str, Any]], None]


def run_search(
    searcher: Searcher,
    evaluate: Callable[[Candidate], dict[str, float]] | None,
    budget: int,
    study: Study,
    progress: ProgressFn | None = None,
    max_idle_rounds: int = 50,
    executor: Executor | None = None,
) -> list[Evaluation]:
    """Drive ``searcher`` until the study holds ``budget`` true evaluations; returns them in order.

    The fresh candidates of each batch go to ``executor`` (default: ``evaluate`` in this process), at most
    its ``slots`` at a time; each result is written to the study as it arrives, in any order, and the
    searcher is told in ask order, so the study is the same whichever executor ran.
    """
    from bitnas.searchers.executor import InProcessExecutor

    if executor is None:
        if evaluate is None:
            raise InternalError("run_search needs an evaluate function or an executor")
        executor = InProcessExecutor(evaluate)
    idle = 0
    try:
        while len(study) < budget:
            candidates = searcher.ask()
            if not candidates:
                break
            told, values, fresh = _batch(searcher, candidates, budget, study, executor, progress)
            if told:
                searcher.tell(told, np.array([to_minimization(searcher.objectives, values[c.id]) for c in told]))
            idle = 0 if fresh else idle + 1
            if idle >= max_idle_rounds:  # the searcher keeps proposing only known candidates
                break
    finally:
        study.release()
    return study.evaluations()


def _batch(searcher: Searcher, candidates: Sequence[Candidate], budget: int, study: Study, executor: Executor,
           progress: ProgressFn | None) -> tuple[list[Candidate], dict[str, dict[str, float]], int]:
    """One asked batch: (the candidates to tell, in ask order; their values; how many were evaluated here)."""
    start = len(study)
    told: list[Candidate] = []
    values: dict[str, dict[str, float]] = {}
    todo: dict[str, Candidate] = {}
    for c in candidates:
        if c.id not in values and c.id not in todo:
            obj = study.get(c.id)
            if obj is not None:
                values[c.id] = obj
            elif start + len(todo) >= budget:
                break
            else:
                todo[c.id] = c
        told.append(c)
    queue = list(todo.values())
    running: dict[Future, Candidate] = {}
    others: dict[str, Candidate] = {}  # claimed by another live process: its result is awaited
    fresh = 0
    while queue or running or others:
        while queue and len(running) < executor.slots:
            c = queue.pop(0)
            state = study.claim(c.id)
            if state == "done":
                values[c.id] = study.get(c.id)
            elif state == "taken":
                others[c.id] = c
            else:
                running[executor.submit(c)] = c
        if running:
            done, _ = wait(running, timeout=0.2 if others else None, return_when=FIRST_COMPLETED)
            for fut in done:
                c = running.pop(fut)
                obj, wall = fut.result()
                study.add(c, searcher.space.encode(c), obj, wall)
                values[c.id] = obj
                fresh += 1
                if progress:
                    progress(len(study), budget, obj)
        elif others:
            time.sleep(0.2)
        for cid, c in list(others.items()):
            obj = study.get(cid)
            if obj is not None:
                values[cid] = obj
                del others[cid]
            elif study.claim(cid) != "taken":  # its process is gone: evaluate it here
                del others[cid]
                queue.insert(0, c)
    return told, values, fresh


# what the driver gives every searcher; never a user option
_FRAMEWORK_ARGS = frozenset({"self", "space", "objectives", "seed", "constraints", "cheap", "supernet", "data", "lut",
                             "reduce_range"})
_PROBABILITY = ("_ratio", "_prob")  # option names whose values are shares of something: in [0, 1]


def validate_options(cls: type, options: Mapping[str, Any], where: str, key: str = "search.options") -> dict[str, Any]:
    """``options`` checked against the keyword arguments of ``cls.__init__`` (their annotations, typed):
    an unknown name, a value of another type, a non-finite number, a negative count or rate, a share outside
    [0, 1], or a count below 1 where its default is positive, is one error naming ``where`` and the option."""
    import inspect
    import math
    import typing

    from pydantic import ConfigDict, Field, ValidationError, create_model

    from bitnas.errors import ConfigError

    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - a plug-in's annotations the checker cannot resolve: pass through
        return dict(options)
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _FRAMEWORK_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        tp = hints.get(name, Any)
        args = typing.get_args(tp)
        base = next(a for a in args if a is not type(None)) if len(args) == 2 and type(None) in args else tp
        bounds: dict[str, Any] = {}
        if base in (int, float):
            # a count is at least 1 unless 0 is its default; rates and sizes are not negative
            bounds["ge"] = 1 if base is int and default != 0 else 0
            if name.endswith(_PROBABILITY):
                bounds["le"] = 1
            if base is float:
                bounds["allow_inf_nan"] = False
            lo, hi = getattr(cls, "option_bounds", {}).get(name, (bounds["ge"], bounds.get("le")))
            bounds["ge"] = lo
            if hi is not None:
                bounds["le"] = hi
        fields[name] = (tp, Field(default, **bounds) if p.default is not inspect.Parameter.empty else Field(**bounds))
    model = create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid", strict=False), **fields)
    try:
        checked = model.model_validate(dict(options))
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where}: unknown key '{key}.{loc}' (searcher {cls.__name__} takes: {known})") \
                from None
        raise ConfigError(f"{where}: key '{key}.{loc}': {e['msg']} (got {e.get('input')!r})") from None
    out = {k: getattr(checked, k) for k in options}
    for k, v in out.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: key '{key}.{k}': must be a finite number (got {v!r})")
    return out
