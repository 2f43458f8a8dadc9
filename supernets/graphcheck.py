"""The layers an exported ONNX graph computes, found by pattern, and the check of a family's ``layers()``.

The patterns are nn-Meter's kernels, one per ``LayerSpec`` op: Conv, then its activation (Relu,
Clip = relu6, HardSwish or HardSigmoid * x, Gelu or its Erf form) and a residual Add, in either order;
GlobalAveragePool, Flatten, Gemm (``linear``); a Gemm on a 2-D view of tokens (``dense``), its activation
and residual Add; squeeze-and-excitation (``se``); LayerNormalization; MatMul, Softmax, MatMul
(``attention``); MaxPool and AveragePool padded as a conv is (``maxpool``, ``avgpool``). Reshapes and QuantizeLinear/DequantizeLinear pairs between the nodes of a pattern are
looked through, so a quantized artifact reads as its float graph.

A residual Add belongs to the first layer, in graph order, whose output reaches it and nothing else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from bitnas.errors import UserError
from bitnas.space import FLOAT_BITS, Candidate, LayerSpec

FIELDS = ("op", "cin", "cout", "kernel", "stride", "groups", "hw", "act", "residual", "act_after_add",
          "w_bits", "a_bits")
_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class _Graph:
    """Producers, consumers, constant values and concrete shapes (at batch 1) of a model's tensors."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.values[n.output[0]] = numpy_helper.to_array(a.t)
        self.shapes = _concrete_shapes(model)
        self.shapes.update({k: tuple(v.shape) for k, v in self.values.items()})

    def users(self, t: str) -> list[onnx.NodeProto]:
        """Consumers of ``t``, looking through QuantizeLinear/DequantizeLinear pairs."""
        out = []
        for n in self.consumers.get(t, []):
            if n.op_type == "QuantizeLinear":
                for dq in self.consumers.get(n.output[0], []):
                    out += self.users(dq.output[0]) if dq.op_type == "DequantizeLinear" else [dq]
            else:
                out.append(n)
        return out

    def only_user(self, t: str, skip_shapes: bool = False) -> tuple[onnx.NodeProto | None, str]:
        """The one consumer of ``t`` (and the tensor it reads), looking through shape-only ops if asked."""
        users = self.users(t)
        while skip_shapes and len(users) == 1 and users[0].op_type in _SHAPE_OPS:
            t = users[0].output[0]
            users = self.users(t)
        return (users[0], t) if len(users) == 1 else (None, t)

    def source(self, t: str, skip_shapes: bool = False) -> onnx.NodeProto | None:
        """The node computing ``t``, looking back through DequantizeLinear/QuantizeLinear (and shape ops)."""
        n = self.producer.get(t)
        while n is not None and (n.op_type in ("DequantizeLinear", "QuantizeLinear")
                                 or (skip_shapes and n.op_type in _SHAPE_OPS)):
            n = self.producer.get(n.input[0])
        return n

    def value(self, t: str) -> np.ndarray | None:
        if t in self.values:
            return self.values[t]
        n = self.producer.get(t)
        if n is not None and n.op_type in ("DequantizeLinear", "Identity"):
            return self.value(n.input[0])
        return None

    def weight_shape(self, node: onnx.NodeProto) -> tuple[int, ...]:
        t = node.input[1]
        n = self.producer.get(t)
        while n is not None and n.op_type in ("DequantizeLinear", "Identity"):
            t, n = n.input[0], self.producer.get(n.input[0])
        return tuple(self.shapes[t])

    def scalar(self, t: str) -> float | None:
        v = self.value(t)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _concrete_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The shape of every node output, measured by running the model once on zeros at batch 1."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in known]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inits = {t.name for t in model.graph.initializer}
    feed = {}
    for i in sess.get_inputs():
        if i.name in inits:
            continue
        dims = [d if isinstance(d, int) else 1 for d in i.shape]
        feed[i.name] = np.zeros(dims, dtype=np.float32)
    outs = sess.run(None, feed)
    return {**{k: v.shape for k, v in feed.items()}, **{o.name: v.shape for o, v in zip(sess.get_outputs(), outs)}}


