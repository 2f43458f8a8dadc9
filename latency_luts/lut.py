"""The latency lookup table: file format, validation, device check and queries.

A network's predicted latency is the sum of its layers' entries. Each entry was measured as a one-layer
model, so each includes the runtime's fixed per-call cost once; the table stores that cost (the latency of
a trivial model) and counts it once per network instead of once per layer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnas.errors import LutError, UnknownLayerError
from bitnas.fingerprint import same_device
from bitnas.io import atomic_write_json
from bitnas.space import LayerSpec

FORMAT = "bitnas-lut"
VERSION = 1
STATS = ("median", "p10", "mean")


@dataclass
class LatencyTable:
    target: str
    fingerprint: dict[str, Any]
    measurement: dict[str, Any]
    entries: dict[str, dict[str, Any]]
    overhead: dict[str, float] = field(default_factory=dict)
    space: str | None = None
    source: str = "<memory>"

    @property
    def statistic(self) -> str:
        return self.measurement.get("statistic", "median")

    def _value(self, entry: dict[str, Any], what: str = "latency") -> float:
        return float(entry[f"{self.statistic}_ms"]) if what == "latency" else float(entry[what])

    def layer_latency(self, spec: LayerSpec) -> float:
        """The layer's own latency: its entry less the per-call overhead (never negative)."""
        entry = self.entries.get(spec.key)
        if entry is None:
            raise UnknownLayerError(
                f"{self.source}: no entry for layer '{spec.name or '?'}' (key {spec.key}); "
                f"re-profile the target for this space"
            )
        return max(self._value(entry) - self.overhead.get(f"{self.statistic}_ms", 0.0), 0.0)

    def predict(self, layers: Iterable[LayerSpec]) -> dict[str, float]:
        """Predicted latency (ms) of a network made of ``layers``; energy where the table has it."""
        layers = list(layers)
        latency = sum(self.layer_latency(s) for s in layers) + self.overhead.get(f"{self.statistic}_ms", 0.0)
        out = {"latency_ms": latency}
        if all("energy_mj" in self.entries.get(s.key, {}) for s in layers) and layers:
            out["energy_mj"] = sum(float(self.entries[s.key]["energy_mj"]) for s in layers)
        return out

    def check_device(self, fingerprint: dict[str, Any], force: bool = False) -> None:
        """Refuse a table measured on another device (or with other threads) unless ``force``."""
        diffs = same_device(self.fingerprint, fingerprint)
        if diffs and not force:
            detail = ", ".join(f"{d}: table {self.fingerprint.get(d)!r} vs here {fingerprint.get(d)!r}" for d in diffs)
            raise LutError(f"{self.source}: measured on another device ({detail}); pass --force-lut to use it anyway")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "target": self.target,
            "space": self.space,
            "fingerprint": self.fingerprint,
            "measurement": self.measurement,
            "overhead": self.overhead,
            "entries": self.entries,
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @staticmethod
    def from_dict(data: Any, source: str = "<memory>") -> LatencyTable:
        if not isinstance(data, dict):
            raise LutError(f"{source}: a latency table must be a JSON object")
        if data.get("format") != FORMAT:
            raise LutError(f"{source}: field 'format' is {data.get('format')!r}, expected '{FORMAT}'")
        if data.get("version") != VERSION:
            raise LutError(f"{source}: field 'version' is {data.get('version')!r}; this bitnas reads {VERSION}")
        for key, typ in (("target", str), ("fingerprint", dict), ("measurement", dict), ("entries", dict)):
            if not isinstance(data.get(key), typ):
                raise LutError(f"{source}: field '{key}' missing or not a {typ.__name__}")
        stat = data["measurement"].get("statistic", "median")
        if stat not in STATS:
            raise LutError(f"{source}: field 'measurement.statistic' is {stat!r}, expected one of {STATS}")
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get(f"{stat}_ms"), (int, float)):
                raise LutError(f"{source}: entry '{key}' lacks a numeric '{stat}_ms'")
            if entry[f"{stat}_ms"] < 0:
                raise LutError(f"{source}: entry '{key}' has a negative latency")
        return LatencyTable(
            target=data["target"], fingerprint=data["fingerprint"], measurement=data["measurement"],
            entries=data["entries"], overhead=data.get("overhead") or {}, space=data.get("space"), source=source,
        )

    @staticmethod
    def load(path: str | Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LutError(f"{path}: latency table not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LutError(f"{path}: not valid JSON ({exc})") from None
        return LatencyTable.from_dict(data, str(path))
