"""The plug-in contract: what a user implements to bring their own pieces, and the one ``Registry`` type.

Every kind of unit (families, data sets, targets, backends, passes, searchers, predictors, objectives)
lives in one ``Registry``. bitnas's own units register themselves when their module is imported; a
user's package registers through the Python entry-point group ``bitnas.<kind>`` (e.g. ``bitnas.families``),
or a config names a unit directly as ``"package.module:attr"``. Nothing else in bitnas keeps a list of
names, so a plug-in never needs an edit to bitnas.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from bitnas.errors import ConfigError
from bitnas.space import Bits, Candidate, LayerSpec, SearchSpace

T = TypeVar("T")


def load_reference(ref: str, what: str = "reference") -> Any:
    """The object a ``"module:attr"`` reference names; a bad reference is one ``ConfigError`` naming it."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} '{ref}': expected 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} '{ref}': cannot import module '{module_name}' ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} '{ref}': module '{module_name}' has no attribute '{attr}'") from None
    return obj


class Registry(Generic[T]):
    """Named units of one kind: built-ins, entry points of group ``bitnas.<kind>``, and ``module:attr``."""

    def __init__(self, kind: str, builtins: Sequence[str] = (), singular: str = ""):
        self.kind = kind
        self.singular = singular or kind.rstrip("s")
        self._units: dict[str, T] = {}
        self._builtins = tuple(builtins)  # modules whose import registers the built-in units
        self._loaded = False

    def register(self, name: str, unit: T | None = None) -> Any:
        """Register ``unit`` under ``name``; without ``unit``, a decorator."""
        if unit is None:
            def deco(obj: T) -> T:
                self.register(name, obj)
                return obj

            return deco
        self._units[name] = unit
        return unit

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._builtins:
            if mod.endswith(".*"):  # every module of a package: a new built-in unit is one new file
                import pkgutil

                pkg = importlib.import_module(mod[:-2])
                for info in pkgutil.iter_modules(pkg.__path__):
                    importlib.import_module(f"{pkg.__name__}.{info.name}")
            else:
                importlib.import_module(mod)
        from importlib.metadata import entry_points

        for ep in entry_points(group=f"bitnas.{self.kind}"):
            if ep.name not in self._units:
                try:
                    self._units[ep.name] = ep.load()
                except Exception as exc:  # noqa: BLE001 - a broken plug-in is named, not fatal to others
                    raise ConfigError(f"entry point '{ep.name}' of group 'bitnas.{self.kind}' "
                                      f"({ep.value}) fails to load: {exc}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._units)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._units.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._units

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def get(self, name: str, where: str = "") -> T:
        """The unit called ``name``, or the object of a ``module:attr`` reference."""
        if ":" in name:
            return load_reference(name, f"{where or self.kind}")
        self._load()
        try:
            return self._units[name]
        except KeyError:
            at = f"{where}: " if where else ""
            raise ConfigError(f"{at}unknown {self.singular} '{name}' (known: {', '.join(self.names())}; "
                              "or a plug-in as 'package.module:attr')") from None


# ---------------------------------------------------------------------------------------------- targets
# what a CPU target executes: float, and INT8 activations with 2-8-bit weights (the compiler stores 2-4
# bits packed as INT4 where the runtime reads it, 5-7 as INT8 values in range)
CPU_BITS: tuple[Bits, ...] = ((32, 32), *((w, 8) for w in (8, 7, 6, 5, 4, 3, 2)))


@dataclass(frozen=True)
class Target:
    """One deployment target: the only place its capabilities live.

    ``bit_options`` are the (w_bits, a_bits) pairs it executes (32 = float); ``int4_weights`` whether it
    reads 4-bit ONNX weight types; ``simulated`` targets are modelled, not measured; ``backend`` names the
    runtime (``BACKENDS``) that measures or models it, and ``backend_options`` what that backend is built with.
    A target without a backend (``backend=None``) is analytic: it has no LUT, so a search on it optimizes
    the objectives that need none (accuracy, size, BitOps), and its artifacts are verified on
    ``verify_backends``.
    """

    name: str
    backend: str | None
    bit_options: tuple[Bits, ...]
    description: str
    simulated: bool = False
    int4_weights: bool = False
    energy: bool = False  # the LUT carries energy per layer
    verify_backends: tuple[str, ...] = ()  # runtimes Verify runs an artifact for this target on
    bundle: bool = False  # layers can be measured on a remote device from an exported bundle
    lut_notes: tuple[str, ...] = ()  # what every LUT of this target should say about how it was made
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def has_lut(self) -> bool:
        """Whether a LUT of this target can be profiled (an analytic target has none)."""
        return self.backend is not None

    def make_backend(self, threads: int = 1, **options: Any) -> Any:
        """The backend that measures (or models) this target, available or a clear error."""
        if self.backend is None:
            raise ConfigError(f"target '{self.name}' is analytic: it has no backend to measure or model layers, "
                              "so no LUT (use objectives and constraints that need none: accuracy, size_bytes, "
                              "bitops)")
        cls = BACKENDS.get(self.backend, f"target '{self.name}'")
        backend = cls(threads=threads, **{**self.backend_options, **options})
        backend.require()
        return backend

    def check_bits(self, bits: Bits, where: str) -> None:
        if tuple(bits) not in self.bit_options:
            raise ConfigError(f"{where}: target '{self.name}' executes W/A bits "
                              f"{[list(b) for b in self.bit_options]}, not {list(bits)}")


# ---------------------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Objective:
    """A search objective: its name, direction, and whether it is cheap (no true evaluation needed).

    ``compute(problem, candidate, layers)`` returns the value for a candidate; cheap objectives take only
    the candidate's layers and the LUT, the accuracy objective needs a true evaluation. ``needs_lut`` says
    whether ``compute`` reads the problem's LUT (a search on an analytic target offers only those that do not).
    """

    name: str
    sense: Literal["min", "max"]
    cheap: bool = True
    compute: Callable[..., float] | None = field(default=None, compare=False, repr=False)
    unit: str = ""
    description: str = ""
    needs_lut: bool = True


# ---------------------------------------------------------------------------------------------- protocols
@runtime_checkable
class Supernet(Protocol):
    """A trained weight-sharing supernet over a ``SearchSpace`` (what a family builds).

    ``layers(candidate)`` must be fast: search calls it for every candidate. bitnas checks it against the
    exported graph of ``extract(candidate)``, so a wrong hand-written layer list is caught.
    """

    space: SearchSpace

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Every layer of the candidate, in forward order, with its bits (float layers at 32)."""

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float layer any candidate can produce (what a LUT must hold)."""

    def extract(self, candidate: Candidate) -> Any:
        """A static ``nn.Module`` with inherited weights, equal to the supernet with ``candidate`` active."""

    # Optional: ``quantization_aware = True`` when ``extract`` returns a subnet with the supernet's own trained
    # quantizers (LSQ/BatchQuant, QFA); its accuracy is then measured as extracted and calibrated
    # (``bitnas.supernets.qat.calibrate``) instead of by post-training quantization.


@runtime_checkable
class Family(Protocol):
    """A model family: named spaces and how to build, train and extract its supernet.

    ``spaces()`` maps a space name to a description; ``build(space, in_channels, image_size, num_classes)``
    returns an untrained ``Supernet``; ``train(supernet, data, settings, checkpoint, progress)`` trains it
    (resuming from ``checkpoint``) and returns a history dict with a ``fingerprint``.
    """

    name: str

    def spaces(self) -> dict[str, str]: ...

    def build(self, space: str, in_channels: int, image_size: int, num_classes: int) -> Supernet: ...

    def train(self, supernet: Any, data: Any, settings: Any, checkpoint: Any, progress: Any) -> dict[str, Any]: ...


@runtime_checkable
class TaskData(Protocol):
    """A data set: float32 NCHW splits ``"train"`` and ``"val"`` with their preprocessing already applied,
    and the metric's labels. Every command reads data through these members only, so a set may be held in
    memory (``bitnas.supernets.data.Dataset``) or decoded from files as it is read (``ImageFolderDataset``).

    ``batches`` yields torch (x float32 NCHW, y int64) batches, shuffled by ``rng`` when given, else in a
    fixed order; ``count(split)`` is the split's size; ``head(split, n)`` its first ``n`` images and labels
    in that fixed order as numpy arrays (``None``: all); ``digest()`` a string that changes when the data do
    (caches key on it). An optional ``preprocess`` (``bitnas.supernets.data.Preprocess``) says how a raw
    image becomes the input; the artifact's manifest records it.
    """

    name: str
    num_classes: int

    @property
    def in_channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def batches(self, split: str, batch_size: int, rng: Any = None) -> Iterator[tuple[Any, Any]]: ...

    def count(self, split: str) -> int: ...

    def head(self, split: str, n: int | None = None) -> tuple[Any, Any]: ...

    def digest(self) -> str: ...


# ---------------------------------------------------------------------------------------------- registries
FAMILIES: Registry[Family] = Registry("families", ["bitnas.supernets.*"], "family")
DATASETS: Registry[Callable[..., TaskData]] = Registry("datasets", ["bitnas.supernets.data"])
TARGETS: Registry[Target] = Registry("targets", ["bitnas.backends.*"])
BACKENDS: Registry[type] = Registry("backends", ["bitnas.backends.*"])
PASSES: Registry[type] = Registry("passes", ["bitnas.passes"], "pass")
SEARCHERS: Registry[type] = Registry("searchers", ["bitnas.searchers"])
PREDICTORS: Registry[type] = Registry("predictors", ["bitnas.searchers.predictors"], "predictor")
OBJECTIVES: Registry[Objective] = Registry("objectives", ["bitnas.objectives"])

__all__ = ["BACKENDS", "DATASETS", "FAMILIES", "OBJECTIVES", "PASSES", "PREDICTORS", "SEARCHERS", "TARGETS",
           "Family", "Objective", "Registry", "Supernet", "Target", "TaskData", "load_reference"]