def _act(g: _Graph, t: str) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """(activation, its output, its nodes) when every consumer of ``t`` is one activation pattern."""
    users = g.users(t)
    if len(users) == 1:
        n = users[0]
        if n.op_type == "Relu":
            return "relu", n.output[0], [n]
        if n.op_type in ("HardSwish", "Gelu"):
            return ("hswish" if n.op_type == "HardSwish" else "gelu"), n.output[0], [n]
        if n.op_type == "Clip":
            lo, hi = _clip_bounds(g, n)
            if lo == 0.0 and hi == 6.0:
                return "relu6", n.output[0], [n]
            if lo == 0.0 and hi is None:
                return "relu", n.output[0], [n]
        return None
    if len(users) != 2:
        return None
    ops = {u.op_type: u for u in users}
    hs, mul = ops.get("HardSigmoid"), ops.get("Mul")
    if hs is not None and mul is not None and hs.output[0] in mul.input:
        attrs = {a.name: a.f for a in hs.attribute}
        if abs(attrs.get("alpha", 0.2) - 1 / 6) < 1e-6 and abs(attrs.get("beta", 0.5) - 0.5) < 1e-6:
            return "hswish", mul.output[0], [hs, mul]
    div = ops.get("Div")
    if div is not None and mul is not None and abs((g.scalar(div.input[1]) or 0) - 2 ** 0.5) < 1e-4:
        erf, _ = g.only_user(div.output[0])
        add, _ = g.only_user(erf.output[0]) if erf is not None and erf.op_type == "Erf" else (None, "")
        if add is not None and add.op_type == "Add" and add.output[0] in mul.input:
            half, _ = g.only_user(mul.output[0])
            if half is not None and half.op_type == "Mul" and any(g.scalar(i) == 0.5 for i in half.input):
                return "gelu", half.output[0], [div, erf, add, mul, half]
    return None


def _clip_bounds(g: _Graph, n: onnx.NodeProto) -> tuple[float | None, float | None]:
    attrs = {a.name: a.f for a in n.attribute}
    lo = g.scalar(n.input[1]) if len(n.input) > 1 and n.input[1] else attrs.get("min")
    hi = g.scalar(n.input[2]) if len(n.input) > 2 and n.input[2] else attrs.get("max")
    return lo, hi


def _epilogue(g: _Graph, t: str, used: set[int], shapes_between: bool) -> dict[str, Any]:
    """Activation and residual Add (in either order) that follow a Conv or Gemm output ``t``."""
    out: dict[str, Any] = {"act": "none", "residual": False, "act_after_add": False}
    act = _act(g, t)
    if act is not None:
        out["act"], t, nodes = act
        used.update(g.index[id(n)] for n in nodes)
    add, _ = g.only_user(t, skip_shapes=shapes_between)
    if add is not None and add.op_type == "Add" and g.index[id(add)] not in used and \
            all(g.value(i) is None for i in add.input):
        out["residual"] = True
        used.add(g.index[id(add)])
        if out["act"] == "none":
            act = _act(g, add.output[0])
            if act is not None:
                out["act"], out["act_after_add"] = act[0], True
                used.update(g.index[id(n)] for n in act[2])
    return out


def _se(g: _Graph, gap: onnx.NodeProto, used: set[int]) -> LayerSpec | None:
    """GlobalAveragePool, Gemm, Relu, Gemm, HardSigmoid, Mul with the pooled map, as one ``se`` spec."""
    x = gap.input[0]
    reduce, _ = g.only_user(gap.output[0], skip_shapes=True)
    if reduce is None or reduce.op_type != "Gemm":
        return None
    relu, _ = g.only_user(reduce.output[0])
    expand, _ = g.only_user(relu.output[0]) if relu is not None and relu.op_type == "Relu" else (None, "")
    if expand is None or expand.op_type != "Gemm":
        return None
    gate, _ = g.only_user(expand.output[0])
    mul, _ = g.only_user(gate.output[0], skip_shapes=True) if gate is not None and \
        gate.op_type == "HardSigmoid" else (None, "")
    if mul is None or mul.op_type != "Mul" or not any(g.source(i) is g.source(x) for i in mul.input):
        return None
    used.update(g.index[id(n)] for n in (gap, reduce, relu, expand, gate, mul))
    w = g.weight_shape(reduce)
    r = w[0] if _trans_b(reduce) else w[1]
    _, c, h = g.shapes[x][:3]
    return LayerSpec("se", c, r, hw=h, name=_common_prefix(reduce.name, expand.name))


