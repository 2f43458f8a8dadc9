"""The demo problem every search runs on: one true evaluation, its cheap objectives, its identity and its
hypervolume normalization. The demo, ``bitnas search`` and the search benchmark all use it, so a candidate
scores the same wherever it is evaluated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OBJECTIVE_NAMES = ("accuracy", "latency_ms", "size_bytes")


def objectives() -> list:
    """accuracy (max), LUT latency (min), size (min)."""
    from bitnas.searchers import Objective

    return [Objective("accuracy", "max"), Objective("latency_ms", "min"), Objective("size_bytes", "min")]


def problem_id(parts: dict[str, Any]) -> dict[str, Any]:
    """``parts`` plus a 16-hex ``hash`` of them: the identity a study is bound to."""
    parts = dict(parts)
    parts["hash"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return parts


@dataclass
class DemoProblem:
    """Everything a search on the demo problem needs; ``evaluate`` is a true evaluation."""

    supernet: Any
    data: Any
    lut: Any
    lut_path: Path
    calib: list
    reduce_range: bool
    objectives: list
    problem: dict[str, Any]

    @classmethod
    def create(cls, supernet, data, lut, lut_path: Path, calib: list, reduce_range: bool, supernet_fingerprint: str,
               calib_batches: int) -> DemoProblem:
        """The problem with its identity: what a study is bound to (supernet, LUT file, data, calibration)."""
        from bitnas.io import sha256_file

        ident = problem_id({"supernet": supernet_fingerprint, "lut_sha256": sha256_file(lut_path), "data": data.name,
                            "calib_batches": calib_batches, "reduce_range": reduce_range,
                            "objectives": list(OBJECTIVE_NAMES)})
        return cls(supernet, data, lut, lut_path, calib, reduce_range, objectives(), ident)

    def cheap(self, c) -> dict[str, float]:
        """LUT latency and size: no true evaluation needed."""
        layers = self.supernet.layers(c)
        return {"latency_ms": self.lut.predict(layers)["latency_ms"],
                "size_bytes": float(sum(s.size_bytes for s in layers))}

    def evaluate(self, c) -> dict[str, float]:
        """Accuracy of the candidate with simulated quantization, plus its cheap objectives."""
        from bitnas.supernets.evaluate import accuracy, prepare_subnet
        from bitnas.supernets.static import quantize_net

        static = prepare_subnet(self.supernet, c, self.calib)
        acc = accuracy(quantize_net(static, c.policy_dict, self.calib, self.reduce_range), self.data)
        return {"accuracy": acc, **self.cheap(c)}


def hv_reference(problem: DemoProblem) -> tuple[np.ndarray, np.ndarray]:
    """Fixed normalization (ideal, reference point) of [-accuracy, latency_ms, size_bytes] for the space."""
    space = problem.supernet.space
    big = problem.cheap(space.largest((32, 32)))
    small = [problem.cheap(space.smallest(b)) for b in problem.supernet.d.bit_options]
    ideal = np.array([-1.0, min(s["latency_ms"] for s in small) * 0.9, min(s["size_bytes"] for s in small) * 0.9])
    ref = np.array([-0.5, big["latency_ms"] * 1.05, big["size_bytes"] * 1.05])
    return ideal, ref


def normalized_hv(F: np.ndarray, ideal: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimization rows ``F`` after mapping [ideal, ref] to [0, 1] (reference point 1)."""
    from bitnas.searchers import hypervolume

    if not len(F):
        return 0.0
    return hypervolume((np.asarray(F, float) - ideal) / (ref - ideal), np.ones(len(ideal)))
