"""Profiling a target into a LatencyTable: every distinct layer, FP32 and each bitwidth it executes.

Each LayerSpec becomes a one-layer ONNX model shaped as the exporter emits it (Conv with folded BN, then
Clip for ReLU6, then the residual Add; or GlobalAveragePool, Flatten, Gemm). INT8 entries are quantized
by the same static quantizer the compiler uses, so the LUT times the graph the artifact will contain.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitnas.backends.base import Backend, interleaved_timing
from bitnas.errors import UserError
from bitnas.io import sha256_bytes
from bitnas.latency_luts.lut import LatencyTable
from bitnas.passes.export_onnx import INPUT_NAME, OUTPUT_NAME
from bitnas.passes.inc_ptq import inc_quantize_qdq
from bitnas.space import Bits, LayerSpec

OPSET = 17
LAYER_NODE = "layer"


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def layer_model(spec: LayerSpec, seed: int = 0) -> onnx.ModelProto:
    """A float one-layer ONNX model for ``spec`` (batch 1), random weights."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, spec.cin, spec.hw, spec.hw])
    nodes, inits = [], []
    if spec.op == "linear":
        w = rng.normal(0, 0.1, (spec.cout, spec.cin)).astype(np.float32)
        inits += [_init("W", w), _init("B", np.zeros(spec.cout, np.float32))]
        nodes += [
            helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], [OUTPUT_NAME], name=LAYER_NODE, transB=1),
        ]
        out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, spec.cout])
    else:
        fan_in = spec.cin // spec.groups * spec.kernel * spec.kernel
        w = rng.normal(0, np.sqrt(2.0 / fan_in), (spec.cout, spec.cin // spec.groups, spec.kernel, spec.kernel))
        inits += [_init("W", w.astype(np.float32)), _init("B", rng.normal(0, 0.1, spec.cout).astype(np.float32))]
        p = spec.kernel // 2
        y = "conv_out"
        nodes.append(helper.make_node("Conv", [INPUT_NAME, "W", "B"], [y], name=LAYER_NODE,
                                      kernel_shape=[spec.kernel] * 2, strides=[spec.stride] * 2,
                                      pads=[p] * 4, group=spec.groups))
        if spec.act == "relu6":
            inits += [_init("lo", np.array(0.0, np.float32)), _init("hi", np.array(6.0, np.float32))]
            nodes.append(helper.make_node("Clip", [y, "lo", "hi"], ["act_out"], name="act"))
            y = "act_out"
        elif spec.act == "relu":
            nodes.append(helper.make_node("Relu", [y], ["act_out"], name="act"))
            y = "act_out"
        if spec.residual:
            # the block's input, which the add reads, has the layer's output shape
            if spec.stride != 1:
                raise UserError(f"layer {spec.key}: a residual add needs stride 1")
            skip = rng.normal(0, 1, (1, spec.cout, spec.out_hw, spec.out_hw)).astype(np.float32)
            inits.append(_init("skip", skip))
            nodes.append(helper.make_node("Add", ["skip", y], ["res_out"], name="residual"))
            y = "res_out"
        nodes.append(helper.make_node("Identity", [y], [OUTPUT_NAME], name="out"))
        out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, spec.cout, spec.out_hw, spec.out_hw])
    graph = helper.make_graph(nodes, "layer", [x], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bitnas")
    onnx.checker.check_model(model)
    return model


def overhead_model() -> onnx.ModelProto:
    """A trivial model: its latency is the runtime's fixed per-call cost."""
    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 1])
    node = helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME], name="identity")
    graph = helper.make_graph([node], "overhead", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def write_layer_model(spec: LayerSpec, folder: Path, reduce_range: bool, seed: int = 0) -> Path:
    """Write the one-layer model of ``spec`` (quantized when its bits are 8) and return its path."""
    fp32 = folder / f"{sha256_bytes(spec.with_bits((32, 32)).key.encode())[:16]}_fp32.onnx"
    if not fp32.exists():
        onnx.save(layer_model(spec, seed), str(fp32))
    if spec.bits == (32, 32):
        return fp32
    if spec.bits != (8, 8):
        raise UserError(f"layer {spec.key}: the CPU profiler measures INT8 or float, not W{spec.w_bits}A{spec.a_bits}")
    q = fp32.with_name(fp32.name.replace("_fp32", "_int8"))
    rng = np.random.default_rng(seed)
    calib = [rng.normal(0, 1, (1, spec.cin, spec.hw, spec.hw)).astype(np.float32) for _ in range(4)]
    inc_quantize_qdq(fp32, q, [LAYER_NODE], calib, reduce_range)
    return q


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
) -> LatencyTable:
    """Measure every spec at every bit option, interleaved, and return the table."""
    todo = [s.with_bits(b) for s in specs for b in bit_options]
    with tempfile.TemporaryDirectory(prefix="bitnas-lut-") as tmp:
        folder = Path(tmp)
        runners: dict[str, Callable[[], object]] = {}
        ov_path = folder / "overhead.onnx"
        onnx.save(overhead_model(), str(ov_path))
        ov_run = backend.compile(ov_path)
        ov_x = {INPUT_NAME: np.zeros((1, 1), np.float32)}
        runners["__overhead__"] = lambda: ov_run(ov_x)
        for i, spec in enumerate(todo):
            path = write_layer_model(spec, folder, reduce_range)
            run = backend.compile(path)
            x = {INPUT_NAME: np.random.default_rng(i).normal(0, 1, (1, spec.cin, spec.hw, spec.hw)).astype(np.float32)}
            runners[spec.key] = (lambda r, xx: (lambda: r(xx)))(run, x)
            if progress:
                progress("build", i + 1, len(todo))
        timing = interleaved_timing(runners, warmup, repeats, rounds,
                                    progress=(lambda d, t: progress("measure", d, t)) if progress else None)
    overhead = timing.pop("__overhead__")
    entries = {s.key: {"spec": s.to_dict(), **timing[s.key].to_dict()} for s in todo}
    return LatencyTable(
        target=target,
        fingerprint=backend.fingerprint(),
        measurement={"backend": backend.name, "warmup": warmup, "repeats": repeats, "rounds": rounds,
                     "statistic": statistic, "batch": 1, "threads": backend.threads, "interleaved": True,
                     "reduce_range": reduce_range, "overhead_corrected": True},
        entries=entries,
        overhead=overhead.to_dict(),
        space=space,
    )
