"""Core types: search-space genes, ``SearchSpace``, ``Candidate`` and ``LayerSpec``."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol

import numpy as np

from bitnas.errors import InternalError, SpaceError

Bits = tuple[int, int]  # (w_bits, a_bits); 32 means float
FLOAT_BITS: Bits = (32, 32)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


@dataclass(frozen=True)
class Gene:
    """One named, finite choice of the space.

    ``active_if=(controller, threshold)`` makes the gene matter only while the controller gene's value is
    at least ``threshold`` (e.g. the third block of a stage exists only when the stage depth is >= 3).
    ``active_if`` may also be a tuple of such pairs, all of which must hold; a controller is an earlier
    arch gene and may itself be conditional (e.g. the expansion conv of a repeated block exists only when
    the repetition exists and the block's expansion factor is at least 2).
    """

    name: str
    options: tuple
    kind: Literal["arch", "policy"] = "arch"
    active_if: tuple[str, Any] | tuple[tuple[str, Any], ...] | None = None

    @property
    def conditions(self) -> tuple[tuple[str, Any], ...]:
        """The (controller, threshold) pairs that must all hold for the gene to be active."""
        if self.active_if is None:
            return ()
        if isinstance(self.active_if[0], str):
            return (self.active_if,)
        return tuple(self.active_if)

    def __post_init__(self) -> None:
        if not self.options:
            raise InternalError(f"gene '{self.name}' has no options")
        if len(set(self.options)) != len(self.options):
            raise InternalError(f"gene '{self.name}' has duplicate options {self.options}")


@dataclass(frozen=True)
class Candidate:
    """An (architecture, bitwidth policy) pair; immutable, identified by a stable content hash."""

    arch: tuple[tuple[str, Any], ...]
    policy: tuple[tuple[str, Bits], ...]

    @staticmethod
    def make(arch: Mapping[str, Any], policy: Mapping[str, Bits]) -> Candidate:
        return Candidate(
            arch=tuple(sorted((k, _from_json(v)) for k, v in arch.items())),
            policy=tuple(sorted((k, tuple(int(b) for b in v)) for k, v in policy.items())),
        )

    @property
    def arch_dict(self) -> dict[str, Any]:
        return dict(self.arch)

    @property
    def policy_dict(self) -> dict[str, Bits]:
        return dict(self.policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "arch": {k: _jsonable(v) for k, v in self.arch},
            "policy": {k: list(v) for k, v in self.policy},
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Candidate:
        try:
            return Candidate.make(data["arch"], {k: tuple(v) for k, v in data["policy"].items()})
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SpaceError(f"malformed candidate record (needs 'arch' and 'policy' maps): {exc}") from exc

    @cached_property
    def id(self) -> str:
        payload = json.dumps(
            {"arch": {k: _jsonable(v) for k, v in self.arch}, "policy": {k: list(v) for k, v in self.policy}},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LayerSpec:
    """What a latency table needs to know about one layer; ``key`` is its LUT key.

    Each op is one pattern of the exported ONNX graph, and the profiler builds exactly that pattern:

    - ``conv``: Conv (BatchNorm folded, padding ``k // 2`` for odd kernels, none for even ones) on an NCHW map
      of ``hw`` x ``hw``, then the activation ``act``, then
      (``residual``) an Add of the block input. With ``act_after_add`` the Add comes before the activation
      (ResNet's bottleneck: Conv, Add, Relu).
    - ``linear``: GlobalAveragePool of an ``hw`` x ``hw`` map, Flatten, Gemm (optional ``act``).
    - ``dense``: a fully connected layer applied to each of ``hw`` tokens of width ``cin`` (Gemm on the
      2-D view), optional ``act`` and residual Add.
    - ``attention``: scaled dot-product attention over ``hw`` tokens of width ``cin`` in ``groups`` heads
      (MatMul, Softmax, MatMul; no weights).
    - ``se``: squeeze-and-excitation on a ``cin``-channel ``hw`` x ``hw`` map: GlobalAveragePool, Gemm to
      ``cout`` channels, Relu, Gemm back to ``cin``, HardSigmoid, Mul with the map. Float.
    - ``layernorm``: LayerNormalization over the ``cin`` features of each of ``hw`` tokens. Float.
    - ``maxpool``, ``avgpool``: MaxPool or AveragePool of ``kernel`` x ``kernel`` windows at ``stride`` on a
      ``cin``-channel map (``cout == cin``), padded as a conv is. Float (no weights).

    ``name`` is the layer's name in the network and is not part of the key.
    """

    op: Literal["conv", "linear", "dense", "attention", "se", "layernorm", "maxpool", "avgpool"]
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    hw: int = 1
    act: Literal["none", "relu", "relu6", "hswish", "gelu"] = "none"
    residual: bool = False
    w_bits: int = 32
    a_bits: int = 32
    name: str = field(default="", compare=False)
    act_after_add: bool = False

    @property
    def bits(self) -> Bits:
        return (self.w_bits, self.a_bits)

    @property
    def quantized(self) -> bool:
        """Whether the layer runs between quantized activations (any W/A other than float)."""
        return self.a_bits < 32 or self.w_bits < 32

    @property
    def key(self) -> str:
        return (
            f"{self.op}|cin{self.cin}|cout{self.cout}|k{self.kernel}|s{self.stride}|g{self.groups}"
            f"|hw{self.hw}|{self.act}|res{int(self.residual)}{'|aa' if self.act_after_add else ''}"
            f"|w{self.w_bits}a{self.a_bits}"
        )

    @property
    def out_hw(self) -> int:
        if self.op == "linear":
            return 1
        if self.op in ("dense", "attention", "se", "layernorm"):
            return self.hw
        return (self.hw + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_channels(self) -> int:
        """Channels (or features) of the output: an SE block's output has its input's, not its squeeze width."""
        return self.cin if self.op in ("se", "attention", "layernorm") else self.cout

    @property
    def padding(self) -> int:
        """Conv padding: 'same' (k // 2) for odd kernels; none for even ones (patch embeddings, k == stride)."""
        return self.kernel // 2 if self.kernel % 2 else 0

    @property
    def weight_count(self) -> int:
        if self.op in ("linear", "dense"):
            return self.cin * self.cout
        if self.op == "se":
            return 2 * self.cin * self.cout
        if self.op == "layernorm":
            return 2 * self.cin
        if self.op in ("attention", "maxpool", "avgpool"):
            return 0
        return self.cout * (self.cin // self.groups) * self.kernel * self.kernel

    @property
    def macs(self) -> int:
        if self.op == "linear":
            return self.cin * self.cout + self.cin * self.hw * self.hw
        if self.op == "dense":
            return self.cin * self.cout * self.hw
        if self.op == "attention":
            return 2 * self.hw * self.hw * self.cin
        if self.op == "se":
            return self.weight_count + self.cin * self.hw * self.hw * 2
        if self.op == "layernorm":
            return 4 * self.cin * self.hw
        if self.op in ("maxpool", "avgpool"):  # one compare or add per window element
            return self.cin * self.kernel * self.kernel * self.out_hw * self.out_hw
        return self.weight_count * self.out_hw * self.out_hw

    @property
    def stored_w_bits(self) -> int:
        """Bits a weight takes in the artifact: 2-4-bit weights packed as INT4, 5-7-bit ones as INT8."""
        if self.w_bits <= 4:
            return 4
        return 8 if self.w_bits < 8 else self.w_bits

    @property
    def size_bytes(self) -> float:
        """Weights as the artifact stores them (``stored_w_bits``) plus a float32 bias per output channel."""
        if self.op in ("attention", "maxpool", "avgpool"):
            return 0.0
        if self.op == "se":
            return self.weight_count * self.stored_w_bits / 8.0 + (self.cin + self.cout) * 4
        if self.op == "layernorm":
            return self.weight_count * 4.0
        return self.weight_count * self.stored_w_bits / 8.0 + self.cout * 4

    def with_bits(self, bits: Bits) -> LayerSpec:
        return LayerSpec(
            op=self.op, cin=self.cin, cout=self.cout, kernel=self.kernel, stride=self.stride,
            groups=self.groups, hw=self.hw, act=self.act, residual=self.residual,
            w_bits=int(bits[0]), a_bits=int(bits[1]), name=self.name, act_after_add=self.act_after_add,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op, "cin": self.cin, "cout": self.cout, "kernel": self.kernel, "stride": self.stride,
            "groups": self.groups, "hw": self.hw, "act": self.act, "residual": self.residual,
            "w_bits": self.w_bits, "a_bits": self.a_bits,
            **({"act_after_add": True} if self.act_after_add else {}),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> LayerSpec:
        return LayerSpec(**{k: data[k] for k in LayerSpec.__dataclass_fields__ if k in data})


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


class SearchSpace:
    """Named, typed choices for the architecture and each quantizable layer's (w_bits, a_bits).

    Every searcher works on this one encoding: ``encode``/``decode`` map candidates to a fixed-length
    vector of option indices (``ordinal``) or its one-hot expansion (``onehot``, as in APQ). Genes that
    are inactive for a candidate (e.g. choices of a block that the depth skips) are canonicalized to their
    first option, so equivalent candidates share one id.
    """

    def __init__(self, name: str, genes: Sequence[Gene], description: str = ""):
        self.name = name
        self.description = description
        self.genes: tuple[Gene, ...] = tuple(genes)
        self._by_name = {g.name: g for g in self.genes}
        if len(self._by_name) != len(self.genes):
            raise InternalError(f"space '{name}' has duplicate gene names")
        seen: set[str] = set()
        self._controllers: set[str] = set()
        for g in self.genes:
            for ctrl_name, _ in g.conditions:
                ctrl = self._by_name.get(ctrl_name)
                if ctrl is None or ctrl.name not in seen or ctrl.kind != "arch":
                    raise InternalError(
                        f"space '{name}': gene '{g.name}' must be controlled by earlier arch genes"
                    )
                self._controllers.add(ctrl_name)
            seen.add(g.name)
        self.arch_genes = tuple(g for g in self.genes if g.kind == "arch")
        self.policy_genes = tuple(g for g in self.genes if g.kind == "policy")
        self._offsets = np.cumsum([0] + [len(g.options) for g in self.genes])

    # ----------------------------------------------------------------- structure
    def gene(self, name: str) -> Gene:
        try:
            return self._by_name[name]
        except KeyError:
            raise SpaceError(f"space '{self.name}' has no gene '{name}'") from None

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def onehot_size(self) -> int:
        return int(self._offsets[-1])

    def is_active(self, gene: Gene, values: Mapping[str, Any]) -> bool:
        for ctrl, threshold in gene.conditions:
            if not values[ctrl] >= threshold or not self.is_active(self._by_name[ctrl], values):
                return False
        return True

    def _components(self) -> list[list[Gene]]:
        """Genes grouped by shared controllers (connected components of the control relation)."""
        parent = {g.name: g.name for g in self.genes}

        def find(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for g in self.genes:
            for ctrl, _ in g.conditions:
                parent[find(g.name)] = find(ctrl)
        groups: dict[str, list[Gene]] = {}
        for g in self.genes:
            groups.setdefault(find(g.name), []).append(g)
        return list(groups.values())

    def _count(self, kinds: tuple[str, ...]) -> int:
        """Distinct assignments of the genes of ``kinds``; controllers of other kinds take their largest option.

        Within each group of genes sharing controllers, every canonical assignment of the controllers is
        enumerated (an inactive controller only at its first option) and the active leaves multiplied.
        """
        total = 1
        for comp in self._components():
            ctrls = [g for g in comp if g.name in self._controllers]
            leaves = [g for g in comp if g.name not in self._controllers]
            if not ctrls:
                total *= _prod(len(g.options) if g.kind in kinds else 1 for g in leaves)
                continue
            choices = [g.options if g.kind in kinds else (max(g.options),) for g in ctrls]
            if _prod(len(c) for c in choices) > 2_000_000:
                raise InternalError(f"space '{self.name}': too many controller assignments to count exactly")
            subtotal = 0
            for combo in itertools.product(*choices):
                values = {g.name: v for g, v in zip(ctrls, combo)}
                if any(not self.is_active(g, values) and values[g.name] != c[0] for g, c in zip(ctrls, choices)):
                    continue
                subtotal += _prod(len(g.options) if g.kind in kinds else 1 for g in leaves
                                  if self.is_active(g, values))
            total *= subtotal
        return total

    def cardinality(self) -> dict[str, Any]:
        """Exact sizes, computed from the genes: distinct architectures, policies, joint candidates."""
        arch = self._count(("arch",))
        policy = self._count(("policy",))  # controllers are arch genes: the largest architecture
        joint = self._count(("arch", "policy"))
        return {
            "arch_cardinality": arch,
            "policy_cardinality": policy,
            "joint_cardinality": joint,
            "log10_arch": math.log10(arch),
            "log10_policy": math.log10(policy) if policy else 0.0,
            "log10_joint": math.log10(joint),
        }

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "description": self.description}
        info.update(self.cardinality())
        info["policy_cardinality_note"] = "bit policies of the largest architecture"
        info["n_genes"] = self.n_genes
        info["encoding_length"] = {"ordinal": self.n_genes, "onehot": self.onehot_size}
        info["choices"] = [
            {
                "name": g.name,
                "kind": g.kind,
                "options": [_jsonable(o) for o in g.options],
                **({"active_if": [{"gene": c, "at_least": _jsonable(t)} for c, t in g.conditions]}
                   if g.active_if else {}),
            }
            for g in self.genes
        ]
        return info

    # ----------------------------------------------------------------- candidates
    def _candidate(self, values: Mapping[str, Any]) -> Candidate:
        values = dict(values)
        for g in self.genes:
            if not self.is_active(g, values):
                values[g.name] = g.options[0]
        arch = {g.name: values[g.name] for g in self.arch_genes}
        policy = {g.name: values[g.name] for g in self.policy_genes}
        return Candidate.make(arch, policy)

    def values(self, candidate: Candidate) -> dict[str, Any]:
        values = {**candidate.arch_dict, **candidate.policy_dict}
        for name in values:
            if name not in self._by_name:
                raise SpaceError(f"candidate {candidate.id} has gene '{name}' unknown to space '{self.name}'")
        for g in self.genes:
            if g.name not in values:
                raise SpaceError(f"candidate {candidate.id} lacks gene '{g.name}' of space '{self.name}'")
            if values[g.name] not in g.options:
                raise SpaceError(
                    f"candidate {candidate.id}: gene '{g.name}' = {values[g.name]!r} is not one of {g.options}"
                )
        return values

    def validate(self, candidate: Candidate) -> Candidate:
        """Return the canonical form of ``candidate``; raise ``SpaceError`` naming the gene at fault."""
        return self._candidate(self.values(candidate))

    def make(self, arch: Mapping[str, Any], policy: Mapping[str, Bits] | None = None) -> Candidate:
        """Build a candidate; policy genes not given default to float."""
        values = {}
        for g in self.genes:
            if g.kind == "arch":
                values[g.name] = arch[g.name] if g.name in arch else g.options[0]
            else:
                default = FLOAT_BITS if FLOAT_BITS in g.options else g.options[-1]
                values[g.name] = tuple((policy or {}).get(g.name, default))
        unknown = set(arch) - set(self._by_name)
        if unknown:
            raise SpaceError(f"space '{self.name}' has no gene(s) {sorted(unknown)}")
        return self.validate(self._candidate(values))

    def sample(self, rng: np.random.Generator) -> Candidate:
        return self._candidate({g.name: g.options[rng.integers(len(g.options))] for g in self.genes})

    def largest(self, policy_bits: Bits | None = None) -> Candidate:
        values = {g.name: max(g.options) if g.kind == "arch" else g.options[0] for g in self.genes}
        if policy_bits is not None:
            values.update({g.name: tuple(policy_bits) for g in self.policy_genes})
        return self._candidate(values)

    def smallest(self, policy_bits: Bits | None = None) -> Candidate:
        values = {g.name: min(g.options) if g.kind == "arch" else g.options[0] for g in self.genes}
        if policy_bits is not None:
            values.update({g.name: tuple(policy_bits) for g in self.policy_genes})
        return self._candidate(values)

    def mutate(self, candidate: Candidate, rng: np.random.Generator, prob: float = 0.1) -> Candidate:
        values = self.values(candidate)
        for g in self.genes:
            if rng.random() < prob:
                values[g.name] = g.options[rng.integers(len(g.options))]
        return self._candidate(values)

    def crossover(self, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
        va, vb = self.values(a), self.values(b)
        return self._candidate({g.name: (va if rng.random() < 0.5 else vb)[g.name] for g in self.genes})

    # ----------------------------------------------------------------- encoding
    def encode(self, candidate: Candidate, kind: Literal["ordinal", "onehot"] = "ordinal") -> np.ndarray:
        values = self.values(candidate)
        idx = np.array([g.options.index(values[g.name]) for g in self.genes], dtype=np.int64)
        if kind == "ordinal":
            return idx
        out = np.zeros(self.onehot_size, dtype=np.float32)
        out[self._offsets[:-1] + idx] = 1.0
        return out

    def decode(self, vector: Iterable[float], kind: Literal["ordinal", "onehot"] = "ordinal") -> Candidate:
        vec = np.asarray(list(vector), dtype=np.float64)
        if kind == "onehot":
            if vec.shape != (self.onehot_size,):
                raise SpaceError(f"one-hot vector of length {vec.shape} for space of {self.onehot_size}")
            idx = [int(np.argmax(vec[self._offsets[i]:self._offsets[i + 1]])) for i in range(self.n_genes)]
        else:
            if vec.shape != (self.n_genes,):
                raise SpaceError(f"ordinal vector of length {vec.shape} for space of {self.n_genes} genes")
            idx = [min(max(int(round(v)), 0), len(g.options) - 1) for v, g in zip(vec.tolist(), self.genes)]
        return self._candidate({g.name: g.options[i] for g, i in zip(self.genes, idx)})

    def canonical(self, X: np.ndarray) -> np.ndarray:
        """Ordinal rows ``X`` (n x genes; floats are rounded and clipped as ``decode`` does) with every inactive
        gene at its first option: rows of one candidate become equal, as their ``decode`` would."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise SpaceError(f"ordinal matrix of shape {X.shape} for space of {self.n_genes} genes")
        X = np.clip(np.rint(X), 0, self.upper_bounds()).astype(np.int64)
        col = {g.name: i for i, g in enumerate(self.genes)}
        active = np.ones(X.shape, dtype=bool)
        for j, g in enumerate(self.genes):
            for ctrl, threshold in g.conditions:
                c = col[ctrl]
                ok = np.array([v >= threshold for v in self.genes[c].options])
                active[:, j] &= active[:, c] & ok[X[:, c]]
        return np.where(active, X, 0)

    def onehot_matrix(self, X: np.ndarray) -> np.ndarray:
        """One-hot rows of canonical ordinal rows ``X``, as ``encode(decode(x), "onehot")`` gives them."""
        X = np.asarray(X, np.int64)
        out = np.zeros((len(X), self.onehot_size), dtype=np.float32)
        out[np.arange(len(X))[:, None], self._offsets[:-1][None, :] + X] = 1.0
        return out

    def upper_bounds(self) -> np.ndarray:
        return np.array([len(g.options) - 1 for g in self.genes], dtype=np.int64)


class Supernet(Protocol):
    """A trained weight-sharing supernet over a ``SearchSpace``."""

    space: SearchSpace

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Every quantizable layer of the candidate, in forward order, with its bits."""

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float layer any candidate can produce (what a LUT must hold)."""

    def extract(self, candidate: Candidate) -> Any:
        """A static ``nn.Module`` with inherited weights, equal to the supernet with ``candidate`` active."""
