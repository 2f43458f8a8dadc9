"""BitFusion (Sharma et al., ISCA 2018): an analytic latency/energy model of the bit-flexible accelerator.

The array has ``rows`` x ``cols`` fusion units; each is 16 two-bit BitBricks, so it performs one 8x8-bit
MAC per cycle, or floor(8/a) * floor(8/w) MACs per cycle at lower precision (operands wider than 8 bits
take ceil(bits/8) passes each). Weights stay in the array (columns = output channels, rows = the
reduction over input channels x kernel window); grouped convolutions map one group at a time.

Memory: each layer is tiled over output channels (K), reduction channels (C) and output rows (P) so
every tile fits its buffer (half of it when double-buffered); among tile sizes and the six loop orders
the one moving the fewest DRAM bytes wins. DRAM transfers overlap compute; what exceeds compute is
counted as memory-stall cycles. Energy = MACs (scaled by BitBricks used) + buffer bits + DRAM bits.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from bitnas.api import Target
from bitnas.backends.base import Backend, Measurement, Runner, register, register_target
from bitnas.config import StrictModel, validate_config
from bitnas.errors import ConfigError, UnsupportedBackendError
from bitnas.space import LayerSpec

CONFIG_FILE = Path(__file__).with_name("bitfusion.yaml")


class EnergyConfig(StrictModel):
    mac_8x8: float = Field(gt=0, description="pJ per 8x8-bit MAC (all 16 BitBricks)")
    wbuf_per_bit: float = Field(ge=0, description="pJ per weight-buffer bit read or written")
    ibuf_per_bit: float = Field(ge=0, description="pJ per input-buffer bit read or written")
    obuf_per_bit: float = Field(ge=0, description="pJ per output-buffer bit read or written")
    dram_per_bit: float = Field(ge=0, description="pJ per DRAM bit transferred")


class BitFusionConfig(StrictModel):
    rows: int = Field(ge=1, description="fusion units along the reduction dimension")
    cols: int = Field(ge=1, description="fusion units along the output-channel dimension")
    brick_bits: int = Field(2, ge=1, description="operand width of one BitBrick")
    max_bits: int = Field(8, ge=2, description="operand width one fusion unit handles in one pass")
    frequency_mhz: float = Field(gt=0, description="clock")
    wbuf_kb: float = Field(gt=0, description="weight buffer (KiB)")
    ibuf_kb: float = Field(gt=0, description="input buffer (KiB)")
    obuf_kb: float = Field(gt=0, description="output buffer (KiB)")
    dram_bits_per_cycle: int = Field(ge=8, description="DRAM interface width (bits per cycle)")
    psum_bits: int = Field(32, ge=8, description="partial-sum width")
    double_buffered: bool = Field(True, description="tiles use half of each buffer; transfers overlap compute")
    batch: int = Field(1, ge=1, description="images per inference")
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
class LayerCost:
    """Simulated cost of one layer."""

    cycles: int
    compute_cycles: int
    stall_cycles: int
    latency_ms: float
    energy_mj: float
    energy_core_mj: float
    energy_buffer_mj: float
    energy_dram_mj: float
    dram_bytes: float
    macs: int
    macs_per_cycle_per_unit: float
    loop_order: str
    tile: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _operand_rate(bits: int, max_bits: int, brick_bits: int) -> float:
    """MACs per cycle one fusion unit gains along one operand: floor(max/bits), or 1/passes above max."""
    if bits <= max_bits:
        return float(max_bits // max(bits, brick_bits))
    return 1.0 / math.ceil(bits / max_bits)


def _tile_options(n: int) -> list[int]:
    opts = {n}
    d = 1
    while d <= n:
        opts.add(math.ceil(n / d))
        d *= 2
    return sorted(opts)


class BitFusionModel:
    """The analytic model for one configuration."""

    def __init__(self, config: BitFusionConfig):
        self.cfg = config

    def speedup(self, w_bits: int, a_bits: int) -> float:
        """MACs per cycle of one fusion unit relative to 8x8 bits."""
        c = self.cfg
        return _operand_rate(a_bits, c.max_bits, c.brick_bits) * _operand_rate(w_bits, c.max_bits, c.brick_bits)

    def _check(self, spec: LayerSpec) -> None:
        if spec.w_bits >= 32 or spec.a_bits >= 32:
            raise UnsupportedBackendError(
                f"layer '{spec.name or spec.key}': BitFusion has no float datapath (W{spec.w_bits}A{spec.a_bits}); "
                f"profile integer bitwidths (2..16)")
        if min(spec.w_bits, spec.a_bits) < 1:
            raise UnsupportedBackendError(f"layer '{spec.name or spec.key}': bitwidths must be positive")

    def _dims(self, spec: LayerSpec) -> dict[str, int]:
        """Per-group GEMM view: K outputs, C reduction channels, R*S window, P output pixels, input rows."""
        if spec.op == "linear":
            return {"g": 1, "K": spec.cout, "C": spec.cin, "RS": 1, "R": 1, "P_rows": 1, "OW": 1,
                    "IW": 1, "stride": 1, "IH": 1}
        g = spec.groups
        return {"g": g, "K": spec.cout // g, "C": spec.cin // g, "RS": spec.kernel * spec.kernel, "R": spec.kernel,
                "P_rows": spec.out_hw, "OW": spec.out_hw, "IW": spec.hw, "stride": spec.stride, "IH": spec.hw}

    def compute_cycles(self, spec: LayerSpec) -> int:
        """Cycles the array needs: per group, ceil(K/cols) x ceil(C*R*S/(rows*speedup)) x output pixels."""
        self._check(spec)
        c, d = self.cfg, self._dims(spec)
        p = d["P_rows"] * d["OW"]
        per_pixel = math.ceil(d["K"] / c.cols) * math.ceil(d["C"] * d["RS"] / (c.rows * self.speedup(spec.w_bits,
                                                                                                      spec.a_bits)))
        return int(d["g"] * per_pixel * p * c.batch)

    def _traffic(self, spec: LayerSpec, kt: int, ct: int, pt: int, order: str) -> tuple[float, dict[str, float]] | None:
        """DRAM bytes of one group for tile sizes and a loop order (outer to inner over 'K', 'C', 'P')."""
        c, d = self.cfg, self._dims(spec)
        share = 0.5 if c.double_buffered else 1.0
        wb, ab = spec.w_bits / 8.0, spec.a_bits / 8.0
        in_rows = min((pt - 1) * d["stride"] + d["R"], d["IH"])
        w_tile = kt * ct * d["RS"] * wb
        i_tile = ct * in_rows * d["IW"] * ab * c.batch
        o_tile = kt * pt * d["OW"] * c.psum_bits / 8.0 * c.batch
        if w_tile > c.wbuf_kb * 1024 * share or i_tile > c.ibuf_kb * 1024 * share or o_tile > c.obuf_kb * 1024 * share:
            return None
        trips = {"K": math.ceil(d["K"] / kt), "C": math.ceil(d["C"] / ct), "P": math.ceil(d["P_rows"] / pt)}
        rel = {"w": {"K", "C"}, "i": {"C", "P"}, "o": {"K", "P"}}

        def loads(tensor: str) -> int:
            # a tile stays resident across the innermost loops it does not depend on
            inner = len(order)
            while inner > 0 and order[inner - 1] not in rel[tensor]:
                inner -= 1
            return math.prod(trips[x] for x in order[:inner])

        w = loads("w") * w_tile
        i = loads("i") * i_tile
        o_final = d["K"] * d["P_rows"] * d["OW"] * ab * c.batch
        o_loads = loads("o")
        distinct = trips["K"] * trips["P"]
        spills = max(o_loads - distinct, 0)  # each revisit reads the partial sums back and writes them again
        o = o_final + 2 * spills * o_tile
        if spec.residual:
            o += o_final  # the skip tensor is read once
        return w + i + o, {"weights": w, "inputs": i, "outputs": o}

    def best_tiling(self, spec: LayerSpec) -> tuple[float, str, dict[str, int], dict[str, float]]:
        """The tiling and loop order with the fewest DRAM bytes per group."""
        d = self._dims(spec)
        best = None
        for kt in _tile_options(d["K"]):
            for ct in _tile_options(d["C"]):
                for pt in _tile_options(d["P_rows"]):
                    for order in itertools.permutations("KCP"):
                        got = self._traffic(spec, kt, ct, pt, "".join(order))
                        if got is None:
                            continue
                        key = (got[0], -kt * ct * pt)
                        if best is None or key < best[0]:
                            best = (key, "".join(order), {"K": kt, "C": ct, "P_rows": pt}, got[1])
        if best is None:
            raise UnsupportedBackendError(
                f"layer '{spec.name or spec.key}': no tile of one output row fits the BitFusion buffers")
        return best[0][0], best[1], best[2], best[3]

    def simulate(self, spec: LayerSpec) -> LayerCost:
        """Cycles, memory stalls, latency and energy of one layer (batch ``cfg.batch``)."""
        self._check(spec)
        c, d = self.cfg, self._dims(spec)
        compute = self.compute_cycles(spec)
        per_group, order, tile, split = self.best_tiling(spec)
        dram_bytes = per_group * d["g"]
        mem_cycles = math.ceil(dram_bytes * 8 / c.dram_bits_per_cycle)
        stall = max(mem_cycles - compute, 0) if c.double_buffered else mem_cycles
        cycles = compute + stall
        macs = spec.weight_count * (spec.out_hw * spec.out_hw if spec.op == "conv" else 1) * c.batch
        e = c.energy_pj
        bricks_used = (math.ceil(min(spec.w_bits, c.max_bits) / c.brick_bits)
                       * math.ceil(min(spec.a_bits, c.max_bits) / c.brick_bits))
        bricks_full = (c.max_bits // c.brick_bits) ** 2
        passes = math.ceil(spec.w_bits / c.max_bits) * math.ceil(spec.a_bits / c.max_bits)
        core_pj = macs * e.mac_8x8 * bricks_used / bricks_full * passes
        # buffer traffic: every DRAM byte is written into a buffer once; the array then reads weights once
        # per output-pixel tile, inputs once per column group of output channels, and reads and writes
        # partial sums once per reduction pass
        p = d["P_rows"] * d["OW"] * c.batch
        col_groups = math.ceil(d["K"] / c.cols)
        red_passes = math.ceil(d["C"] * d["RS"] / (c.rows * self.speedup(spec.w_bits, spec.a_bits)))
        g = d["g"]
        wbuf_bits = g * (split["weights"] * 8 + d["K"] * d["C"] * d["RS"] * spec.w_bits
                         * math.ceil(d["P_rows"] / tile["P_rows"]))
        ibuf_bits = g * (split["inputs"] * 8 + p * d["C"] * d["RS"] * spec.a_bits * col_groups)
        obuf_bits = g * (split["outputs"] * 8 + 2 * p * d["K"] * red_passes * c.psum_bits)
        buffer_pj = wbuf_bits * e.wbuf_per_bit + ibuf_bits * e.ibuf_per_bit + obuf_bits * e.obuf_per_bit
        dram_pj = dram_bytes * 8 * e.dram_per_bit
        latency_ms = cycles / (c.frequency_mhz * 1e6) * 1e3
        return LayerCost(
            cycles=int(cycles), compute_cycles=int(compute), stall_cycles=int(stall), latency_ms=latency_ms,
            energy_mj=(core_pj + buffer_pj + dram_pj) * 1e-9, energy_core_mj=core_pj * 1e-9,
            energy_buffer_mj=buffer_pj * 1e-9, energy_dram_mj=dram_pj * 1e-9, dram_bytes=float(dram_bytes),
            macs=int(macs), macs_per_cycle_per_unit=self.speedup(spec.w_bits, spec.a_bits), loop_order=order,
            tile=tile,
        )


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
        return {"backend": self.name, "simulator": "bitnas analytic BitFusion model", "preset": self.preset,
                "accelerator": self.config.model_dump(), "threads": self.threads}

    def bit_options(self) -> list[tuple[int, int]]:
        """The (w_bits, a_bits) the accelerator executes natively: BitBrick multiples up to 8 bits."""
        widths = [b for b in range(self.config.brick_bits, self.config.max_bits + 1, self.config.brick_bits)
                  if self.config.max_bits % b == 0]
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
    bit_options=tuple((w, a) for w in (2, 4, 8) for a in (2, 4, 8)),
    verify_backends=("ort", "openvino"),
    description="the BitFusion bit-flexible accelerator, simulated per layer (latency, energy, cycles)",
))
