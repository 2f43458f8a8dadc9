"""Profiling a target into a LatencyTable: every distinct layer, FP32 and each bitwidth it executes.

Each LayerSpec becomes a one-layer ONNX model shaped as ``torch.onnx.export`` (opset 17) emits bitnas's
module of its op: Conv with folded BN, its activation and residual Add; GlobalAveragePool, Flatten, Gemm;
a token Gemm between Reshapes; attention; squeeze-and-excitation; LayerNormalization. A spec it cannot
build is refused by name. INT8 entries are quantized by the same static quantizer the compiler uses, so
the LUT times the graph the artifact will contain. Fusion units (whole inverted-residual blocks) are built
the same way, chained, the residual adding the earliest tensor of the unit with its shape (the block's
input), or the output of the block's projection shortcut, which reads the unit's input. Measurements run in interleaved chunks;
each finished chunk is checkpointed atomically.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bitnas.api import CPU_BITS
from bitnas.backends.base import Backend, Measurement, interleaved_samples, interleaved_timing
from bitnas.errors import LutError, UnknownLayerError, UserError
from bitnas.io import atomic_write_json, sha256_bytes
from bitnas.latency_luts.lut import VERSION, LatencyTable, block_key, shortcut_len, table_from_results
from bitnas.passes.export_onnx import INPUT_NAME, OUTPUT_NAME
from bitnas.passes.subbyte import narrow_file, policy_qdq
from bitnas.space import FLOAT_BITS, Bits, LayerSpec

OPSET = 17
LAYER_NODE = "layer"
OVERHEAD = "__overhead__"
ACTS = ("none", "relu", "relu6", "hswish", "gelu")
OP_ACTS: dict[str, tuple[str, ...]] = {"conv": ACTS, "linear": ACTS, "dense": ACTS, "attention": ("none",),
                                       "se": ("none",), "layernorm": ("none",), "maxpool": ("none",),
                                       "avgpool": ("none",)}
POOL_OPS = ("maxpool", "avgpool")
FLOAT_OPS = ("attention", "se", "layernorm", *POOL_OPS)
TOKEN_OPS = ("dense", "attention", "layernorm")  # read [1, hw, cin] tokens; the others an NCHW map
RESIDUAL_OPS = ("conv", "dense")
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _label(spec: LayerSpec) -> str:
    return f"layer '{spec.name}' ({spec.key})" if spec.name else f"layer {spec.key}"


def check_layer(spec: LayerSpec) -> None:
    """Refuse, naming the layer, a spec whose model the profiler cannot build."""

    def refuse(why: str) -> NoReturn:
        raise UnknownLayerError(f"{_label(spec)}: {why}")

    if not isinstance(spec.op, str) or spec.op not in OP_ACTS:
        refuse(f"the profiler cannot build op '{spec.op}' (it builds {', '.join(OP_ACTS)})")
    if not isinstance(spec.act, str) or spec.act not in OP_ACTS[spec.op]:
        refuse(f"the profiler cannot build op '{spec.op}' with activation '{spec.act}' "
               f"(it builds {', '.join(OP_ACTS[spec.op])})")
    if spec.op in FLOAT_OPS and spec.bits != FLOAT_BITS:
        refuse(f"op '{spec.op}' is float only, not W{spec.w_bits}A{spec.a_bits}")
    if min(spec.cin, spec.cout, spec.hw, spec.kernel, spec.stride, spec.groups) < 1:
        refuse("channels, size, kernel, stride and groups must be at least 1")
    if spec.residual and spec.op not in RESIDUAL_OPS:
        refuse(f"op '{spec.op}' has no residual add")
    if spec.act_after_add and not spec.residual:
        refuse("act_after_add needs a residual add")
    if spec.op in POOL_OPS:
        if spec.cout != spec.cin or spec.groups != 1:
            refuse(f"op '{spec.op}' keeps the channels: cout {spec.cout} must equal cin {spec.cin}, groups 1")
        if spec.out_hw < 1:
            refuse(f"a {spec.kernel}x{spec.kernel} window does not fit a {spec.hw}x{spec.hw} map")
    if spec.op == "conv":
        if spec.residual and spec.stride != 1:
            refuse("a residual add needs stride 1")
        if spec.cin % spec.groups or spec.cout % spec.groups:
            refuse(f"{spec.groups} groups do not divide {spec.cin} input and {spec.cout} output channels")
        if spec.out_hw < 1:
            refuse(f"a {spec.kernel}x{spec.kernel} kernel does not fit a {spec.hw}x{spec.hw} map")
    if spec.op == "attention" and spec.cin % spec.groups:
        refuse(f"{spec.groups} heads do not divide the width {spec.cin}")
    if spec.op in ("attention", "layernorm") and spec.cout != spec.cin:
        refuse(f"op '{spec.op}' keeps the width: cout {spec.cout} must equal cin {spec.cin}")


def _in_shape(spec: LayerSpec) -> list[int]:
    return [1, spec.hw, spec.cin] if spec.op in TOKEN_OPS else [1, spec.cin, spec.hw, spec.hw]


def _out_shape(spec: LayerSpec) -> list[int]:
    if spec.op == "linear":
        return [1, spec.cout]
    if spec.op == "dense":
        return [1, spec.hw, spec.cout]
    if spec.op in ("attention", "layernorm"):
        return [1, spec.hw, spec.cin]
    if spec.op == "se":
        return [1, spec.cin, spec.hw, spec.hw]
    return [1, spec.cout, spec.out_hw, spec.out_hw]


def _prefix(i: int, n: int) -> str:
    return "" if n == 1 else f"l{i}_"


def _kv_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}{INPUT_NAME}_k", f"{prefix}{INPUT_NAME}_v"


def input_shapes(specs: Sequence[LayerSpec]) -> dict[str, list[int]]:
    """The graph inputs of the unit model of ``specs`` and their shapes; refuses what it cannot build.

    ``INPUT_NAME`` is the unit's input; each attention layer also reads its keys and values as inputs, as
    in the exported graph, where they are three different projections.
    """
    specs = list(specs)
    if not specs:
        raise UserError("a unit to profile needs at least one layer")
    for s in specs:
        check_layer(s)
    first_shortcut = len(specs) - shortcut_len(specs)
    for i, (prev, s) in enumerate(zip(specs, specs[1:]), 1):
        if i >= first_shortcut:  # the shortcut reads the unit's input
            continue
        if _in_shape(s) != _out_shape(prev):
            raise UnknownLayerError(f"{_label(s)}: reads {_in_shape(s)} but the unit's previous layer "
                                    f"{prev.name or prev.key} gives {_out_shape(prev)}")
    shapes = {INPUT_NAME: _in_shape(specs[0])}
    for i, s in enumerate(specs):
        if s.op == "attention":
            shapes.update(dict.fromkeys(_kv_names(_prefix(i, len(specs))), _in_shape(s)))
    return shapes


class _Unit:
    """The nodes and initializers of a unit model being built."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def init(self, name: str, arr: np.ndarray | float) -> str:
        arr = np.asarray(arr)
        self.inits.append(_init(name, arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float32)))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, out: str | None = None, **attrs: Any) -> str:
        out = out or f"{name}_out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def act(self, act: str, x: str, prefix: str) -> str:
        p = f"{prefix}act"
        if act == "relu":
            return self.node("Relu", [x], p)
        if act == "relu6":
            return self.node("Clip", [x, self.init(f"{p}_lo", 0.0), self.init(f"{p}_hi", 6.0)], p)
        if act == "hswish":
            return self.node("HardSwish", [x], p)
        if act == "gelu":  # exact GELU as torch exports it below opset 20 (which has Gelu)
            d = self.node("Div", [x, self.init(f"{p}_sqrt2", np.sqrt(2.0))], f"{p}_div")
            e = self.node("Erf", [d], f"{p}_erf")
            a = self.node("Add", [e, self.init(f"{p}_one", 1.0)], f"{p}_add")
            m = self.node("Mul", [x, a], f"{p}_mul")
            return self.node("Mul", [m, self.init(f"{p}_half", 0.5)], f"{p}_scale")
        return x

    def act_and_add(self, spec: LayerSpec, y: str, prefix: str, skip: str | None,
                    between: Callable[[str], str] = lambda y: y) -> str:
        """The activation and the residual add in the spec's order; ``between`` runs after the activation."""
        if not spec.act_after_add:
            y = self.act(spec.act, y, prefix)
        y = between(y)
        if spec.residual:
            if skip is None:
                # the block input the add reads comes from outside the unit, with the layer's output shape
                skip = self.init(f"{prefix}skip", self.rng.normal(0, 1, _out_shape(spec)))
            y = self.node("Add", [skip, y], f"{prefix}residual")
        return self.act(spec.act, y, prefix) if spec.act_after_add else y