def _common_prefix(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
        n += 1
    return ".".join(pa[:n]) or a


def _trans_b(n: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in n.attribute)


def _attention(g: _Graph, sm: onnx.NodeProto, used: set[int]) -> LayerSpec | None:
    """MatMul (Q, K^T), an optional scale, Softmax, MatMul with V."""
    scores = g.source(sm.input[0])
    scale = None
    if scores is not None and scores.op_type in ("Mul", "Div"):
        scale, scores = scores, g.source(next(i for i in scores.input if g.value(i) is None))
    out, _ = g.only_user(sm.output[0])
    if scores is None or scores.op_type != "MatMul" or out is None or out.op_type != "MatMul":
        return None
    used.update(g.index[id(n)] for n in (scores, scale, sm, out) if n is not None)
    q = g.shapes[scores.input[0]]  # (batch, heads, tokens, head size)
    heads, tokens, width = (q[1], q[2], q[1] * q[3]) if len(q) == 4 else (1, q[-2], q[-1])
    return LayerSpec("attention", width, width, groups=heads, hw=tokens, name=sm.name)


def _pool(g: _Graph, n: onnx.NodeProto) -> LayerSpec | None:
    """A square MaxPool/AveragePool padded as a conv of its kernel is (k // 2 odd, 0 even); else None (no
    ``LayerSpec`` prices it, and the adapter refuses it by name)."""
    attrs = {a.name: (list(a.ints) if a.ints else a.i) for a in n.attribute}
    k, s = attrs.get("kernel_shape") or [0], attrs.get("strides") or [1]
    pads = attrs.get("pads") or [0] * 4
    x = g.shapes[n.input[0]]
    if len(x) != 4 or len(set(k)) != 1 or len(set(s)) != 1 or len(set(pads)) != 1 or x[2] != x[3]:
        return None
    spec = LayerSpec("maxpool" if n.op_type == "MaxPool" else "avgpool", x[1], x[1], kernel=k[0], stride=s[0],
                     hw=x[2], name=n.name)
    out = g.shapes.get(n.output[0])
    if pads[0] != spec.padding or any(v != 1 for v in (attrs.get("dilations") or [1])) or \
            (out is not None and out[2] != spec.out_hw):  # ceil_mode that changes the size
        return None
    return spec


def graph_layers(model: onnx.ModelProto | str | Path | Any) -> list[LayerSpec]:
    """The layers an exported graph computes, in graph order, with the bits recorded on it (float if none)."""
    return _match(_load(model))[0]


# nodes that only move, view or convert data: no layer pattern needs to cover them
GLUE_OPS = frozenset({"Constant", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Shape",
                      "Gather", "Cast", "QuantizeLinear", "DequantizeLinear"})


def unprofiled_nodes(model: onnx.ModelProto | str | Path | Any) -> list[onnx.NodeProto]:
    """The nodes of a graph that compute something no layer pattern covers (what no LUT entry can price)."""
    model = _load(model)
    _, used, g = _match(model)
    return [n for i, n in enumerate(g.nodes) if i not in used and n.op_type not in GLUE_OPS]


def _load(model: onnx.ModelProto | str | Path | Any) -> onnx.ModelProto:
    if hasattr(model, "path") and not isinstance(model, onnx.ModelProto):
        model = model.path
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _match(model: onnx.ModelProto) -> tuple[list[LayerSpec], set[int], _Graph]:
    """The graph's layers in graph order, the indices of the nodes their patterns cover, and the graph."""
    from bitnas.passes.assign_bits import read_layer_bits

    g = _Graph(model)
    bits = read_layer_bits(model)
    used: set[int] = set()
    found: list[tuple[int, LayerSpec]] = []
    for i, n in enumerate(g.nodes):
        if i in used:
            continue
        spec = None
        if n.op_type == "GlobalAveragePool":
            spec = _se(g, n, used)
        elif n.op_type == "Softmax":
            spec = _attention(g, n, used)
        elif n.op_type in ("MaxPool", "AveragePool"):
            spec = _pool(g, n)
        elif n.op_type == "LayerNormalization":
            shape = g.shapes[n.input[0]]
            spec = LayerSpec("layernorm", shape[-1], shape[-1], hw=int(np.prod(shape[1:-1])), name=n.name)
        elif n.op_type == "Conv":
            x, w = g.shapes[n.input[0]], g.weight_shape(n)
            attrs = {a.name: list(a.ints) if a.ints else a.i for a in n.attribute}
            spec = LayerSpec("conv", x[1], w[0], kernel=w[2], stride=(attrs.get("strides") or [1])[0],
                             groups=attrs.get("group", 1) or 1, hw=x[2], name=n.name,
                             **_epilogue(g, n.output[0], used, shapes_between=False))
        elif n.op_type == "Gemm":
            w = g.weight_shape(n)
            cout, cin = (w[0], w[1]) if _trans_b(n) else (w[1], w[0])
            src = g.source(n.input[0], skip_shapes=True)
            if src is not None and src.op_type == "GlobalAveragePool":
                used.add(g.index[id(src)])
                spec = LayerSpec("linear", cin, cout, hw=g.shapes[src.input[0]][2], name=n.name,
                                 **_epilogue(g, n.output[0], used, shapes_between=False))
            else:
                spec = LayerSpec("dense", cin, cout, hw=g.shapes[n.input[0]][0], name=n.name,
                                 **_epilogue(g, n.output[0], used, shapes_between=True))
        if spec is not None:
            used.add(i)
            found.append((i, spec.with_bits(bits.get(spec.name, FLOAT_BITS))))
    return [s for _, s in sorted(found, key=lambda p: p[0])], used, g


def compare_layers(expected: Sequence[LayerSpec], got: Sequence[LayerSpec], where: str = "") -> None:
    """Raise ``UserError`` at the first layer whose fields differ, that one side lacks, or that is out of order."""
    suffix = f" ({where})" if where else ""
    by_name = {s.name: s for s in got}
    for s in expected:
        g = by_name.get(s.name)
        if g is None:
            raise UserError(f"layer '{s.name}': layers() lists a {s.op} layer, the exported graph has no layer of "
                            f"that name{suffix}")
        for f in FIELDS:
            a, b = getattr(s, f), getattr(g, f)
            if a != b:
                raise UserError(f"layer '{s.name}': layers() says {f} {a}, the exported graph has {b}{suffix}")
    names = {s.name for s in expected}
    for g in got:
        if g.name not in names:
            raise UserError(f"layer '{g.name}': the exported graph computes a {g.op} layer ({g.key}) that layers() "
                            f"does not list{suffix}")
    order = [g.name for g in got]
    for a, b in zip(expected, order):
        if a.name != b:
            raise UserError(f"layer '{a.name}': layers() lists it where the exported graph computes '{b}'{suffix}")


def check_layers(supernet: Any, candidate: Candidate, opset: int = 17,
                 extract: Callable[[Candidate], Any] | None = None) -> list[LayerSpec]:
    """Export ``supernet.extract(candidate)`` and check ``supernet.layers(candidate)`` against its graph.

    The candidate's policy is written onto the graph's quantizable layers, as ``AssignBitwidths`` does, so
    the bits are compared too (every other layer is float). ``extract`` replaces ``supernet.extract``, e.g.
    to export a QAT subnet's float structure (its BatchNorm cannot be folded under LSQ weights). Returns
    the graph's layers.
    """
    from bitnas.passes.assign_bits import set_layer_bits
    from bitnas.passes.export_onnx import export_static
    from bitnas.supernets.families import input_shape

    c = supernet.space.validate(candidate)
    policy = c.policy_dict
    with tempfile.TemporaryDirectory(prefix="bitnas-graphcheck-") as tmp:
        static = (extract or supernet.extract)(c)
        exported = export_static(static, Path(tmp) / "subnet.onnx", input_shape(supernet), opset)
        model = onnx.load(str(exported.path))
    set_layer_bits(model, {n: tuple(policy[n]) for n in exported.layers if n in policy})
    got = graph_layers(model)
    compare_layers(supernet.layers(c), got, f"space '{supernet.space.name}', candidate {c.id}")
    return got


def check_family_layers(supernet: Any, samples: int = 2, seed: int = 0) -> None:
    """``check_layers`` on the space's smallest and largest float candidates and ``samples`` seeded random ones.

    Profiling prices ``layers()``; this is the check that they are what ``extract()`` computes, run before
    anything is measured. A supernet whose ``extract`` takes ``quantizers`` (QAT) is checked through its
    float structure.
    """
    import inspect

    space = supernet.space
    rng = np.random.default_rng(seed)
    float_policy = {g.name: FLOAT_BITS for g in space.policy_genes if FLOAT_BITS in g.options}
    cands = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(samples)]
    extract = None
    if "quantizers" in inspect.signature(supernet.extract).parameters:
        def extract(c: Candidate) -> Any:
            return supernet.extract(c, quantizers=False)
    for c in cands:
        c = space.make(c.arch_dict, {**c.policy_dict, **float_policy})
        check_layers(supernet, c, extract=extract)
