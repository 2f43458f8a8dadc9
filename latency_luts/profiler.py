"""Profiling a target into a LatencyTable: every distinct layer, FP32 and each bitwidth it executes.

Each LayerSpec becomes a one-layer ONNX model shaped as the exporter emits it (Conv with folded BN, then
Clip for ReLU6, then the residual Add; or GlobalAveragePool, Flatten, Gemm). INT8 entries are quantized
by the same static quantizer the compiler uses, so the LUT times the graph the artifact will contain.
Fusion units (whole inverted-residual blocks) are built the same way, chained, the residual adding the
block's input. Measurements run in interleaved chunks; each finished chunk is checkpointed atomically.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitnas.backends.base import Backend, Measurement, interleaved_samples, interleaved_timing
from bitnas.errors import LutError, UserError
from bitnas.io import atomic_write_json, sha256_bytes
from bitnas.latency_luts.lut import VERSION, LatencyTable, block_key, table_from_results
from bitnas.passes.export_onnx import INPUT_NAME, OUTPUT_NAME
from bitnas.passes.inc_ptq import inc_quantize_qdq
from bitnas.space import FLOAT_BITS, Bits, LayerSpec

OPSET = 17
LAYER_NODE = "layer"
CPU_BITS: tuple[Bits, ...] = (FLOAT_BITS, (8, 8))
OVERHEAD = "__overhead__"


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _conv_nodes(spec: LayerSpec, x: str, node: str, prefix: str, rng: np.random.Generator,
                skip: str | None) -> tuple[list, list, str]:
    """Nodes and initializers of one conv layer reading ``x``; returns the output tensor name."""
    nodes, inits = [], []
    fan_in = spec.cin // spec.groups * spec.kernel * spec.kernel
    w = rng.normal(0, np.sqrt(2.0 / fan_in), (spec.cout, spec.cin // spec.groups, spec.kernel, spec.kernel))
    inits += [_init(f"{prefix}W", w.astype(np.float32)), _init(f"{prefix}B", rng.normal(0, 0.1, spec.cout).astype(np.float32))]
    p = spec.kernel // 2
    y = f"{prefix}conv_out"
    nodes.append(helper.make_node("Conv", [x, f"{prefix}W", f"{prefix}B"], [y], name=node,
                                  kernel_shape=[spec.kernel] * 2, strides=[spec.stride] * 2,
                                  pads=[p] * 4, group=spec.groups))
    if spec.act == "relu6":
        inits += [_init(f"{prefix}lo", np.array(0.0, np.float32)), _init(f"{prefix}hi", np.array(6.0, np.float32))]
        nodes.append(helper.make_node("Clip", [y, f"{prefix}lo", f"{prefix}hi"], [f"{prefix}act_out"],
                                      name=f"{prefix}act"))
        y = f"{prefix}act_out"
    elif spec.act == "relu":
        nodes.append(helper.make_node("Relu", [y], [f"{prefix}act_out"], name=f"{prefix}act"))
        y = f"{prefix}act_out"
    if spec.residual:
        if spec.stride != 1:
            raise UserError(f"layer {spec.key}: a residual add needs stride 1")
        if skip is None:
            # a lone layer: the block's input, which the add reads, has the layer's output shape
            skip = f"{prefix}skip"
            inits.append(_init(skip, rng.normal(0, 1, (1, spec.cout, spec.out_hw, spec.out_hw)).astype(np.float32)))
        nodes.append(helper.make_node("Add", [skip, y], [f"{prefix}res_out"], name=f"{prefix}residual"))
        y = f"{prefix}res_out"
    return nodes, inits, y


def unit_model(specs: Sequence[LayerSpec], seed: int = 0) -> onnx.ModelProto:
    """A float ONNX model (batch 1, random weights) chaining ``specs``: one layer or one fusion unit.

    Conv nodes are named ``layer`` (one layer) or ``layer0``, ``layer1``... In a multi-layer unit a
    residual layer adds the unit's input.
    """
    specs = list(specs)
    rng = np.random.default_rng(seed)
    first = specs[0]
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, first.cin, first.hw, first.hw])
    nodes, inits = [], []
    y = INPUT_NAME
    for i, spec in enumerate(specs):
        node = LAYER_NODE if len(specs) == 1 else f"{LAYER_NODE}{i}"
        prefix = "" if len(specs) == 1 else f"l{i}_"
        if spec.op == "linear":
            w = rng.normal(0, 0.1, (spec.cout, spec.cin)).astype(np.float32)
            inits += [_init(f"{prefix}W", w), _init(f"{prefix}B", np.zeros(spec.cout, np.float32))]
            nodes += [
                helper.make_node("GlobalAveragePool", [y], [f"{prefix}pooled"], name=f"{prefix}pool"),
                helper.make_node("Flatten", [f"{prefix}pooled"], [f"{prefix}flat"], name=f"{prefix}flatten", axis=1),
                helper.make_node("Gemm", [f"{prefix}flat", f"{prefix}W", f"{prefix}B"], [f"{prefix}gemm_out"],
                                 name=node, transB=1),
            ]
            y = f"{prefix}gemm_out"
            shape = [1, spec.cout]
        else:
            more, more_inits, y = _conv_nodes(spec, y, node, prefix, rng, INPUT_NAME if len(specs) > 1 else None)
            nodes += more
            inits += more_inits
            shape = [1, spec.cout, spec.out_hw, spec.out_hw]
    nodes.append(helper.make_node("Identity", [y], [OUTPUT_NAME], name="out"))
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "unit", [x], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bitnas")
    onnx.checker.check_model(model)
    return model


def layer_model(spec: LayerSpec, seed: int = 0) -> onnx.ModelProto:
    """A float one-layer ONNX model for ``spec`` (batch 1), random weights."""
    return unit_model([spec], seed)


def overhead_model() -> onnx.ModelProto:
    """A trivial model: its latency is the runtime's fixed per-call cost."""
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 1])
    node = helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME], name="identity")
    graph = helper.make_graph([node], "overhead", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _check_cpu_bits(spec: LayerSpec) -> None:
    if spec.bits not in CPU_BITS:
        raise UserError(f"layer {spec.key}: the CPU profiler measures INT8 or float, not W{spec.w_bits}A{spec.a_bits}")


def write_unit_model(specs: Sequence[LayerSpec], folder: Path, reduce_range: bool, seed: int = 0) -> Path:
    """Write the model of a layer or unit (its INT8 layers quantized QDQ) into ``folder``; reuse if present."""
    specs = list(specs)
    for s in specs:
        _check_cpu_bits(s)
    float_key = "+".join(s.with_bits(FLOAT_BITS).key for s in specs)
    stem = sha256_bytes(float_key.encode())[:16]
    fp32 = folder / f"{stem}_fp32.onnx"
    if not fp32.exists():
        folder.mkdir(parents=True, exist_ok=True)
        from bitnas.io import atomic_write_bytes

        atomic_write_bytes(fp32, unit_model([s.with_bits(FLOAT_BITS) for s in specs], seed).SerializeToString())
    int8 = [i for i, s in enumerate(specs) if s.bits == (8, 8)]
    if not int8:
        return fp32
    tag = "int8" if len(specs) == 1 else "q" + "".join("1" if i in int8 else "0" for i in range(len(specs)))
    q = folder / f"{stem}_{tag}{'_rr' if reduce_range else ''}.onnx"
    if q.exists():
        return q
    nodes = [LAYER_NODE] if len(specs) == 1 else [f"{LAYER_NODE}{i}" for i in int8]
    rng = np.random.default_rng(seed)
    first = specs[0]
    calib = [rng.normal(0, 1, (1, first.cin, first.hw, first.hw)).astype(np.float32) for _ in range(4)]
    inc_quantize_qdq(fp32, q, nodes, calib, reduce_range)
    return q


def write_layer_model(spec: LayerSpec, folder: Path, reduce_range: bool, seed: int = 0) -> Path:
    """Write the one-layer model of ``spec`` (quantized when its bits are 8) and return its path."""
    return write_unit_model([spec], folder, reduce_range, seed)


def input_for(specs: Sequence[LayerSpec], seed: int = 0) -> dict[str, np.ndarray]:
    s = specs[0]
    return {INPUT_NAME: np.random.default_rng(seed).normal(0, 1, (1, s.cin, s.hw, s.hw)).astype(np.float32)}


def measure_layer(backend: Backend, spec: LayerSpec, reduce_range: bool = False, warmup: int = 10,
                  repeats: int = 100, rounds: int = 5) -> Measurement:
    """Measure one layer's one-layer model on ``backend`` (per-call overhead included)."""
    with tempfile.TemporaryDirectory(prefix="bitnas-layer-") as tmp:
        timer = backend.timer(write_layer_model(spec, Path(tmp), reduce_range), input_for([spec]))
        return interleaved_timing({"m": timer}, warmup, repeats, rounds)["m"]


# --------------------------------------------------------------------------- work lists
@dataclass(frozen=True)
class Item:
    """One thing to measure: a layer, a fusion unit, or the per-call overhead model."""

    key: str
    kind: str  # "layer" | "block" | "overhead"
    specs: tuple[LayerSpec, ...] = ()


def layer_items(specs: Sequence[LayerSpec], bit_options: Sequence[Bits]) -> list[Item]:
    out, seen = [], set()
    for s in specs:
        for b in bit_options:
            ls = s.with_bits(b)
            if ls.key not in seen:
                seen.add(ls.key)
                out.append(Item(ls.key, "layer", (ls,)))
    return out


def block_items(blocks: Sequence[Sequence[LayerSpec]], bit_options: Sequence[Bits], mixed_fraction: float,
                seed: int = 0) -> list[Item]:
    """Blocks at every uniform bit option, plus a seeded share of the mixed per-layer policies."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for blk in blocks:
        combos = [tuple(c) for c in np.array(np.meshgrid(*[range(len(bit_options))] * len(blk))).T.reshape(-1, len(blk))]
        for combo in combos:
            uniform = len(set(combo)) == 1
            if not uniform and rng.random() >= mixed_fraction:
                continue
            specs = tuple(s.with_bits(bit_options[i]) for s, i in zip(blk, combo))
            key = block_key(specs)
            if key not in seen:
                seen.add(key)
                out.append(Item(key, "block", specs))
    return out


# --------------------------------------------------------------------------- checkpoints
def _settings(target: str, fingerprint: dict[str, Any], measurement: dict[str, Any], space: str | None) -> str:
    return sha256_bytes(json.dumps({"target": target, "fingerprint": fingerprint, "measurement": measurement,
                                    "space": space}, sort_keys=True, default=str).encode())[:16]


def load_checkpoint(path: Path, settings: str) -> dict[str, Any]:
    """Results of an interrupted run with the same settings (empty when none, or when settings differ)."""
    if not path.exists():
        return {"results": {}, "overheads": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LutError(f"{path}: profiling checkpoint is corrupt ({exc}); delete it to start over") from None
    if not isinstance(data, dict) or data.get("settings") != settings:
        return {"results": {}, "overheads": []}
    return {"results": dict(data.get("results") or {}), "overheads": list(data.get("overheads") or [])}


def measure_items(
    backend: Backend,
    items: Sequence[Item],
    folder: Path,
    reduce_range: bool,
    warmup: int,
    repeats: int,
    rounds: int,
    chunk: int = 64,
    done: dict[str, Any] | None = None,
    on_chunk: Callable[[dict[str, Any], list[dict[str, float]]], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, float]]]:
    """Measure ``items`` in interleaved chunks (each with the overhead model); skip keys already ``done``."""
    results: dict[str, dict[str, Any]] = dict((done or {}).get("results", {}))
    overheads: list[dict[str, float]] = list((done or {}).get("overheads", []))
    todo = [it for it in items if it.key not in results]
    total = len(items)
    ov_path = folder / "overhead.onnx"
    if not ov_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(overhead_model(), str(ov_path))
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        runners: dict[str, Callable[[], object]] = {
            OVERHEAD: backend.timer(ov_path, {INPUT_NAME: np.zeros((1, 1), np.float32)})}
        for i, it in enumerate(part):
            runners[it.key] = backend.timer(write_unit_model(it.specs, folder, reduce_range),
                                            input_for(it.specs, seed=start + i))
            if progress:
                progress(len(results) + i + 1, total, f"build {it.kind}")
        raw = interleaved_samples(runners, warmup, repeats, rounds)
        ov = Measurement.from_samples(np.concatenate(raw.pop(OVERHEAD))).to_dict()
        overheads.append(ov)
        for it in part:
            m = Measurement.from_samples(np.concatenate(raw[it.key])).to_dict()
            m["overhead_median_ms"] = ov["median_ms"]
            m["overhead_p10_ms"] = ov["p10_ms"]
            results[it.key] = {"kind": it.kind, **m}
        if on_chunk:
            on_chunk(results, overheads)
        if progress:
            progress(len(results), total, "measured")
    return results, overheads


def assemble(target: str, fingerprint: dict[str, Any], measurement: dict[str, Any], space: str | None,
             items: Sequence[Item], results: dict[str, dict[str, Any]], overheads: list[dict[str, float]],
             notes: Sequence[str] = ()) -> LatencyTable:
    """A LatencyTable from measured results (entries for layers, blocks for fusion units)."""
    return table_from_results(target, fingerprint, measurement, space,
                              [(it.key, it.kind, it.specs) for it in items], results, overheads, notes)


def profile(
    backend: Backend,
    specs: Sequence[LayerSpec],
    bit_options: Sequence[Bits],
    target: str,
    reduce_range: bool,
    warmup: int = 10,
    repeats: int = 60,
    rounds: int = 3,
    statistic: str = "median",
    space: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    blocks: Sequence[Sequence[LayerSpec]] = (),
    mixed_fraction: float = 0.0,
    checkpoint: str | Path | None = None,
    model_dir: str | Path | None = None,
    chunk: int = 64,
) -> LatencyTable:
    """Measure every spec at every bit option (and the given fusion units), interleaved; resumable.

    With ``checkpoint``, every finished chunk is saved there atomically and a later call with the same
    settings skips what it holds. ``model_dir`` keeps the ONNX models for reuse (else a temp folder).
    """
    items = layer_items(specs, bit_options) + block_items(blocks, bit_options, mixed_fraction)
    fingerprint = backend.fingerprint()
    measurement = {"backend": backend.name, "warmup": warmup, "repeats": repeats, "rounds": rounds,
                   "statistic": statistic, "batch": 1, "threads": backend.threads, "interleaved": True,
                   "chunk": chunk, "reduce_range": reduce_range, "overhead_corrected": True,
                   "unit": "one-layer ONNX models; fusion units: whole inverted-residual blocks",
                   "blocks_mixed_fraction": mixed_fraction, "format_version": VERSION}
    settings = _settings(target, fingerprint, measurement, space)
    ckpt = Path(checkpoint) if checkpoint else None
    done = load_checkpoint(ckpt, settings) if ckpt else None

    def save(results, overheads):
        if ckpt:
            atomic_write_json(ckpt, {"settings": settings, "target": target, "results": results,
                                     "overheads": overheads})

    prog = (lambda d, t, info: progress(info, d, t)) if progress else None
    with tempfile.TemporaryDirectory(prefix="bitnas-lut-") as tmp:
        folder = Path(model_dir) if model_dir else Path(tmp)
        results, overheads = measure_items(backend, items, folder, reduce_range, warmup, repeats, rounds, chunk,
                                           done, save, prog)
    return assemble(target, fingerprint, measurement, space, items, results, overheads)


def simulate(backend: Backend, specs: Sequence[LayerSpec], bit_options: Sequence[Bits], target: str,
             space: str | None = None, progress: Callable[[str, int, int], None] | None = None) -> LatencyTable:
    """A table from a simulated target (BitFusion): latency, energy and cycles per layer."""
    items = layer_items(specs, bit_options)
    entries = {}
    for i, it in enumerate(items):
        cost = backend.simulate(it.specs[0]).to_dict()
        lat = cost.pop("latency_ms")
        entries[it.key] = {"spec": it.specs[0].to_dict(), "median_ms": lat, "p10_ms": lat, "mean_ms": lat,
                           "iqr_ms": 0.0, "n": 1, **cost}
        if progress:
            progress("simulate", i + 1, len(items))
    measurement = {"backend": backend.name, "simulated": True, "statistic": "median", "batch": 1,
                   "threads": backend.threads, "model": "analytic BitFusion (cycles, stalls, energy split)",
                   "format_version": VERSION}
    return LatencyTable(target=target, fingerprint=backend.fingerprint(), measurement=measurement,
                        entries=entries, overhead={}, space=space,
                        notes=["simulated: latency and energy are deterministic model outputs (iqr 0, n 1)"])
