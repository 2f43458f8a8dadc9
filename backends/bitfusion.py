"""BitFusion (Sharma et al., ISCA 2018): the released simulator's tiling, traffic and energy model.

The array has ``rows`` x ``cols`` fusion units of 2-bit BitBricks: rows reduce over input channels,
columns hold output channels, and at ``a`` x ``w`` bits each unit does
pf = floor(8/max(a,2)) * floor(8/max(w,2)) MACs per cycle. A conv (kernel K, square output O, stride S,
IC -> OC channels, batch B) is cut into tiles b, ow = oh, ic (powers of two) and oc (powers of two, at
least ``cols``); every tile must fit half of its buffer. For each tiling and each of the 120 orders of
the five tile loops, the promotion rule of the released simulator gives the DRAM fills (weights padded
to multiples of rows*pf along K*K*ic, input tiles with their halo, 32-bit partial-sum tiles read in and
written back), the tile that is loaded before compute starts and the one drained after it ends:
stall = max(0, ceil(middle DRAM bits / width) - compute) + ceil(first fill / width) + ceil(last drain /
width). The search keeps the fewest cycles, then the least energy. Energy = compute cycles x core pJ
per cycle (the same at every precision; stalls cost none) + per-bit reads and writes of each buffer
(weights read at w bits and inputs at a bits once per MAC, the output tile read and written at 32 bits
once per tile and once per DRAM transfer) + 15 pJ per DRAM bit. With the ``edge`` preset this
reproduces the released simulator's rows (bf_e_conf.ini); see benchmarks/bitfusion_fidelity.py.

bitnas's decisions where the released simulator has none:
- Grouped and depthwise convs: the simulator ignores groups (it would model a depthwise conv as a
  dense one, cin times too much work). bitnas maps one group at a time, an outermost loop over groups
  that every tensor depends on: each group is a small dense conv, which is what the array runs without
  packing groups block-diagonally (zero weights in the off-group units, not modelled by the simulator).
  A depthwise conv thus uses one column and reduces one channel per kernel tap, and (the simulator's
  tile convention) moves partial-sum tiles ``cols`` wide: slow and memory-bound, an upper bound.
- im2col: the simulator flattens the K*K*IC window onto the rows only for a network's first layer. A
  LayerSpec carries no position, so convs with ``cin <= im2col_max_cin`` (a network's RGB or gray input)
  use im2col; ``simulate(spec, im2col=...)`` overrides the rule.
- ``linear`` is an FC layer (K = O = 1; its global average pool costs nothing, as pooling does in the
  simulator); ``dense`` is an FC layer over ``hw`` tokens, counted as batch. Activations and residual
  adds cost nothing (the simulator only simulates convs and matmuls). Other ops are refused by name.
- Operands wider than ``max_bits`` take ceil(bits/max_bits) passes each (the simulator stops at 8 bits);
  operands narrower than a BitBrick run at BitBrick speed but move their own width.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from bitnas.api import Target
from bitnas.backends.base import Backend, Measurement, Runner, register, register_target
from bitnas.config import StrictModel, validate_config
from bitnas.errors import ConfigError, UnsupportedBackendError
from bitnas.space import LayerSpec

CONFIG_FILE = Path(__file__).with_name("bitfusion.yaml")
MODEL_VERSION = 2  # in the fingerprint: tables simulated by an older model are refused
BUFFERS = ("wbuf", "ibuf", "obuf")
LOOPS = ("B", "OW", "OH", "IC", "OC")
# which tensor's tile grows with each tile loop: weights (wbuf), inputs (ibuf), partial sums (obuf)
_DEPENDS = np.array([[False, False, False, True, True],
                     [True, True, True, True, False],
                     [True, True, True, False, True]])
# OW and OH always have equal trip counts and dependences: orders that only swap them are the same order
_ORDERS = np.array([p for p in itertools.permutations(range(5)) if p.index(1) < p.index(2)], dtype=np.int64)


class EnergyConfig(StrictModel):
    core_per_cycle: float = Field(gt=0, description="pJ per compute cycle of the whole array, at any precision")
    wbuf_read_per_bit: float = Field(ge=0, description="pJ per weight-buffer bit read")
    wbuf_write_per_bit: float = Field(ge=0, description="pJ per weight-buffer bit written")
    ibuf_read_per_bit: float = Field(ge=0, description="pJ per input-buffer bit read")
    ibuf_write_per_bit: float = Field(ge=0, description="pJ per input-buffer bit written")
    obuf_read_per_bit: float = Field(ge=0, description="pJ per output-buffer bit read")
    obuf_write_per_bit: float = Field(ge=0, description="pJ per output-buffer bit written")
    dram_per_bit: float = Field(ge=0, description="pJ per DRAM bit read or written")


class BitFusionConfig(StrictModel):
    source: str = Field(min_length=1, description="where the figures come from")
    published: bool = Field(description="true only for a configuration taken from the released simulator")
    rows: int = Field(ge=1, description="fusion units along the reduction (input-channel) dimension")
    cols: int = Field(ge=1, description="fusion units along the output-channel dimension")
    brick_bits: int = Field(2, ge=1, description="operand width of one BitBrick (narrowest precision)")
    max_bits: int = Field(8, ge=2, description="operand width one fusion unit handles in one pass")
    frequency_mhz: float = Field(gt=0, description="clock")
    wbuf_kb: float = Field(gt=0, description="weight buffer (KiB)")
    ibuf_kb: float = Field(gt=0, description="input buffer (KiB)")
    obuf_kb: float = Field(gt=0, description="output buffer (KiB)")
    dram_bits_per_cycle: int = Field(ge=1, description="DRAM interface width (bits per cycle)")
    psum_bits: int = Field(32, ge=8, description="partial-sum width in the output buffer and DRAM")
    double_buffered: bool = Field(True, description="tiles use half of each buffer; DRAM transfers overlap compute")
    batch: int = Field(1, ge=1, description="images per inference (costs are for the whole batch)")
    im2col_max_cin: int = Field(4, ge=0, description="convs with at most this many input channels use im2col")
    energy_pj: EnergyConfig


def load_presets(path: str | Path = CONFIG_FILE) -> tuple[str, dict[str, BitFusionConfig]]:
    """The default preset name and every preset of a BitFusion YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: BitFusion config not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("presets"), dict) or not data["presets"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty 'presets' mapping")
    presets = {name: validate_config(BitFusionConfig, cfg, f"{path}: presets.{name}")
               for name, cfg in data["presets"].items()}
    default = data.get("default", next(iter(presets)))
    if default not in presets:
        raise ConfigError(f"{path}: field 'default' names unknown preset {default!r}")
    return default, presets


def load_config(preset: str | None = None, path: str | Path = CONFIG_FILE) -> BitFusionConfig:
    """One preset (the file's default when ``preset`` is None)."""
    default, presets = load_presets(path)
    name = preset or default
    if name not in presets:
        raise ConfigError(f"{path}: no BitFusion preset {name!r} (known: {', '.join(sorted(presets))})")
    return presets[name]


@dataclass(frozen=True)
class ConvCall:
    """One layer as the simulator sees it: square output, one group's channels, ``groups`` times."""

    K: int
    O: int  # noqa: E741  (the simulator's name: output width = height)
    S: int
    IC: int
    OC: int
    a_bits: int
    w_bits: int
    batch: int
    im2col: bool = False
    groups: int = 1


@dataclass(frozen=True)
class LayerCost:
    """Simulated cost of one layer (the whole batch)."""

    cycles: int
    compute_cycles: int
    stall_cycles: int
    latency_ms: float
    energy_mj: float
    energy_core_mj: float
    energy_buffer_mj: float
    energy_dram_mj: float
    energy_buffers_mj: dict[str, float]
    dram_read_bits: int
    dram_write_bits: int
    dram_bytes: float
    sram_read_bits: dict[str, int]
    sram_write_bits: dict[str, int]
    macs: int
    macs_per_cycle_per_unit: float
    batch: int
    im2col: bool
    loop_order: str
    tile: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def _tile_sizes(n: int, least: int = 1) -> np.ndarray:
    """min(max(2^k, least), n) for 2^k up to the first power of two >= n."""
    top = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    return np.array(sorted({min(max(1 << k, least), n) for k in range(top + 1)}), dtype=np.int64)


class BitFusionModel:
    """The analytic model for one configuration."""

    def __init__(self, config: BitFusionConfig):
        self.cfg = config
        share = 0.5 if config.double_buffered else 1.0
        self._cap = np.array([config.wbuf_kb, config.ibuf_kb, config.obuf_kb]) * 1024 * 8 * share
        self._cache: dict[ConvCall, LayerCost] = {}

    def _rate(self, bits: int) -> int:
        c = self.cfg
        return c.max_bits // max(min(bits, c.max_bits), c.brick_bits)

    def _passes(self, bits: int) -> int:
        return math.ceil(bits / self.cfg.max_bits)

    def perf_factor(self, w_bits: int, a_bits: int) -> int:
        """MACs one fusion unit does per pass: floor(8/max(a,2)) * floor(8/max(w,2)) (operands clamped to 8)."""
        return self._rate(w_bits) * self._rate(a_bits)

    def speedup(self, w_bits: int, a_bits: int) -> float:
        """MACs per cycle of one fusion unit relative to 8x8 bits (below 1 for operands wider than 8 bits)."""
        return self.perf_factor(w_bits, a_bits) / (self._passes(w_bits) * self._passes(a_bits))

    def _check(self, spec: LayerSpec) -> None:
        where = f"layer '{spec.name or spec.key}'"
        if spec.w_bits >= 32 or spec.a_bits >= 32:
            raise UnsupportedBackendError(
                f"{where}: BitFusion has no float datapath (W{spec.w_bits}A{spec.a_bits}); "
                f"profile integer bitwidths (1..16)")
        if min(spec.w_bits, spec.a_bits) < 1:
            raise UnsupportedBackendError(f"{where}: bitwidths must be positive")
        if spec.op not in ("conv", "linear", "dense"):
            raise UnsupportedBackendError(
                f"{where}: BitFusion runs convolutions and fully connected layers, not op '{spec.op}'")
        if spec.op == "conv" and (spec.cin % spec.groups or spec.cout % spec.groups):
            raise UnsupportedBackendError(f"{where}: {spec.groups} groups do not divide {spec.cin}->{spec.cout}")

    def uses_im2col(self, spec: LayerSpec) -> bool:
        """Whether ``spec`` is simulated with im2col (a network's first layer: few input channels)."""
        return spec.op == "conv" and spec.groups == 1 and spec.cin <= self.cfg.im2col_max_cin

    def call(self, spec: LayerSpec, *, batch: int | None = None, im2col: bool | None = None) -> ConvCall:
        """The simulator call for ``spec``: one group's conv (FC layers as K = O = 1)."""
        self._check(spec)
        b = batch or self.cfg.batch
        if spec.op == "linear":
            return ConvCall(1, 1, 1, spec.cin, spec.cout, spec.a_bits, spec.w_bits, b)
        if spec.op == "dense":
            return ConvCall(1, 1, 1, spec.cin, spec.cout, spec.a_bits, spec.w_bits, b * spec.hw)
        use = self.uses_im2col(spec) if im2col is None else im2col
        g = spec.groups
        return ConvCall(spec.kernel, spec.out_hw, spec.stride, spec.cin // g, spec.cout // g, spec.a_bits,
                        spec.w_bits, b, bool(use), g)

    def _stats(self, c: ConvCall, tiles: np.ndarray, orders: np.ndarray) -> dict[str, np.ndarray]:
        """Cycles, traffic and energy of tilings ``tiles`` (T x [b, o, ic, oc]) in loop ``orders`` (P x 5).

        Arrays are T x P. Loop indices in an order are positions in LOOPS, outermost first.
        """
        cfg, e = self.cfg, self.cfg.energy_pj
        n_lanes = cfg.rows * self.perf_factor(c.w_bits, c.a_bits)
        passes = self._passes(c.w_bits) * self._passes(c.a_bits)
        b, o, ic, oc = (tiles[:, i] for i in range(4))
        kk = c.K * c.K
        trips = np.stack([_cdiv(c.batch, b), _cdiv(c.O, o), _cdiv(c.O, o), _cdiv(c.IC, ic), _cdiv(c.OC, oc)], axis=1)
        w_tile = _cdiv(kk * ic, n_lanes) * n_lanes * oc * c.w_bits
        if c.im2col:
            a_tile = o * o * kk * ic * b * c.a_bits
        else:
            a_tile = (c.K + (o - 1) * c.S) ** 2 * ic * b * c.a_bits
        o_tile = o * o * _cdiv(oc, cfg.cols) * cfg.cols * b * cfg.psum_bits
        shape = (3, len(tiles), len(orders))
        size = np.broadcast_to(np.stack([w_tile, a_tile, o_tile])[:, :, None], shape).copy()
        first = size.copy()
        grows = np.ones(shape, dtype=bool)
        cap = self._cap[:, None, None]
        # innermost loop first: a tensor's transfer grows with each enclosing loop; while it still fits its
        # buffer, loops it does not depend on reuse it, and the size that fits is what is loaded up front
        steps = [(trips[:, orders[:, j]], _DEPENDS[:, orders[:, j]]) for j in reversed(range(5))]
        if c.groups > 1:
            steps.append((np.full((len(tiles), len(orders)), c.groups, dtype=np.int64), np.ones((3, len(orders)), bool)))
        for n, dep in steps:
            dep = dep[:, None, :]
            size *= np.where(grows & ~dep, 1, n[None])
            fits = size <= cap
            first = np.where(grows & dep & fits, size, first)
            grows &= ~dep | fits
        n_tiles = trips.prod(axis=1) * c.groups
        if c.im2col:
            per_tile = b * o * o * _cdiv(oc, cfg.cols) * _cdiv(kk * ic, n_lanes)
        else:
            per_tile = b * _cdiv(oc, cfg.cols) * o * o * kk * _cdiv(ic, n_lanes)
        compute = (n_tiles * per_tile * passes)[:, None]
        dram_read = size.sum(axis=0)
        dram_write = size[2]
        width = cfg.dram_bits_per_cycle
        if cfg.double_buffered:
            loaded, drained = first.sum(axis=0), first[2]
            middle = dram_read + dram_write - loaded - drained
            stall = np.maximum(0, _cdiv(middle, width) - compute) + _cdiv(loaded, width) + _cdiv(drained, width)
        else:
            stall = _cdiv(dram_read + dram_write, width)
        macs = n_tiles * b * o * o * oc * ic * kk
        psums = (n_tiles * b * o * o * oc * cfg.psum_bits)[:, None]
        reads = {"wbuf": (macs * c.w_bits)[:, None], "ibuf": (macs * c.a_bits)[:, None], "obuf": psums + dram_write}
        writes = {"wbuf": size[0], "ibuf": size[1], "obuf": psums + size[2]}
        buf = {k: reads[k] * getattr(e, f"{k}_read_per_bit") + writes[k] * getattr(e, f"{k}_write_per_bit")
               for k in BUFFERS}
        core = compute * e.core_per_cycle
        dram = (dram_read + dram_write) * e.dram_per_bit
        return {"cycles": compute + stall, "compute": compute, "stall": stall, "dram_read": dram_read,
                "dram_write": dram_write, "reads": reads, "writes": writes, "buf": buf, "core": core, "dram": dram,
                "energy": core + buf["wbuf"] + buf["ibuf"] + buf["obuf"] + dram, "trips": trips}

    def tilings(self, c: ConvCall) -> np.ndarray:
        """Every tiling [b, o, ic, oc] whose tiles fit the buffers."""
        cfg = self.cfg
        grid = np.stack(np.meshgrid(_tile_sizes(c.batch), _tile_sizes(c.O), _tile_sizes(c.IC),
                                    _tile_sizes(c.OC, cfg.cols), indexing="ij"), axis=-1).reshape(-1, 4)
        b, o, ic, oc = grid.T
        n_lanes = cfg.rows * self.perf_factor(c.w_bits, c.a_bits)
        a_tile = o * o * c.K * c.K * ic * b if c.im2col else (c.K + (o - 1) * c.S) ** 2 * ic * b
        ok = ((_cdiv(c.K * c.K * ic, n_lanes) * n_lanes * oc * c.w_bits <= self._cap[0])
              & (a_tile * c.a_bits <= self._cap[1])
              & (o * o * _cdiv(oc, cfg.cols) * cfg.cols * b * cfg.psum_bits <= self._cap[2]))
        return grid[ok]

    def _cost(self, c: ConvCall, s: dict[str, Any], t: int, p: int, tile: np.ndarray, order: np.ndarray) -> LayerCost:
        cfg = self.cfg

        def at(x: np.ndarray) -> Any:
            return np.broadcast_to(x, s["cycles"].shape)[t, p].item()

        cycles, compute, stall = at(s["cycles"]), at(s["compute"]), at(s["stall"])
        buf = {k: at(s["buf"][k]) * 1e-9 for k in BUFFERS}
        core, dram = at(s["core"]) * 1e-9, at(s["dram"]) * 1e-9
        dr, dw = at(s["dram_read"]), at(s["dram_write"])
        trips = s["trips"][t]
        sizes = dict(zip(LOOPS, (int(tile[0]), int(tile[1]), int(tile[1]), int(tile[2]), int(tile[3]))))
        return LayerCost(
            cycles=cycles, compute_cycles=compute, stall_cycles=stall,
            latency_ms=cycles / (cfg.frequency_mhz * 1e6) * 1e3,
            energy_mj=core + sum(buf.values()) + dram, energy_core_mj=core, energy_buffer_mj=sum(buf.values()),
            energy_dram_mj=dram, energy_buffers_mj=buf, dram_read_bits=dr, dram_write_bits=dw,
            dram_bytes=(dr + dw) / 8,
            sram_read_bits={k: at(s["reads"][k]) for k in BUFFERS},
            sram_write_bits={k: at(s["writes"][k]) for k in BUFFERS},
            macs=c.groups * c.batch * c.O * c.O * c.K * c.K * c.IC * c.OC,
            macs_per_cycle_per_unit=self.speedup(c.w_bits, c.a_bits), batch=c.batch, im2col=c.im2col,
            loop_order=">".join(LOOPS[i] for i in order),
            tile={**sizes, **{f"{k}_tiles": int(n) for k, n in zip(LOOPS, trips)}, "groups": c.groups},
        )

    def evaluate(self, c: ConvCall, tile: dict[str, int], order: tuple[str, ...]) -> LayerCost:
        """The cost of one tiling ({'B', 'OW', 'IC', 'OC'} tile sizes) in one loop order (outer to inner)."""
        t = np.array([[tile["B"], tile["OW"], tile["IC"], tile["OC"]]], dtype=np.int64)
        p = np.array([[LOOPS.index(x) for x in order]], dtype=np.int64)
        return self._cost(c, self._stats(c, t, p), 0, 0, t[0], p[0])

    def run(self, c: ConvCall) -> LayerCost:
        """The best tiling and loop order for a simulator call: fewest cycles, then least energy."""
        if c in self._cache:
            return self._cache[c]
        tiles = self.tilings(c)
        if not len(tiles):
            raise UnsupportedBackendError(f"{c}: no tile fits the BitFusion buffers")
        s = self._stats(c, tiles, _ORDERS)
        cycles = s["cycles"]
        energy = np.where(cycles == cycles.min(), s["energy"], np.inf)
        t, p = np.unravel_index(int(np.argmin(energy)), cycles.shape)
        cost = self._cost(c, s, t, p, tiles[t], _ORDERS[p])
        self._cache[c] = cost
        return cost

    def simulate(self, spec: LayerSpec, *, batch: int | None = None, im2col: bool | None = None) -> LayerCost:
        """Cycles, memory stalls, traffic, latency and energy of one layer (batch ``cfg.batch`` unless given)."""
        return self.run(self.call(spec, batch=batch, im2col=im2col))

    def compute_cycles(self, spec: LayerSpec) -> int:
        """Cycles the array computes for ``spec`` (stalls excluded)."""
        return self.simulate(spec).compute_cycles


@register
class BitFusionBackend(Backend):
    """The simulated BitFusion target: ``profile(spec)`` simulates, ONNX models are not executed."""

    name = "bitfusion"
    package = "bitnas"
    simulated = True

    def __init__(self, threads: int = 1, preset: str | None = None, config_path: str | Path = CONFIG_FILE):
        super().__init__(threads)
        self.preset = preset or load_presets(config_path)[0]
        self.config = load_config(self.preset, config_path)
        self.model = BitFusionModel(self.config)

    @classmethod
    def _available(cls) -> bool:
        return True

    def fingerprint(self) -> dict[str, Any]:
        origin = "published (released BitFusion simulator)" if self.config.published else "bitnas's own, not published"
        return {"backend": self.name, "simulator": "bitnas model of the released BitFusion simulator",
                "model_version": MODEL_VERSION, "preset": self.preset, "preset_origin": origin,
                "accelerator": self.config.model_dump(), "threads": self.threads}

    def bit_options(self) -> list[tuple[int, int]]:
        """The (w_bits, a_bits) the accelerator executes: BitBrick multiples up to 8 bits (6 bits at the 8-bit
        rate, with 6-bit traffic)."""
        widths = list(range(self.config.brick_bits, self.config.max_bits + 1, self.config.brick_bits))
        return [(w, a) for w in widths for a in widths]

    def compile(self, onnx_path: str | Path) -> Runner:
        raise UnsupportedBackendError(
            f"{onnx_path}: BitFusion is simulated per layer (bitnas profile --target bitfusion); "
            f"it does not execute ONNX models")

    def simulate(self, spec: LayerSpec) -> LayerCost:
        return self.model.simulate(spec)

    def profile(self, spec: LayerSpec) -> Measurement:
        cost = self.model.simulate(spec)
        return Measurement(cost.latency_ms, cost.latency_ms, cost.latency_ms, 0.0, 1)


register_target(Target(
    name="bitfusion", backend="bitfusion", simulated=True, energy=True, int4_weights=True,
    # its native widths {2, 4, 8} and APQ's 6 bits, which a fusion unit runs at the 8-bit rate with 6-bit traffic
    bit_options=tuple((w, a) for w in (2, 4, 6, 8) for a in (2, 4, 6, 8)),
    verify_backends=("ort", "openvino"),
    description="the BitFusion bit-flexible accelerator, simulated per layer (latency, energy, cycles)",
))