def _conv(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """Conv (BatchNorm folded), activation, residual Add (or Add, then the activation)."""
    fan_in = spec.cin // spec.groups * spec.kernel * spec.kernel
    w = u.rng.normal(0, np.sqrt(2.0 / fan_in), (spec.cout, spec.cin // spec.groups, spec.kernel, spec.kernel))
    b = u.rng.normal(0, 0.1, spec.cout)
    p = spec.padding
    y = u.node("Conv", [x, u.init(f"{prefix}W", w), u.init(f"{prefix}B", b)], node,
               kernel_shape=[spec.kernel] * 2, strides=[spec.stride] * 2, pads=[p] * 4, group=spec.groups)
    return u.act_and_add(spec, y, prefix, skip)


def _linear(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """GlobalAveragePool, Flatten, Gemm, activation (LinearUnit)."""
    w = u.rng.normal(0, 0.1, (spec.cout, spec.cin))
    y = u.node("GlobalAveragePool", [x], f"{prefix}pool")
    y = u.node("Flatten", [y], f"{prefix}flatten", axis=1)
    y = u.node("Gemm", [y, u.init(f"{prefix}W", w), u.init(f"{prefix}B", np.zeros(spec.cout))], node, transB=1)
    return u.act(spec.act, y, prefix)


def _dense(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """Reshape to 2-D, Gemm, activation, Reshape back, residual Add (TokenLinearUnit)."""
    w = u.rng.normal(0, np.sqrt(1.0 / spec.cin), (spec.cout, spec.cin))
    b = u.rng.normal(0, 0.1, spec.cout)
    y = u.node("Reshape", [x, u.init(f"{prefix}flat_shape", np.array([-1, spec.cin]))], f"{prefix}flatten")
    y = u.node("Gemm", [y, u.init(f"{prefix}W", w), u.init(f"{prefix}B", b)], node, transB=1)
    shape = u.init(f"{prefix}token_shape", np.array([1, spec.hw, spec.cout]))
    return u.act_and_add(spec, y, prefix, skip, lambda y: u.node("Reshape", [y, shape], f"{prefix}unflatten"))


def _attention(u: _Unit, spec: LayerSpec, q: str, node: str, prefix: str, skip: str | None) -> str:
    """Scaled dot-product attention over the heads (``_attend``); keys and values are graph inputs."""
    heads, dim = spec.groups, spec.cin // spec.groups
    k, v = _kv_names(prefix)
    split_shape = u.init(f"{prefix}head_shape", np.array([1, spec.hw, heads, dim]))

    def split(x: str, tag: str, perm: list[int]) -> str:
        y = u.node("Reshape", [x, split_shape], f"{prefix}{tag}_split")
        return u.node("Transpose", [y], f"{prefix}{tag}_heads", perm=perm)

    s = u.node("MatMul", [split(q, "q", [0, 2, 1, 3]), split(k, "k", [0, 2, 3, 1])], f"{prefix}scores")
    s = u.node("Mul", [s, u.init(f"{prefix}scale_c", dim ** -0.5)], f"{prefix}scale")
    s = u.node("Softmax", [s], f"{prefix}softmax", axis=-1)
    y = u.node("MatMul", [s, split(v, "v", [0, 2, 1, 3])], f"{prefix}context")
    y = u.node("Transpose", [y], f"{prefix}merge_heads", perm=[0, 2, 1, 3])
    return u.node("Reshape", [y, u.init(f"{prefix}token_shape", np.array([1, spec.hw, spec.cin]))],
                  f"{prefix}merge")


def _se(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """GlobalAveragePool, Flatten, Gemm, Relu, Gemm, HardSigmoid, Unsqueeze twice, Mul with the map (mbv3's SE)."""
    c, r = spec.cin, spec.cout
    s = u.node("GlobalAveragePool", [x], f"{prefix}squeeze")
    s = u.node("Flatten", [s], f"{prefix}squeeze_flat", axis=1)
    s = u.node("Gemm", [s, u.init(f"{prefix}W1", u.rng.normal(0, np.sqrt(1.0 / c), (r, c))),
                        u.init(f"{prefix}B1", u.rng.normal(0, 0.1, r))], f"{prefix}se_reduce", transB=1)
    s = u.node("Relu", [s], f"{prefix}se_relu")
    s = u.node("Gemm", [s, u.init(f"{prefix}W2", u.rng.normal(0, np.sqrt(1.0 / r), (c, r))),
                        u.init(f"{prefix}B2", u.rng.normal(0, 0.1, c))], f"{prefix}se_expand", transB=1)
    s = u.node("HardSigmoid", [s], f"{prefix}se_gate", alpha=1.0 / 6)
    s = u.node("Unsqueeze", [s, u.init(f"{prefix}axis2", np.array([2]))], f"{prefix}unsqueeze_h")
    s = u.node("Unsqueeze", [s, u.init(f"{prefix}axis3", np.array([3]))], f"{prefix}unsqueeze_w")
    return u.node("Mul", [x, s], f"{prefix}excite")


def _pool(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """MaxPool or AveragePool (as nn.MaxPool2d / nn.AvgPool2d export), padded as a conv of that kernel is."""
    p = spec.padding
    attrs: dict[str, Any] = {"kernel_shape": [spec.kernel] * 2, "strides": [spec.stride] * 2, "pads": [p] * 4}
    if spec.op == "avgpool":
        return u.node("AveragePool", [x], node, count_include_pad=0, **attrs)
    return u.node("MaxPool", [x], node, **attrs)


def _layernorm(u: _Unit, spec: LayerSpec, x: str, node: str, prefix: str, skip: str | None) -> str:
    """LayerNormalization over the last axis (nn.LayerNorm at opset 17)."""
    scale = u.init(f"{prefix}gamma", u.rng.normal(1, 0.1, spec.cin))
    bias = u.init(f"{prefix}beta", u.rng.normal(0, 0.1, spec.cin))
    return u.node("LayerNormalization", [x, scale, bias], f"{prefix}layernorm", axis=-1, epsilon=LAYERNORM_EPS)


_BUILDERS: dict[str, Callable[..., str]] = {"conv": _conv, "linear": _linear, "dense": _dense,
                                            "attention": _attention, "se": _se, "layernorm": _layernorm,
                                            "maxpool": _pool, "avgpool": _pool}


def unit_model(specs: Sequence[LayerSpec], seed: int = 0) -> onnx.ModelProto:
    """A float ONNX model (batch 1, random weights) chaining ``specs``: one layer or one fusion unit.

    Each op is built as ``torch.onnx.export`` (opset 17) emits bitnas's module of it. The Conv/Gemm of a
    quantizable layer is named ``layer`` (one layer) or ``layer0``, ``layer1``... In a multi-layer unit a
    residual layer adds the earliest tensor of the unit with its output shape (the block's input), or the
    output of the block's projection shortcut (``shortcut_len``), which is built first and reads the unit's input.
    """
    specs = list(specs)
    shapes = input_shapes(specs)
    u = _Unit(np.random.default_rng(seed))
    n = len(specs)
    chain = specs
    tensors = [(INPUT_NAME, shapes[INPUT_NAME])]  # the unit's tensors a residual may add, earliest first
    k = shortcut_len(specs)
    if k:  # the projection shortcut (a conv, or an average pool and a conv) runs first, on the unit's input
        chain, sc = specs[:-k], INPUT_NAME
        for j in range(n - k, n):
            sc = _BUILDERS[specs[j].op](u, specs[j], sc, f"{LAYER_NODE}{j}", _prefix(j, n), None)
        tensors = [(sc, _out_shape(specs[-1]))]
    y = INPUT_NAME
    for i, spec in enumerate(chain):
        node = LAYER_NODE if n == 1 else f"{LAYER_NODE}{i}"
        skip = next((t for t, shape in tensors if shape == _out_shape(spec)), None) if n > 1 else None
        y = _BUILDERS[spec.op](u, spec, y, node, _prefix(i, n), skip)
        tensors.append((y, _out_shape(spec)))
    u.node("Identity", [y], "out", out=OUTPUT_NAME)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, _out_shape(specs[-1]))
    graph = helper.make_graph(u.nodes, "unit", inputs, [out], u.inits)
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
    check_layer(spec)
    if spec.bits not in CPU_BITS:
        raise UnknownLayerError(f"{_label(spec)}: the CPU profiler measures float or 2-8-bit weights with INT8 "
                                f"activations, not W{spec.w_bits}A{spec.a_bits}")


def _check_cpu_unit(specs: list[LayerSpec]) -> tuple[dict[str, list[int]], list[int]]:
    """Refuse a unit the CPU profiler cannot build; its input shapes and the indices of its quantized layers."""
    for s in specs:
        _check_cpu_bits(s)
    shapes = input_shapes(specs)
    quantized = [i for i, s in enumerate(specs) if s.quantized]
    if quantized and len(shapes) > 1:
        raise UnknownLayerError(f"{_label(specs[quantized[0]])}: quantized layers are calibrated on the unit's input "
                                "alone, but its attention reads keys and values from outside; profile them as lone "
                                "layers")
    return shapes, quantized


def _bits_tag(specs: list[LayerSpec]) -> str:
    """The file tag of a unit's policy: "int8" or "w4a8" for one layer; per layer 0 float, 1 W8A8, w W<w>A8."""
    if len(specs) == 1:
        w = specs[0].w_bits
        return "int8" if w == 8 else f"w{w}a8"
    return "q" + "".join("0" if not s.quantized else "1" if s.w_bits == 8 else str(s.w_bits) for s in specs)


def write_unit_model(specs: Sequence[LayerSpec], folder: Path, reduce_range: bool, seed: int = 0) -> Path:
    """Write the model of a layer or unit into ``folder`` (reused if present), quantized as the compiler
    quantizes its policy: INT8 QDQ, weights below 8 bits re-stored at their width (``policy_qdq``)."""
    specs = list(specs)
    shapes, quantized = _check_cpu_unit(specs)
    float_key = "+".join(s.with_bits(FLOAT_BITS).key for s in specs)
    stem = sha256_bytes(float_key.encode())[:16]
    fp32 = folder / f"{stem}_fp32.onnx"
    if not fp32.exists():
        folder.mkdir(parents=True, exist_ok=True)
        from bitnas.io import atomic_write_bytes

        atomic_write_bytes(fp32, unit_model([s.with_bits(FLOAT_BITS) for s in specs], seed).SerializeToString())
    if not quantized:
        return fp32
    rr = "_rr" if reduce_range else ""
    stem += "-qadd"  # quantized models end as quantized_residual_output says: not an older cache's files
    q = folder / f"{stem}_{_bits_tag(specs)}{rr}.onnx"
    if q.exists():
        return q
    nodes = [LAYER_NODE] if len(specs) == 1 else [f"{LAYER_NODE}{i}" for i in quantized]
    # the policy at 8 weight bits is quantized once; narrower weights are re-stored from it, as the
    # compiler's SubByteWeights does after its one PTQ pass
    q8 = folder / f"{stem}_{_bits_tag([s.with_bits((8, 8)) if s.quantized else s for s in specs])}{rr}.onnx"
    if not q8.exists():
        rng = np.random.default_rng(seed)
        calib = [rng.normal(0, 1, shapes[INPUT_NAME]).astype(np.float32) for _ in range(4)]
        src = q8.with_name(q8.name + ".src.onnx")
        try:
            policy_qdq(_named_for_inc(fp32, src), q8, dict.fromkeys(nodes, (8, 8)), calib, reduce_range)
            model = onnx.load(str(q8))
            if quantized_residual_output(model):
                onnx.checker.check_model(model)
                onnx.save(model, str(q8))
        finally:
            src.unlink(missing_ok=True)
    if q8 == q:
        return q
    narrow_file(q8, q, fp32, {nodes[k]: specs[i].w_bits for k, i in enumerate(quantized) if specs[i].w_bits < 8})
    return q


def quantized_residual_output(model: onnx.ModelProto) -> bool:
    """Give a quantized unit that ends in a residual Add (or Add, Relu) the Add the compiler emits where the
    next layer is an 8-bit convolution (``inc_ptq.requantize_adds``), in place; return whether it did.

    In an artifact that Add reads DQ outputs (its conv's, and the block input's, which the previous Add wrote
    to a QuantizeLinear) and writes to a QuantizeLinear, the Relu after it folded into that Q's zero point of
    0: ONNX Runtime's QLinearAdd. Here the unit's input (or the constant that stands for it in a lone layer)
    is read through a DequantizeLinear, and the unit's output through a QuantizeLinear and DequantizeLinear, at
    parameters taken from the graph (latency does not depend on them). A unit whose last conv or first layer
    is float is left as it is.
    """
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    last = producers.get(OUTPUT_NAME)  # the unit's Identity, unless the optimizer dropped it
    if last is not None and last.op_type == "Identity":
        last = producers.get(last.input[0])
    relu = last if last is not None and last.op_type == "Relu" else None
    add = producers.get(relu.input[0]) if relu is not None else last
    if add is None or add.op_type != "Add":
        return False

    def dq_of(name: str) -> onnx.NodeProto | None:
        """The DequantizeLinear that ``name`` is, or that a Relu computing it reads at zero point 0."""
        n = producers.get(name)
        if n is not None and n.op_type == "Relu":
            n = producers.get(n.input[0])
            zero = inits.get(n.input[2]) if n is not None and len(n.input) > 2 else None
            if zero is None or numpy_helper.to_array(zero).any():
                return None
        return n if n is not None and n.op_type == "DequantizeLinear" else None

    dqs = [dq_of(i) for i in add.input]
    conv_dq = next((d for d in dqs if d is not None), None)
    q_in = next((n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME), None)
    if conv_dq is None or q_in is None:
        return False
    dq_in = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q_in.output[0])
    added: list[onnx.NodeProto] = []
    for k, name in enumerate(add.input):
        if dqs[k] is not None:
            add.input[k] = dqs[k].output[0]
        elif name == INPUT_NAME:
            add.input[k] = dq_in.output[0]
        elif name in inits:  # a lone layer's stand-in for the block input: stored as UINT8 codes
            value = numpy_helper.to_array(inits[name])
            scale = float(np.abs(value).max()) / 127 or 1.0
            codes = np.clip(np.round(value / scale) + 128, 0, 255).astype(np.uint8)
            g.initializer.extend([numpy_helper.from_array(codes, f"{name}_codes"),
                                  numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                                  numpy_helper.from_array(np.array(128, np.uint8), f"{name}_zero")])
            added.append(helper.make_node("DequantizeLinear", [f"{name}_codes", f"{name}_scale", f"{name}_zero"],
                                          [f"{name}_dq"], name=f"{name}_dequantize"))
            add.input[k] = f"{name}_dq"
        else:
            return False
    final = (relu if relu is not None else add).output[0]
    scale, zero, total = conv_dq.input[1], f"{add.name}_out_zero", f"{add.name}_sum"
    g.initializer.append(numpy_helper.from_array(np.array(0 if relu is not None else 128, np.uint8), zero))
    add.output[0] = total
    added += [helper.make_node("QuantizeLinear", [total, scale, zero], [f"{add.name}_out_q"],
                               name=f"{add.name}_out_quantize"),
              helper.make_node("DequantizeLinear", [f"{add.name}_out_q", scale, zero], [final],
                               name=f"{add.name}_out_dequantize")]
    if relu is not None:  # the Q's zero point of 0 clips as it did
        g.node.remove(relu)
    from bitnas.passes.inc_ptq import topological

    nodes = topological(list(g.node) + added, {i.name for i in g.input} | {t.name for t in g.initializer} | {""})
    del g.node[:]
    g.node.extend(nodes)
    return True


def _named_for_inc(src: Path, dst: Path) -> Path:
    """``src`` as ONNX Runtime rewrites it before INC quantizes it, written to ``dst`` with every node named.

    ONNX Runtime expands function ops (HardSwish into HardSigmoid and Mul) into nodes without names, and
    INC keeps only one of the nodes that share a name, leaving the rest of the graph reading a tensor
    nothing computes. Returns ``src`` itself when no node needs a name.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst))
    unnamed = [n for n in model.graph.node if not n.name]
    if not unnamed:
        return src
    for i, n in enumerate(unnamed):
        n.name = f"ort_inlined_{i}"
    onnx.save(model, str(dst))
    return dst


def write_layer_model(spec: LayerSpec, folder: Path, reduce_range: bool, seed: int = 0) -> Path:
    """Write the one-layer model of ``spec`` (quantized when its bits are 8) and return its path."""
    return write_unit_model([spec], folder, reduce_range, seed)


def input_for(specs: Sequence[LayerSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input of the unit model of ``specs``."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 1, shape).astype(np.float32) for name, shape in input_shapes(specs).items()}


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


def _at(spec: LayerSpec, bits: Bits) -> LayerSpec:
    """``spec`` at ``bits``; float-only ops stay float."""
    return spec.with_bits(FLOAT_BITS if spec.op in FLOAT_OPS else bits)


def layer_items(specs: Sequence[LayerSpec], bit_options: Sequence[Bits]) -> list[Item]:
    """Every spec at every bit option (float-only ops once, in float); refuses a spec it cannot build."""
    out, seen = [], set()
    for s in specs:
        check_layer(s.with_bits(FLOAT_BITS))
        for b in bit_options:
            ls = _at(s, b)
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
        input_shapes([s.with_bits(FLOAT_BITS) for s in blk])
        combos = [tuple(c) for c in np.array(np.meshgrid(*[range(len(bit_options))] * len(blk))).T.reshape(-1, len(blk))]
        for combo in combos:
            uniform = len(set(combo)) == 1
            if not uniform and rng.random() >= mixed_fraction:
                continue
            specs = tuple(_at(s, bit_options[i]) for s, i in zip(blk, combo))
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
    for it in items:  # refused before anything is measured
        _check_cpu_unit(list(it.specs))
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
