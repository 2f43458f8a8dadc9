"""The latency lookup table: file format, validation, device check and queries.

A network's predicted latency is the sum of its units' latencies. Each entry was measured as a one-layer
(or one-block) model, so each includes the runtime's fixed per-call cost once; the table stores that cost
(the latency of a trivial model) and counts it once per network instead of once per entry.

Fusion: a block of a network (an inverted-residual block, a bottleneck with its projection shortcut, an SE
block: consecutive conv or SE layers of one module scope that chain into each other) is the unit a runtime
fuses. A block measured
whole is used as measured; any other block is its layers' sum times a learned correction (a
gradient-boosted regressor over the block's features, fitted on the measured blocks), and the prediction
carries the regressor's cross-validated error as its uncertainty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitnas.errors import LutError, UnknownLayerError
from bitnas.fingerprint import same_device
from bitnas.io import atomic_write_json
from bitnas.space import LayerSpec

FORMAT = "bitnas-lut"
VERSION = 2
READABLE_VERSIONS = (1, 2)
STATS = ("median", "p10", "mean")


def block_key(specs: Iterable[LayerSpec]) -> str:
    """The LUT key of a fusion unit: its layers' keys joined."""
    return "block:" + "+".join(s.key for s in specs)


# ops a fusion unit chains (one input, one output, spatial); token ops (dense, attention) stay lone layers
UNIT_OPS = frozenset({"conv", "se"})


def scope(name: str) -> str:
    """The module scope of a layer name: ``s1.b0.dw`` -> ``s1.b0``; empty for a top-level layer."""
    return name.rpartition(".")[0]


def _pool_starts_shortcut(unit: list[LayerSpec], s: LayerSpec) -> bool:
    """True when ``s`` is the average pool that starts a downsampling shortcut (once-for-all ResNet's
    ``avgpool_conv``: a ``stride`` x ``stride`` pool, then a 1x1 conv) closing the block ``unit``."""
    first, last = unit[0], unit[-1]
    return (s.op == "avgpool" and s.kernel == s.stride > 1 and last.op == "conv" and last.residual
            and bool(scope(s.name)) and scope(s.name) == scope(last.name) and s.cin == first.cin
            and s.hw == first.hw and s.out_hw == last.out_hw)


def is_shortcut(unit: list[LayerSpec], s: LayerSpec) -> bool:
    """True when ``s`` continues the projection shortcut that closes the block ``unit``: a conv of the same
    module scope that reads the unit's input and gives what the unit's last layer, a residual one, adds; or
    the average pool that starts a pooled shortcut, and then the 1x1 conv that reads that pool."""
    if len(unit) > 1 and unit[-1].op == "avgpool" and _pool_starts_shortcut(unit[:-1], unit[-1]):
        pool, res = unit[-1], unit[-2]
        return (s.op == "conv" and s.kernel == 1 and s.stride == 1 and scope(s.name) == scope(pool.name)
                and s.cin == pool.cin and s.hw == pool.out_hw and s.cout == res.out_channels
                and s.out_hw == res.out_hw)
    first, last = unit[0], unit[-1]
    if _pool_starts_shortcut(unit, s):
        return True
    return (s.op == "conv" and last.op == "conv" and last.residual and bool(scope(s.name))
            and scope(s.name) == scope(last.name) and s.cin == first.cin and s.hw == first.hw
            and s.cout == last.out_channels and s.out_hw == last.out_hw)


def shortcut_len(specs: list[LayerSpec] | tuple[LayerSpec, ...]) -> int:
    """How many of a fusion unit's last layers are its shortcut (they read the unit's input): 0, 1 (a
    projection conv) or 2 (an average pool and its 1x1 conv)."""
    specs = list(specs)
    n = len(specs)
    if n >= 3 and specs[-2].op == "avgpool" and _pool_starts_shortcut(specs[:-2], specs[-2]) \
            and is_shortcut(specs[:-1], specs[-1]):
        return 2
    if n >= 2 and specs[-1].op == "conv" and specs[-2].op != "avgpool" and is_shortcut(specs[:-1], specs[-1]):
        return 1
    return 0


