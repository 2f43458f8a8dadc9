"""The built-in objectives: accuracy (a true evaluation), LUT latency and energy, size, BitOps.

A cheap objective is ``compute(problem, layers) -> float`` over the candidate's layers and the problem's
LUT; it needs no true evaluation, so searchers use it exactly and constraints may bound it.
"""

from __future__ import annotations

from typing import Any

from bitnas.api import OBJECTIVES, Objective
from bitnas.errors import ConfigError


def _latency(problem: Any, layers: list) -> float:
    return float(problem.lut.predict(layers)["latency_ms"])


def _energy(problem: Any, layers: list) -> float:
    pred = problem.lut.predict(layers)
    if "energy_mj" not in pred:
        raise ConfigError(f"{problem.lut.source}: objective 'energy_mj' needs a LUT with energy per layer "
                          f"(target '{problem.lut.target}' has none)")
    return float(pred["energy_mj"])


def _size(problem: Any, layers: list) -> float:
    return float(sum(s.size_bytes for s in layers))


def _bitops(problem: Any, layers: list) -> float:
    """Multiply-accumulates times weight and activation bits (QFA, EdMIPS), in units of 1e9."""
    return float(sum(s.macs * s.w_bits * s.a_bits for s in layers)) / 1e9


for _obj in (
    Objective("accuracy", "max", cheap=False, unit="top-1", needs_lut=False,
              description="top-1 accuracy on the val split of the subnet with simulated quantization"),
    Objective("latency_ms", "min", compute=_latency, unit="ms", description="latency the LUT predicts"),
    Objective("energy_mj", "min", compute=_energy, unit="mJ", description="energy the LUT predicts (simulated "
              "targets)"),
    Objective("size_bytes", "min", compute=_size, unit="bytes", needs_lut=False,
              description="weights as the artifact stores them plus float biases"),
    Objective("bitops", "min", compute=_bitops, unit="GBitOps", needs_lut=False,
              description="MACs x w_bits x a_bits / 1e9"),
):
    OBJECTIVES.register(_obj.name, _obj)


# the built-in cheap objectives ``bitnas.scoring.BatchScorer`` computes for a whole batch at once
BATCHED = {"latency_ms": _latency, "energy_mj": _energy, "size_bytes": _size, "bitops": _bitops}


def resolve(names: list[str], where: str) -> list[Objective]:
    """The objectives ``names`` (built-in names or ``module:attr`` references), in order."""
    out = []
    for i, name in enumerate(names):
        obj = OBJECTIVES.get(name, f"{where}[{i}]")
        if not isinstance(obj, Objective):
            raise ConfigError(f"{where}[{i}]: '{name}' is not a bitnas.api.Objective")
        if not obj.cheap and obj.name != "accuracy":
            raise ConfigError(f"{where}[{i}]: '{name}': the only objective that needs a true evaluation is "
                              "'accuracy'")
        out.append(obj)
    if len({o.name for o in out}) != len(out):
        raise ConfigError(f"{where}: an objective is listed twice")
    return out
