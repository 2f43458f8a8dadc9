"""Cheap objectives of many candidates at once: ``BatchScorer`` scores an ordinal gene matrix with table lookups.

A network's LUT latency, size, BitOps and energy are sums over its fusion units (``lut.group_units``), plus a
network-level calibration that is linear in features which are themselves sums over units, or counts of
precision changes between neighbouring units. So each candidate splits into *slots*, one per possible unit
(named by its first layer: ``stem``, ``s1.b0.expand_conv``, ...), and a slot's unit is decided by a few genes.

The scorer finds those genes once per space by probing: from random candidates it changes one gene at a
time to each of its options and records which slots change. Each slot then gets a table indexed by its
genes' options, filled the first time a candidate needs an entry (one ``layers()`` call fills every slot of
that candidate) and priced by the exact scalar path (``LatencyTable.unit_cost``). Scoring a batch is then
one index computation and one gather per slot, vectorized over the candidates; the precision changes
between units are one pass over the slots in network order.

Before use, the scorer checks itself against the scalar path on random candidates; a space where it
disagrees (a slot whose unit depends on genes that probing one at a time cannot see) is scored one candidate
at a time instead, with a warning. Objectives it does not know (a plug-in's) are computed per candidate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bitnas.errors import ConfigError
from bitnas.latency_luts.lut import NETWORK_FEATURES, block_key, group_units
from bitnas.space import Candidate, LayerSpec, SearchSpace

log = logging.getLogger(__name__)

# features of a calibration that are sums over units; the others are handled by name below
_PAIRWISE = ("precision_switches", "int8_boundaries")
_SPECIAL = ("units_sum_ms", "one", *_PAIRWISE)
# a slot whose genes have more option combinations than this is scored through a dictionary of its rows
DENSE_LIMIT = 1 << 20


class BatchScorer:
    """LUT latency (``latency_ms``), ``size_bytes``, ``bitops`` and ``energy_mj`` of ordinal gene rows.

    ``layers_fn(candidate)`` gives a candidate's layers; ``lut`` is the problem's ``LatencyTable`` (or None:
    then only size and BitOps). ``names`` are the objectives to compute; ``per_candidate`` maps a name the
    scorer does not know to ``f(layers) -> float``.
    """

    KNOWN = ("latency_ms", "energy_mj", "size_bytes", "bitops")

    def __init__(self, space: SearchSpace, layers_fn: Callable[[Candidate], list[LayerSpec]], lut: Any,
                 names: Sequence[str], per_candidate: dict[str, Callable[[list[LayerSpec]], float]] | None = None,
                 probes: int = 12, check: int = 200, seed: int = 0):
        self.space, self.layers_fn, self.lut = space, layers_fn, lut
        self.names = list(names)
        self.per_candidate = dict(per_candidate or {})
        unknown = [n for n in self.names if n not in self.KNOWN and n not in self.per_candidate]
        if unknown:
            raise ConfigError(f"batch scoring: no way to compute {unknown}")
        if "latency_ms" in self.names and lut is None:
            raise ConfigError("batch scoring: objective 'latency_ms' needs a LUT")
        cal = (lut.calibration or {}) if lut is not None else {}
        self.cal_features = list(cal.get("features", ())) if cal else []
        self.cal_coef = np.asarray(cal.get("coef", ()), float)
        self.sum_features = [f for f in self.cal_features if f not in _SPECIAL]
        # per-slot quantities: latency, variance, size, bitops, energy, energy known (0/1), the summed
        # calibration features, then the unit's first and last layer INT8 and the precision changes inside it
        self._q = ["lat", "var", "size", "bitops", "energy", "energy_ok", *self.sum_features,
                   "first_q", "last_q", "inner_switches", "present"]
        self._col = {n: i for i, n in enumerate(self._q)}
        self.slots: list[str] = []  # network order
        self.deps: dict[str, list[int]] = {}
        self._tables: dict[str, Any] = {}
        self._filled: dict[str, np.ndarray] = {}
        self._radix: dict[str, np.ndarray] = {}
        self.exact = True
        self.reason = ""
        self._probe(probes, seed)
        self._check(check, seed)

    # ----------------------------------------------------------------- structure
    def _units(self, row: np.ndarray) -> list[list[LayerSpec]]:
        layers = self.layers_fn(self.space.decode(row))
        if self.lut is None or not self.lut.blocks:
            return [[s] for s in layers]
        return group_units(layers)

    @staticmethod
    def _signature(units: list[list[LayerSpec]]) -> dict[str, str]:
        return {u[0].name: (block_key(u) if len(u) > 1 else u[0].key) for u in units}

    def _probe(self, probes: int, seed: int) -> None:
        space = self.space
        rng = np.random.default_rng([seed, 11])
        ub = space.upper_bounds()
        bases = [space.encode(space.smallest()), space.encode(space.largest())]
        bases += list(space.canonical(rng.integers(0, ub + 1, size=(probes, space.n_genes))))
        deps: dict[str, set[int]] = {}
        before: dict[str, set[str]] = {}
        for base in bases:
            units = self._units(base)
            self._order(units, before)
            sig = self._signature(units)
            for g in range(space.n_genes):
                # an arch gene's every option (depth 2 and 4 activate different blocks); a policy gene changes
                # its own layer's bits whichever option it takes, so one other option each time suffices
                options = [o for o in range(ub[g] + 1) if o != base[g]]
                if space.genes[g].kind == "policy" and options:
                    options = [options[int(rng.integers(len(options)))]]
                for o in options:
                    x = base.copy()
                    x[g] = o
                    x = space.canonical(x[None])[0]
                    if (x == base).all():
                        continue  # an inactive gene
                    other_units = self._units(x)
                    self._order(other_units, before)
                    other = self._signature(other_units)
                    for name in sig.keys() | other.keys():
                        deps.setdefault(name, set())
                        if sig.get(name) != other.get(name):
                            deps[name].add(g)
        self.slots = self._topological(before)
        self.deps = {name: sorted(deps.get(name, ())) for name in self.slots}
        for name in self.slots:
            d = self.deps[name]
            card = [int(ub[g]) + 1 for g in d]
            size = math.prod(card)
            if size <= DENSE_LIMIT:
                self._radix[name] = np.array([math.prod(card[i + 1:]) for i in range(len(card))], np.int64)
                self._tables[name] = np.zeros((size, len(self._q)))
                self._filled[name] = np.zeros(size, dtype=bool)
            else:
                self._tables[name] = {}

    @staticmethod
    def _order(units: list[list[LayerSpec]], before: dict[str, set[str]]) -> None:
        names = [u[0].name for u in units]
        for i, n in enumerate(names):
            before.setdefault(n, set()).update(names[:i])

    def _topological(self, before: dict[str, set[str]]) -> list[str]:
        """Slot names in an order every probed network agrees with (Kahn's algorithm)."""
        order: list[str] = []
        placed: set[str] = set()
        while len(order) < len(before):
            ready = sorted(n for n, b in before.items() if n not in placed and b <= placed)
            if not ready:
                self.exact, self.reason = False, "the space's units have no single network order"
                return order + sorted(set(before) - placed)
            order += ready
            placed.update(ready)
        return order

    # ----------------------------------------------------------------- tables
    def _unit_values(self, unit: list[LayerSpec]) -> np.ndarray:
        v = np.zeros(len(self._q))
        c = self._col
        if self.lut is not None and ("latency_ms" in self.names or self.cal_features):
            lat, var, _ = self.lut.unit_cost(unit)
            v[c["lat"]], v[c["var"]] = lat, var
        v[c["size"]] = sum(s.size_bytes for s in unit)
        v[c["bitops"]] = sum(s.macs * s.w_bits * s.a_bits for s in unit)
        if self.lut is not None:
            entries = [self.lut.entries.get(s.key, {}) for s in unit]
            ok = all("energy_mj" in e for e in entries)
            v[c["energy_ok"]] = float(ok)
            v[c["energy"]] = sum(float(e["energy_mj"]) for e in entries) if ok else 0.0
        for f in self.sum_features:
            v[c[f]] = float(NETWORK_FEATURES[f](0.0, [unit]))
        q = [s.quantized for s in unit]
        v[c["first_q"]], v[c["last_q"]] = float(q[0]), float(q[-1])
        v[c["inner_switches"]] = float(sum(a != b for a, b in zip(q, q[1:])))
        v[c["present"]] = 1.0
        return v

    def _fill_row(self, row: np.ndarray, missing: dict[str, Any]) -> None:
        """Fill the entries of every slot of ``row`` listed in ``missing`` (slot -> index) from its layers."""
        units = {u[0].name: u for u in self._units(row)}
        for name, idx in missing.items():
            unit = units.get(name)
            v = self._unit_values(unit) if unit is not None else np.zeros(len(self._q))
            table = self._tables[name]
            if isinstance(table, dict):
                table[idx] = v
            else:
                table[idx] = v
                self._filled[name][idx] = True

    def _slot_values(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Per slot, the (n x quantities) values of canonical rows ``X``, filling missing entries first."""
        index: dict[str, Any] = {}
        need: dict[int, dict[str, Any]] = {}  # row -> slot -> entry to fill
        for name in self.slots:
            d = self.deps[name]
            table = self._tables[name]
            if isinstance(table, dict):
                keys = [tuple(r) for r in X[:, d].tolist()]
                index[name] = keys
                first_row: dict[tuple, int] = {}
                for r, k in enumerate(keys):
                    if k not in table and k not in first_row:
                        first_row[k] = r
                        need.setdefault(r, {})[name] = k
                continue
            idx = X[:, d] @ self._radix[name] if d else np.zeros(len(X), np.int64)
            index[name] = idx
            todo = np.flatnonzero(~self._filled[name][idx])
            if len(todo):
                _, first = np.unique(idx[todo], return_index=True)
                for r in todo[first]:
                    need.setdefault(int(r), {})[name] = int(idx[r])
        for r, missing in need.items():
            self._fill_row(X[r], missing)
        out = {}
        for name in self.slots:
            table = self._tables[name]
            if isinstance(table, dict):
                out[name] = np.array([table[k] for k in index[name]]).reshape(len(X), len(self._q))
            else:
                out[name] = table[index[name]]
        return out

    # ----------------------------------------------------------------- scoring
    def score(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """The objectives ``names`` of ordinal rows ``X`` (n x genes), each an array of n values."""
        X = self.space.canonical(X)
        if not self.exact:
            return self._scalar(X)
        n = len(X)
        V = self._slot_values(X) if n else {}
        c = self._col
        total = np.zeros((n, len(self._q)))
        for name in self.slots:
            total += V[name]
        out: dict[str, np.ndarray] = {}
        if "latency_ms" in self.names:
            out["latency_ms"] = self._latency(V, total)
        if "size_bytes" in self.names:
            out["size_bytes"] = total[:, c["size"]]
        if "bitops" in self.names:
            out["bitops"] = total[:, c["bitops"]] / 1e9
        if "energy_mj" in self.names:
            ok = np.ones(n, dtype=bool)
            for name in self.slots:
                ok &= (V[name][:, c["present"]] == 0) | (V[name][:, c["energy_ok"]] == 1)
            if n and not ok.all():
                raise ConfigError(f"{self.lut.source}: objective 'energy_mj' needs a LUT with energy per layer "
                                  f"(target '{self.lut.target}' has none)")
            out["energy_mj"] = total[:, c["energy"]]
        for name, fn in self.per_candidate.items():
            if name in self.names:
                out[name] = np.array([float(fn(self.layers_fn(self.space.decode(x)))) for x in X])
        return out

    def _latency(self, V: dict[str, np.ndarray], total: np.ndarray) -> np.ndarray:
        c = self._col
        ov = self.lut._overhead()
        units_sum = total[:, c["lat"]]
        if not self.cal_features:
            return ov + units_sum
        n = len(total)
        switches, bounds = np.zeros(n), np.zeros(n)
        prev_last, has_prev = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        for name in self.slots:
            v = V[name]
            present = v[:, c["present"]] == 1
            first, last = v[:, c["first_q"]] == 1, v[:, c["last_q"]] == 1
            switches += present * ((prev_last != first) + v[:, c["inner_switches"]])
            bounds += present & has_prev & prev_last & first
            prev_last = np.where(present, last, prev_last)
            has_prev |= present
        switches += prev_last  # the last unit back to the float graph output
        feats = {"units_sum_ms": units_sum, "one": np.ones(n), "precision_switches": switches,
                 "int8_boundaries": bounds}
        F = np.column_stack([feats[f] if f in feats else total[:, c[f]] for f in self.cal_features])
        return np.maximum(F @ self.cal_coef, ov)

    def _scalar(self, X: np.ndarray) -> dict[str, np.ndarray]:
        from bitnas.api import OBJECTIVES

        rows = []
        for x in X:
            layers = self.layers_fn(self.space.decode(x))
            rows.append([float(self.per_candidate[n](layers)) if n in self.per_candidate
                         else float(OBJECTIVES.get(n).compute(_Holder(self.lut), layers)) for n in self.names])
        arr = np.array(rows, float).reshape(len(X), len(self.names))
        return {n: arr[:, i] for i, n in enumerate(self.names)}

    def _check(self, n: int, seed: int) -> None:
        """Compare with the scalar path on ``n`` random candidates; on any difference score one at a time."""
        if not self.exact or n <= 0:
            if not self.exact:
                log.warning("batch scoring of space '%s' falls back to one candidate at a time: %s",
                            self.space.name, self.reason)
            return
        rng = np.random.default_rng([seed, 12])
        X = self.space.canonical(rng.integers(0, self.space.upper_bounds() + 1, size=(n, self.space.n_genes)))
        fast, slow = self.score(X), self._scalar(X)
        for name in self.names:
            bad = ~np.isclose(fast[name], slow[name], rtol=1e-9, atol=1e-12)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                self.exact = False
                self.reason = (f"'{name}' of candidate {self.space.decode(X[r]).id} is {fast[name][r]!r} by "
                               f"table and {slow[name][r]!r} exactly")
                log.warning("batch scoring of space '%s' falls back to one candidate at a time: %s",
                            self.space.name, self.reason)
                return


class _Holder:
    """What a built-in objective's ``compute(problem, layers)`` reads of a problem: its LUT."""

    def __init__(self, lut: Any):
        self.lut = lut