def extends_unit(unit: list[LayerSpec], s: LayerSpec) -> bool:
    """True when ``s`` continues ``unit``: same module scope, and it reads what the unit's last layer gives,
    or it is (part of) the block's projection shortcut (``is_shortcut``)."""
    last = unit[-1]
    chained = (s.op in UNIT_OPS and last.op in UNIT_OPS and bool(scope(s.name)) and scope(s.name) == scope(last.name)
               and s.cin == last.out_channels and s.hw == last.out_hw)
    return chained or is_shortcut(unit, s)


def group_units(layers: list[LayerSpec]) -> list[list[LayerSpec]]:
    """Split a network's layers (in forward order) into fusion units: blocks of two or more layers of one
    module scope that chain, a bottleneck's projection shortcut (which reads the block input) last, and lone
    layers."""
    units: list[list[LayerSpec]] = []
    for s in layers:
        if units and extends_unit(units[-1], s):
            units[-1].append(s)
        else:
            units.append([s])
    out: list[list[LayerSpec]] = []
    for u in units:  # a pool that started no complete shortcut is a lone layer
        if len(u) > 1 and u[-1].op == "avgpool":
            out += [u[:-1], u[-1:]]
        else:
            out.append(u)
    return out


def block_features(specs: list[LayerSpec], layer_ms: list[float]) -> list[float]:
    """Features of a block of any length for the fusion regressor."""
    ms = np.log(np.maximum(layer_ms, 1e-4))
    int8 = [s.quantized for s in specs]  # quantized activations (INT8 in the common case)
    # weights stored packed as INT4 (2-4 bits): a runtime may fold them to float weights when it compiles
    # the model (OpenVINO) or dequantize them at every call (ONNX Runtime); either way a block of them
    # fuses unlike an INT8 block whose layers cost the same
    packed = [s.quantized and s.stored_w_bits == 4 for s in specs]
    return [float(len(specs)), np.log(specs[0].cin), np.log(specs[-1].out_channels), np.log(max(s.out_channels for s in specs)),
            float(max(s.kernel for s in specs)), float(max(s.stride for s in specs)), np.log(specs[0].hw),
            float(any(s.residual for s in specs)), float(sum(s.groups > 1 for s in specs)),
            float(sum(s.op == "se" for s in specs)), float(sum(s.kernel > 1 and s.groups == 1 for s in specs)),
            float(np.mean(int8)), float(sum(a != b for a, b in zip(int8, int8[1:]))), float(int8[0]), float(int8[-1]),
            float(ms.max()), float(ms.min()), float(np.log(max(sum(layer_ms), 1e-4))), float(np.mean(packed))]


# changes when block_features does: a stored fusion model of other features is refitted at load
BLOCK_FEATURES_VERSION = 2


def _precision_switches(layers: list[LayerSpec]) -> float:
    """Places where the activation changes between float and quantized (graph input and output included)."""
    q = [False] + [s.quantized for s in layers] + [False]
    return float(sum(1 for a, b in zip(q, q[1:]) if a != b))


# name -> f(units_sum_ms, units): what a network-level calibration may regress measured latency on
NETWORK_FEATURES = {
    "units_sum_ms": lambda t, units: t,
    "units": lambda t, units: float(len(units)),  # runtime calls the per-unit measurements each paid
    "int8_boundaries": lambda t, units: float(sum(1 for a, b in zip(units, units[1:])
                                                  if a[-1].quantized and b[0].quantized)),
    "precision_switches": lambda t, units: _precision_switches([s for u in units for s in u]),
    "int8_layers": lambda t, units: float(sum(1 for u in units for s in u if s.quantized)),
    "mmacs_int8": lambda t, units: sum(s.macs for u in units for s in u if s.quantized) / 1e6,
    "mmacs_fp32": lambda t, units: sum(s.macs for u in units for s in u if not s.quantized) / 1e6,
    "one": lambda t, units: 1.0,
}


def _kind(s: LayerSpec) -> str:
    return "dw" if s.groups > 1 else "pw" if s.kernel == 1 and s.op == "conv" else "other"


_LAYER_STATS = {"layers": lambda s: 1.0, "mmacs": lambda s: s.macs / 1e6,
                "kacts": lambda s: s.cout * s.out_hw ** 2 / 1e3, "residual": lambda s: float(s.residual)}


def _per_kind(stat: str, kind: str, int8: bool):
    """Sum of ``stat`` over the layers of one kind (pointwise, depthwise) at one precision."""
    value = _LAYER_STATS[stat]
    return lambda t, units: sum(value(s) for u in units for s in u
                                if _kind(s) == kind and (s.quantized) == int8)


