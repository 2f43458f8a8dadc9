"""The Backend protocol, its registry, and the timing procedure every backend shares.

Timing on a shared CPU is noisy: models are warmed up, timed many times in interleaved rounds (so slow
phases of the machine hit every model alike), and summarized by robust statistics (median and the 10th
percentile) with their spread. Comparisons are made as ratios measured in one run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import MissingDependencyError, UnsupportedBackendError
from bitnas.fingerprint import device_fingerprint

Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
Timer = Callable[[], object]


@dataclass(frozen=True)
class Measurement:
    """Latency summary in milliseconds over ``n`` timed runs."""

    median_ms: float
    p10_ms: float
    mean_ms: float
    iqr_ms: float
    n: int

    @staticmethod
    def from_samples(samples_s: np.ndarray) -> Measurement:
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        q10, q25, q50, q75 = np.percentile(ms, [10, 25, 50, 75])
        return Measurement(float(q50), float(q10), float(ms.mean()), float(q75 - q25), int(ms.size))

    def stat(self, name: str) -> float:
        return {"median": self.median_ms, "p10": self.p10_ms, "mean": self.mean_ms}[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved_samples(
    runners: Mapping[str, Callable[[], Any]],
    warmup: int = 10,
    repeats: int = 100,
    rounds: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Raw timings (seconds) of each callable, one array per interleaved round."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    clock = time.perf_counter
    done = 0
    for r, count in enumerate(per_round):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = runners[name]
            buf = []
            for _ in range(count):
                t0 = clock()
                fn()
                buf.append(clock() - t0)
            samples[name].append(np.array(buf))
            done += 1
            if progress is not None:
                progress(done, len(names) * rounds)
    return samples


def interleaved_timing(
    runners: Mapping[str, Callable[[], Any]],
    warmup: int = 10,
    repeats: int = 100,
    rounds: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Measurement]:
    """Time each zero-argument callable ``repeats`` times, split into ``rounds`` interleaved passes."""
    raw = interleaved_samples(runners, warmup, repeats, rounds, progress)
    return {n: Measurement.from_samples(np.concatenate(raw[n])) for n in raw}


@dataclass(frozen=True)
class PairedRatio:
    """Latency of ``a`` over ``b``, one ratio per interleaved round, summarized by the median of the rounds.

    Both models of a round ran back to back, so a slow phase of the machine (a busy sibling core, a
    frequency change) hits both; pooling all runs first lets one slow round move the ratio by tens of
    percent for a sub-millisecond model, the median of per-round ratios does not. ``iqr`` is the spread of
    the rounds' ratios: the measurement's own repeatability.
    """

    ratio: float
    iqr: float
    rounds: tuple[float, ...]

    @staticmethod
    def of(a: list[np.ndarray], b: list[np.ndarray], statistic: str = "p10") -> PairedRatio:
        if len(a) != len(b) or not a:
            raise ValueError("a paired ratio needs the same number (> 0) of rounds for both models")
        per = np.array([Measurement.from_samples(x).stat(statistic) / Measurement.from_samples(y).stat(statistic)
                        for x, y in zip(a, b)])
        q25, q50, q75 = np.percentile(per, [25, 50, 75])
        return PairedRatio(float(q50), float(q75 - q25), tuple(float(r) for r in per))


class Backend(ABC):
    """One target runtime. Subclasses implement ``_available`` and ``compile``; the rest is shared."""

    name: str = ""
    package: str = ""  # the pip package that provides the runtime
    simulated: bool = False  # True for analytic targets that profile layers without running ONNX

    def __init__(self, threads: int = 1):
        self.threads = threads

    @classmethod
    @abstractmethod
    def _available(cls) -> bool: ...

    @classmethod
    def available(cls) -> bool:
        try:
            return cls._available()
        except ImportError:
            return False

    def require(self) -> None:
        if not self.available():
            raise MissingDependencyError(self.package, f"the '{self.name}' backend")

    def fingerprint(self) -> dict[str, Any]:
        fp = device_fingerprint(self.threads)
        fp["backend"] = self.name
        return fp

    @abstractmethod
    def compile(self, onnx_path: str | Path) -> Runner:
        """Load ``onnx_path`` into the runtime; the returned callable maps input arrays to outputs."""

    def run(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.compile(onnx_path)(inputs)

    def timer(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray], runner: Runner | None = None) -> Timer:
        """A zero-argument callable that runs one inference on ``inputs``: what every latency figure times.

        Backends override it to bind the inputs once and skip copying outputs back, so that a timed call
        costs what a deployment's steady state costs and not the Python glue around it. ``runner``, when
        given, is ``compile(onnx_path)`` already built; backends without a faster path time it.
        """
        runner = runner or self.compile(onnx_path)
        fixed = dict(inputs)
        return lambda: runner(fixed)

    def measure(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray], warmup: int = 10,
                repeats: int = 100, rounds: int = 5) -> Measurement:
        return interleaved_timing({"m": self.timer(onnx_path, inputs)}, warmup, repeats, rounds)["m"]

    def profile(self, spec: Any, warmup: int = 10, repeats: int = 100, rounds: int = 5) -> Measurement:
        """Measure one LayerSpec as the profiler builds it (a one-layer ONNX model, INT8 via static PTQ)."""
        from bitnas.latency_luts.profiler import measure_layer

        return measure_layer(self, spec, warmup=warmup, repeats=repeats, rounds=rounds)


def register(cls: type[Backend]) -> type[Backend]:
    """Class decorator: register a backend under its ``name`` in ``bitnas.api.BACKENDS``."""
    from bitnas.api import BACKENDS

    return BACKENDS.register(cls.name, cls)


def register_target(target: Any) -> Any:
    """Register a ``bitnas.api.Target`` record in ``bitnas.api.TARGETS``."""
    from bitnas.api import TARGETS

    return TARGETS.register(target.name, target)


def backend_names() -> list[str]:
    from bitnas.api import BACKENDS

    return BACKENDS.names()


def get_backend(name: str, threads: int = 1) -> Backend:
    """An available backend by name; unknown names and missing runtimes raise clear errors."""
    from bitnas.api import BACKENDS

    if name not in BACKENDS:
        raise UnsupportedBackendError(f"unknown backend '{name}' (known: {', '.join(backend_names())})")
    backend = BACKENDS.get(name)(threads=threads)
    backend.require()
    return backend