PER_KIND_FEATURES = tuple(f"{stat}_{kind}_{prec}" for stat in ("layers", "mmacs", "kacts")
                          for kind in ("pw", "dw") for prec in ("int8", "fp32")) + ("residual_pw_int8",
                                                                                     "residual_pw_fp32")
NETWORK_FEATURES.update({name: _per_kind(*name.split("_")[:2], name.endswith("int8")) for name in PER_KIND_FEATURES})

# what a calibration fits by default: the LUT's per-unit sum, plus what a unit measured alone cannot see
# (layout changes and quantize/dequantize where precision switches, per-node dispatch, how a layer's
# compute and activations cost inside a whole graph, by kind and precision: a regressor over LayerSpec
# features, as nn-Meter learns per kernel); tables calibrated before these existed name the four they used
CALIBRATION_FEATURES = ("units_sum_ms", "units", "int8_boundaries", "precision_switches", "int8_layers",
                        "mmacs_int8", "mmacs_fp32", *PER_KIND_FEATURES, "one")
LEGACY_CALIBRATION_FEATURES = ("units_sum_ms", "units", "int8_boundaries", "one")
# the feature sets a default calibration chooses among, by leave-one-out error on its own subnets (a set
# needs 4 more subnets than it has features): few features generalize from tens of subnets, all of them
# only from many more
CALIBRATION_CANDIDATES = (("units_sum_ms", "one"), ("units_sum_ms", "precision_switches", "one"),
                          ("units_sum_ms", "precision_switches", "mmacs_int8", "mmacs_fp32", "one"),
                          LEGACY_CALIBRATION_FEATURES, CALIBRATION_FEATURES)


def network_features(units_sum_ms: float, units: list[list[LayerSpec]],
                     names: tuple[str, ...] | list[str] = CALIBRATION_FEATURES) -> list[float]:
    """The named network-level calibration features of a network split into fusion ``units``."""
    return [float(NETWORK_FEATURES[n](units_sum_ms, units)) for n in names]


class FusionModel:
    """Learned ratio of a block's measured latency to its layers' sum, with its cross-validated error.

    Fitted once, when the table is profiled, and stored in the table as plain arrays (the gradient-boosted
    trees' splits and leaf values: no pickle), so loading a table never refits it. ``digest`` names the
    measurements it was fitted on; a stored model whose digest differs from its table's is refitted.
    """

    def __init__(self, n: int, mean: float, sd: float, digest: str, trees: dict[str, Any] | None = None):
        self.n, self.mean, self.sd, self.digest = int(n), float(mean), float(sd), digest
        self.trees = trees  # None: fewer than 10 blocks, the ratio is exp(mean)
        if trees is not None:
            shape = tuple(trees["shape"])
            self._init = float(trees["init"])
            self._rate = float(trees["learning_rate"])
            self._feature = _unpack(trees["feature"], "<i4", shape).astype(np.int64)
            self._threshold = _unpack(trees["threshold"], "<f8", shape)
            self._left = _unpack(trees["left"], "<i4", shape).astype(np.int64)
            self._right = _unpack(trees["right"], "<i4", shape).astype(np.int64)
            self._value = _unpack(trees["value"], "<f8", shape)
            self._depth = int(trees["depth"])

    @staticmethod
    def fit(table: LatencyTable) -> FusionModel:
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.model_selection import KFold, cross_val_predict

        X, y = [], []
        for key, blk in table.blocks.items():
            specs = [table.spec_of(k, key) for k in blk["layers"]]
            layer_ms = [table.layer_latency(s) for s in specs]
            measured = table.block_latency(key)
            if measured <= 0 or sum(layer_ms) <= 0:
                continue
            X.append(block_features(specs, layer_ms))
            y.append(np.log(measured / sum(layer_ms)))
        digest = fusion_digest(table)
        if len(y) < 10:
            return FusionModel(len(y), float(np.mean(y)) if y else 0.0, float(np.std(y)) if len(y) > 1 else 0.1,
                               digest)
        X, y = np.array(X), np.array(y)
        reg = GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                                        random_state=0)
        cv = cross_val_predict(reg, X, y, cv=KFold(5, shuffle=True, random_state=0))
        reg.fit(X, y)
        return FusionModel(len(y), float(np.mean(y)), float(np.sqrt(np.mean((cv - y) ** 2))), digest,
                           _trees_of(reg))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "digest": self.digest, "trees": self.trees}

    @staticmethod
    def from_dict(data: Any, source: str) -> FusionModel:
        where = f"{source}: field 'fusion'"
        if not isinstance(data, dict):
            raise LutError(f"{where} is not an object")
        for key in ("n", "mean", "sd"):
            v = data.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise LutError(f"{where}.{key} is {v!r}, not a finite number")
        if not isinstance(data.get("digest"), str):
            raise LutError(f"{where}.digest is missing")
        trees = data.get("trees")
        if trees is not None:
            try:
                shape = tuple(int(v) for v in trees["shape"])
                if len(shape) != 2 or min(shape) < 1:
                    raise ValueError("shape")
                arrays = {k: _unpack(trees[k], dt, shape) for k, dt in (("feature", "<i4"), ("threshold", "<f8"),
                          ("left", "<i4"), ("right", "<i4"), ("value", "<f8"))}
                ok = (all(math.isfinite(float(trees[k])) for k in ("init", "learning_rate"))
                      and int(trees["depth"]) >= 1 and bool(np.isfinite(arrays["value"]).all())
                      and bool(np.isfinite(arrays["threshold"]).all()))
                ok = ok and all(((i == -1) | ((i > 0) & (i < shape[1]))).all() for i in (arrays["left"],
                                                                                         arrays["right"]))
                ok = ok and bool(((arrays["feature"] >= -2) & (arrays["feature"] < N_BLOCK_FEATURES)).all())
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise LutError(f"{where}.trees is malformed (expected its shape, base64 feature, threshold, left, "
                               "right and value arrays of that shape, init, learning_rate and depth)")
        return FusionModel(data["n"], data["mean"], data["sd"], data["digest"], trees)

    def log_ratios(self, X: np.ndarray) -> np.ndarray:
        """Log latency ratios of block feature rows ``X`` (n x features)."""
        X = np.atleast_2d(np.asarray(X, np.float64))
        if self.trees is None:
            return np.full(len(X), self.mean)
        # the trees split on float32 features, as they were fitted
        Xf = X.astype(np.float32).astype(np.float64)
        n_trees = self._feature.shape[0]
        node = np.zeros((len(X), n_trees), np.int64)
        cols = np.arange(n_trees)
        for _ in range(self._depth):
            feat = self._feature[cols, node]
            leaf = self._left[cols, node] < 0
            go_left = np.take_along_axis(Xf, np.maximum(feat, 0), axis=1) <= self._threshold[cols, node]
            nxt = np.where(go_left, self._left[cols, node], self._right[cols, node])
            node = np.where(leaf, node, nxt)
        return self._init + self._rate * self._value[cols, node].sum(axis=1)

    def ratio(self, specs: list[LayerSpec], layer_ms: list[float]) -> float:
        return float(np.exp(self.log_ratios(np.array([block_features(specs, layer_ms)]))[0]))


N_BLOCK_FEATURES = 19  # len(block_features(...)): the trees of a stored model index these


def _trees_of(reg: Any) -> dict[str, Any]:
    """A fitted squared-error GradientBoostingRegressor as padded node arrays (trees x nodes)."""
    trees = [est[0].tree_ for est in reg.estimators_]
    width = max(t.node_count for t in trees)

    def pad(get, fill):
        return [list(get(t)) + [fill] * (width - t.node_count) for t in trees]

    return {"init": float(np.ravel(reg.init_.constant_)[0]), "learning_rate": float(reg.learning_rate),
            "depth": int(max(t.max_depth for t in trees)),
            "shape": [len(trees), width],
            "feature": _pack(pad(lambda t: t.feature, -2), "<i4"),
            "threshold": _pack(pad(lambda t: t.threshold, 0.0), "<f8"),
            "left": _pack(pad(lambda t: t.children_left, -1), "<i4"),
            "right": _pack(pad(lambda t: t.children_right, -1), "<i4"),
            "value": _pack(pad(lambda t: t.value.reshape(-1), 0.0), "<f8")}


def _pack(rows: list, dtype: str) -> str:
    """An array as base64 of its little-endian bytes: the trees stay a few kB of JSON, not thousands of lines."""
    import base64

    return base64.b64encode(np.asarray(rows, dtype).tobytes()).decode("ascii")


def _unpack(text: Any, dtype: str, shape: tuple[int, int]) -> np.ndarray:
    import base64
    import binascii

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise ValueError("not base64") from None
    arr = np.frombuffer(raw, dtype)
    if arr.size != shape[0] * shape[1]:
        raise ValueError("wrong size")
    return arr.reshape(shape)


def fusion_digest(table: LatencyTable) -> str:
    """What a fusion model depends on: every block's and layer's measured statistic and the overhead."""
    import hashlib

    stat = f"{table.statistic}_ms"
    parts = [(k, float(b[stat])) for k, b in sorted(table.blocks.items())]
    parts += [(k, float(e[stat])) for k, e in sorted(table.entries.items())]
    parts.append(("overhead", table._overhead()))
    parts.append(("block_features", BLOCK_FEATURES_VERSION))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    target: str
    fingerprint: dict[str, Any]
    measurement: dict[str, Any]
    entries: dict[str, dict[str, Any]]
    overhead: dict[str, float] = field(default_factory=dict)
    space: str | None = None
    source: str = "<memory>"
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    _fusion: Any = field(default=None, init=False, repr=False, compare=False)
    _fusion_checked: bool = field(default=False, init=False, repr=False, compare=False)
    _unit_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def statistic(self) -> str:
        return self.measurement.get("statistic", "median")

    def _value(self, entry: dict[str, Any], what: str = "latency") -> float:
        return float(entry[f"{self.statistic}_ms"]) if what == "latency" else float(entry[what])

    def _overhead(self) -> float:
        return float(self.overhead.get(f"{self.statistic}_ms", 0.0))

    def spec_of(self, key: str, where: str = "") -> LayerSpec:
        entry = self.entries.get(key)
        if entry is None or "spec" not in entry:
            raise LutError(f"{self.source}: {where or 'table'} refers to layer '{key}', which has no entry")
        return LayerSpec.from_dict(entry["spec"])

    def layer_latency(self, spec: LayerSpec) -> float:
        """The layer's own latency: its entry less the per-call overhead (never negative)."""
        entry = self.entries.get(spec.key)
        if entry is None:
            raise UnknownLayerError(
                f"{self.source}: no entry for layer '{spec.name or '?'}' (key {spec.key}); "
                f"re-profile the target for this space"
            )
        return max(self._value(entry) - self._overhead(), 0.0)

    def block_latency(self, key: str) -> float:
        return max(self._value(self.blocks[key]) - self._overhead(), 0.0)

    def _sd(self, entry: dict[str, Any]) -> float:
        """Standard error of an entry's statistic, from its spread (IQR/1.349 ~ sd)."""
        n = max(int(entry.get("n", 1)), 1)
        return float(entry.get("iqr_ms", 0.0)) / 1.349 * 1.253 / math.sqrt(n)

    @property
    def fusion(self) -> FusionModel | None:
        """The table's fusion model: the stored one when it was fitted on these measurements, else fitted now
        (and stored with the table when it is next saved)."""
        if not self.blocks:
            return None
        if not self._fusion_checked:  # a table's measurements do not change once it is built
            if self._fusion is None or self._fusion.digest != fusion_digest(self):
                self._fusion = FusionModel.fit(self)
            self._fusion_checked = True
        return self._fusion

    def predict(self, layers: Iterable[LayerSpec]) -> dict[str, float]:
        """Predicted latency (ms) of a network made of ``layers``, with its uncertainty; energy if known.

        Keys: ``latency_ms``, ``latency_sd_ms`` (1 sigma), ``latency_layer_sum_ms`` (no fusion
        correction), ``blocks_measured``, ``blocks_corrected``, and ``energy_mj`` where the table has it.
        """
        layers = list(layers)
        ov = self._overhead()
        layer_sum = sum(self.layer_latency(s) for s in layers) + ov
        costs = self.unit_costs(layers)
        units = [c["unit"] for c in costs]
        latency = ov + sum(c["latency_ms"] for c in costs)
        var = sum(c["var"] for c in costs)
        out = {"latency_ms": latency, "latency_sd_ms": math.sqrt(var), "latency_layer_sum_ms": layer_sum,
               "blocks_measured": sum(c["how"] == "measured block" for c in costs),
               "blocks_corrected": sum(c["how"] == "corrected block" for c in costs)}
        if self.calibration:
            feats = network_features(latency - ov, units, self.calibration.get("features", LEGACY_CALIBRATION_FEATURES))
            coef = self.calibration["coef"]
            out["latency_uncalibrated_ms"] = latency
            # a linear fit can extrapolate below anything runnable: no network is faster than an empty call
            out["latency_ms"] = max(float(sum(c * f for c, f in zip(coef, feats))), ov)
            rel = float(self.calibration.get("residual_sd_rel", 0.0))
            out["latency_sd_ms"] = math.sqrt(var + (rel * out["latency_ms"]) ** 2)
        if all("energy_mj" in self.entries.get(s.key, {}) for s in layers) and layers:
            out["energy_mj"] = sum(float(self.entries[s.key]["energy_mj"]) for s in layers)
        return out

    def unit_costs(self, layers: Iterable[LayerSpec]) -> list[dict[str, Any]]:
        """The predicted latency of each fusion unit of a network (overhead excluded, before any network-level
        calibration): ``unit`` (its layers), ``latency_ms``, ``var`` (ms^2) and ``how`` it was priced
        (``measured block``, ``corrected block``: its layers' sum times the fusion correction, ``layer``)."""
        layers = list(layers)
        out = []
        for unit in group_units(layers) if self.blocks else [[s] for s in layers]:
            if len(unit) > 1:
                latency, var, how = self.unit_cost(unit)
                out.append({"unit": unit, "latency_ms": latency, "var": var, "how": how})
                continue
            for s in unit:
                latency, var, how = self.unit_cost([s])
                out.append({"unit": [s], "latency_ms": latency, "var": var, "how": how})
        return out

    def unit_cost(self, unit: list[LayerSpec]) -> tuple[float, float, str]:
        """(latency ms, variance ms^2, how it was priced) of one fusion unit, remembered per unit key."""
        key = block_key(unit) if len(unit) > 1 else unit[0].key
        hit = self._unit_memo.get(key)
        if hit is not None:
            return hit
        if len(unit) == 1:
            s = unit[0]
            hit = (self.layer_latency(s), self._sd(self.entries[s.key]) ** 2, "layer")
        elif key in self.blocks:
            hit = (self.block_latency(key), self._sd(self.blocks[key]) ** 2, "measured block")
        else:
            layer_ms = [self.layer_latency(s) for s in unit]
            est = sum(layer_ms) * self.fusion.ratio(unit, layer_ms)
            hit = (est, (est * self.fusion.sd) ** 2 + sum(self._sd(self.entries[s.key]) ** 2 for s in unit),
                   "corrected block")
        self._unit_memo[key] = hit
        return hit

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
            "blocks": self.blocks,
            "calibration": self.calibration,
            **({"fusion": self.fusion.to_dict()} if self.blocks else {}),
            "notes": self.notes,
        }

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @staticmethod
    def from_dict(data: Any, source: str = "<memory>") -> LatencyTable:
        if not isinstance(data, dict):
            raise LutError(f"{source}: a latency table must be a JSON object")
        if data.get("format") != FORMAT:
            raise LutError(f"{source}: field 'format' is {data.get('format')!r}, expected '{FORMAT}'")
        if data.get("version") not in READABLE_VERSIONS:
            raise LutError(f"{source}: field 'version' is {data.get('version')!r}; this bitnas reads "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")
        for key, typ in (("target", str), ("fingerprint", dict), ("measurement", dict), ("entries", dict)):
            if not isinstance(data.get(key), typ):
                raise LutError(f"{source}: field '{key}' missing or not a {typ.__name__}")
        stat = data["measurement"].get("statistic", "median")
        if stat not in STATS:
            raise LutError(f"{source}: field 'measurement.statistic' is {stat!r}, expected one of {STATS}")
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get(f"{stat}_ms"), (int, float)):
                raise LutError(f"{source}: entry '{key}' lacks a numeric '{stat}_ms'")
            for field_name in (f"{stat}_ms", "energy_mj"):
                if field_name in entry and not finite_non_negative(entry[field_name]):
                    raise LutError(f"{source}: entry '{key}' field '{field_name}' is {entry[field_name]!r}, not a "
                                   "finite non-negative number")
            if "spec" in entry:
                try:
                    spec = LayerSpec.from_dict(entry["spec"])
                except TypeError as exc:
                    raise LutError(f"{source}: entry '{key}' has a malformed 'spec' ({exc})") from None
                if spec.key != key:
                    raise LutError(f"{source}: entry '{key}' holds the spec of another layer ({spec.key})")
        blocks = data.get("blocks") or {}
        if not isinstance(blocks, dict):
            raise LutError(f"{source}: field 'blocks' is not an object")
        for key, blk in blocks.items():
            if not isinstance(blk, dict) or not finite_non_negative(blk.get(f"{stat}_ms")):
                raise LutError(f"{source}: block '{key}' lacks a non-negative numeric '{stat}_ms'")
            layers = blk.get("layers")
            if (not isinstance(layers, list) or len(layers) < 2 or any(k not in data["entries"] for k in layers)
                    or key != "block:" + "+".join(layers)):
                raise LutError(f"{source}: block '{key}' field 'layers' must list the keys of its 2 or more layers, "
                               "each present in 'entries'")
            if key != "block:" + "+".join(layers):
                raise LutError(f"{source}: block '{key}' does not match its 'layers'")
        overhead = data.get("overhead") or {}
        if not isinstance(overhead, dict) or any(not finite_non_negative(v) for v in overhead.values()):
            raise LutError(f"{source}: field 'overhead' must map statistics to finite non-negative numbers")
        table = LatencyTable(
            target=data["target"], fingerprint=data["fingerprint"], measurement=data["measurement"],
            entries=data["entries"], overhead=overhead, space=data.get("space"), source=source,
            blocks=blocks, notes=list(data.get("notes") or []), calibration=_calibration(data, source),
        )
        if data.get("fusion") is not None:
            table._fusion = FusionModel.from_dict(data["fusion"], source)
        return table

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


def finite_non_negative(value: Any) -> bool:
    """A finite number >= 0 that is not a boolean (JSON's NaN and Infinity parse as floats)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _calibration(data: dict[str, Any], source: str) -> dict[str, Any]:
    cal = data.get("calibration") or {}
    if not isinstance(cal, dict):
        raise LutError(f"{source}: field 'calibration' is not an object")
    if cal:
        names = cal.get("features", LEGACY_CALIBRATION_FEATURES)
        if not isinstance(names, (list, tuple)) or not names:
            raise LutError(f"{source}: field 'calibration.features' must be a non-empty list of feature names")
        unknown = [n for n in names if n not in NETWORK_FEATURES]
        if unknown:
            raise LutError(f"{source}: field 'calibration.features' names unknown feature(s) {unknown} "
                           f"(known: {', '.join(NETWORK_FEATURES)})")
        coef = cal.get("coef")
        if (not isinstance(coef, list) or len(coef) != len(names)
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                           for c in coef)):
            raise LutError(f"{source}: field 'calibration.coef' must hold {len(names)} finite numbers, one per "
                           f"feature")
    return cal


def overhead_summary(overheads: list[dict[str, float]]) -> dict[str, float]:
    """The per-call overhead over measurement chunks: the median of each statistic."""
    if not overheads:
        return {}
    out = {k: float(np.median([o[k] for o in overheads])) for k in ("median_ms", "p10_ms", "mean_ms", "iqr_ms")}
    out["n"] = int(sum(o.get("n", 0) for o in overheads))
    out["chunks"] = len(overheads)
    return out


def table_from_results(target: str, fingerprint: dict[str, Any], measurement: dict[str, Any], space: str | None,
                       items: Iterable[tuple[str, str, tuple[LayerSpec, ...]]], results: dict[str, dict[str, Any]],
                       overheads: list[dict[str, float]], notes: Iterable[str] = ()) -> LatencyTable:
    """A LatencyTable from (key, kind, specs) items and their measured results."""
    entries, blocks = {}, {}
    for key, kind, specs in items:
        if key not in results:
            raise LutError(f"results lack a measurement for {kind} '{key}'")
        r = {k: v for k, v in results[key].items() if k != "kind"}
        if kind == "layer":
            entries[key] = {"spec": specs[0].to_dict(), **r}
        elif kind == "block":
            blocks[key] = {"layers": [s.key for s in specs], **r}
    table = LatencyTable(target=target, fingerprint=fingerprint, measurement=measurement, entries=entries,
                         overhead=overhead_summary(overheads), space=space, blocks=blocks, notes=list(notes))
    return LatencyTable.from_dict(table.to_dict(), "<profiled>")
