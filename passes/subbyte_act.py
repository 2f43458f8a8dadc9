"""SubByteActivations: carry activations below 8 bits into the QDQ graph as clipped UINT8 ranges.

The static quantizer writes every quantized layer's activations as UINT8 (256 levels). For a layer whose
graph bits say ``a < 8``, this pass gives its input and output QuantizeLinear/DequantizeLinear pairs the
scale and zero point of ``2**a`` levels that the search's simulated quantizer calibrated (per-tensor,
asymmetric, min/max over the same calibration batches) and puts a ``Clip`` to that range in front of each
QuantizeLinear, so the stored UINT8 codes stay within ``[0, 2**a - 1]`` exactly as the simulation clamps
them. Where a narrow layer reads a tensor another layer's pair quantizes at other bits, it gets a pair of
its own (the simulation re-quantizes there too). A layer with an INT32 bias (5-8 weight bits,
``has_int32_bias``) whose input scale changed gets it re-quantized to the new ``input scale x weight
scale``, as the simulation rounds it. Layers at 8 bits are left as the static quantizer wrote them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field

from bitnas.config import StrictModel, WorkFileName
from bitnas.errors import InternalError
from bitnas.io import atomic_write_bytes
from bitnas.passes.assign_bits import layer_bits_of, set_layer_bits
from bitnas.passes.export_onnx import QUANT_OPS, OnnxModel
from bitnas.passes.subbyte import _drop_unused, _fresh, float_params, store_int32_bias
from bitnas.pipeline import Pass, PassContext
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.quant import has_int32_bias
from bitnas.supernets.static import quantize_net

Params = tuple[float, int, int]  # (scale, zero point, qmax)


def simulated_ranges(net, bits: dict, calib, reduce_range: bool) -> dict[str, tuple[Params, Params]]:
    """Per quantized layer, the (input, output) activation parameters the simulated quantizer uses."""
    q = quantize_net(net, bits, calib, reduce_range)
    out = {}
    for u in q.units():
        if u.in_q is None:
            continue
        pair = []
        for aq in (u.in_q, u.out_q):
            scale, zero = aq.qparams()
            pair.append((float(scale), int(zero), 2 ** aq.bits - 1))
        out[u.layer_name] = tuple(pair)
    return out


class _Graph:
    """Small helpers over one ONNX graph: producers, readers, fresh names, scalar initializers."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.g = model, model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.taken = set(self.inits) | {o for n in self.g.node for o in n.output} | {n.name for n in self.g.node}
        self.taken |= {i.name for i in self.g.input}

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((n for n in self.g.node if tensor in n.output), None)

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if tensor in n.input]

    def name(self, base: str) -> str:
        return _fresh(base, self.taken)

    def scalar(self, base: str, value, dtype) -> str:
        name = self.name(base)
        t = numpy_helper.from_array(np.array(value, dtype=dtype), name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def insert_before(self, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        at = list(self.g.node).index(anchor)
        for k, n in enumerate(nodes):
            self.g.node.insert(at + k, n)


def _clip_bounds(p: Params) -> tuple[float, float]:
    scale, zero, qmax = p
    return (0 - zero) * scale, (qmax - zero) * scale


def _set_pair(G: _Graph, q: onnx.NodeProto, dqs: list[onnx.NodeProto], p: Params, tag: str) -> None:
    """Give the pair (``q`` and its DequantizeLinear readers ``dqs``) the parameters ``p`` and a Clip in front."""
    scale, zero, _ = p
    s = G.scalar(f"{tag}.act_scale", scale, np.float32)
    z = G.scalar(f"{tag}.act_zero_point", zero, np.uint8)
    lo, hi = _clip_bounds(p)
    clipped = G.name(f"{tag}.act_clipped")
    clip = helper.make_node("Clip", [q.input[0], G.scalar(f"{tag}.act_min", lo, np.float32),
                                     G.scalar(f"{tag}.act_max", hi, np.float32)], [clipped], name=G.name(f"{tag}.clip"))
    G.insert_before(q, [clip])
    q.input[0], q.input[1], q.input[2] = clipped, s, z
    for dq in dqs:
        dq.input[1], dq.input[2] = s, z


def _new_pair(G: _Graph, src: str, reader: onnx.NodeProto, index: int, p: Params, tag: str) -> str:
    """A fresh Clip, QuantizeLinear and DequantizeLinear from ``src`` into ``reader.input[index]``; returns the
    scale's name."""
    scale, zero, _ = p
    s = G.scalar(f"{tag}.act_scale", scale, np.float32)
    z = G.scalar(f"{tag}.act_zero_point", zero, np.uint8)
    lo, hi = _clip_bounds(p)
    clipped, quant, deq = G.name(f"{tag}.act_clipped"), G.name(f"{tag}.act_q"), G.name(f"{tag}.act_dq")
    nodes = [
        helper.make_node("Clip", [src, G.scalar(f"{tag}.act_min", lo, np.float32),
                                  G.scalar(f"{tag}.act_max", hi, np.float32)], [clipped], name=G.name(f"{tag}.clip")),
        helper.make_node("QuantizeLinear", [clipped, s, z], [quant], name=G.name(f"{tag}.quantize")),
        helper.make_node("DequantizeLinear", [quant, s, z], [deq], name=G.name(f"{tag}.dequantize")),
    ]
    G.insert_before(reader, nodes)
    reader.input[index] = deq
    return s


def _requantize_bias(G: _Graph, node: onnx.NodeProto, in_scale: float, bias: np.ndarray | None) -> None:
    """An INT32 bias at ``in_scale x weight scale`` (what the runtime's integer kernel assumes), from the float
    export's ``bias`` (rounded once, as the simulation rounds it)."""
    if len(node.input) < 3 or not node.input[2]:
        return
    bdq, wdq = G.producer(node.input[2]), G.producer(node.input[1])
    if bdq is None or bdq.op_type != "DequantizeLinear" or wdq is None or wdq.op_type != "DequantizeLinear":
        return
    if bias is None:
        bias = G.array(bdq.input[0]).astype(np.float64) * G.array(bdq.input[1]).astype(np.float64)
    for t in store_int32_bias(G.g, bdq, bias, in_scale, G.array(wdq.input[1]), f"{node.name}.bias", "", G.taken):
        G.inits[t.name] = t


class SubByteActivations(Pass):
    """Narrow the activation ranges of layers below 8 bits to their policy's levels (clipped UINT8 QDQ)."""

    class Config(StrictModel):
        filename: WorkFileName = Field("subbyte_act.onnx", description="file written in the work folder")

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        bits = layer_bits_of(model.path)
        narrow = {k for k, (w, a) in bits.items() if w < 32 and a < 8}
        dst = ctx.workdir / self.config.filename
        ctx.results["activation_storage"] = {"narrow_layers": len(narrow),
                                             "format": "uint8 QDQ clipped to 2**a levels" if narrow else None}
        if not narrow:
            atomic_write_bytes(dst, model.path.read_bytes())
            return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)
        net = ctx.need("last_static_net", self.name)
        quant = ctx.results.get("quantization")
        if quant is None:
            raise InternalError(f"{self.name}: no static quantization recorded; run a PTQ pass before it")
        calib = calibration_batches(ctx.need("data", self.name), quant["calibration"]["batches"],
                                    quant["calibration"]["batch_size"], ctx.seed)
        ranges = simulated_ranges(net, bits, calib, quant["reduce_range"])
        floats = float_params(model.float_path)
        onnx_model = onnx.load(str(model.path))
        G = _Graph(onnx_model)
        nodes = {n.name: n for n in G.g.node if n.op_type in QUANT_OPS}
        missing = sorted(narrow - set(nodes))
        if missing:
            raise InternalError(f"{self.name}: no Conv/Gemm node for layer(s) {missing}")
        owner: dict[str, str] = {}  # DequantizeLinear output -> the layer whose output that pair quantizes
        # outputs first: a narrow layer's own output pair takes its simulated output range
        for name in sorted(narrow):
            node = nodes[name]
            q = next((r for r in G.readers(node.output[0]) if r.op_type == "QuantizeLinear"), None)
            if q is None:
                raise InternalError(f"{self.name}: layer '{name}' has no quantized output")
            dqs = [r for r in G.readers(q.output[0]) if r.op_type == "DequantizeLinear"]
            _set_pair(G, q, dqs, ranges[name][1], f"{name}.out")
            for dq in dqs:
                owner[dq.output[0]] = name
        # then inputs: a narrow layer reads its simulated input range, from a pair of its own where needed
        for name in sorted(narrow):
            node = nodes[name]
            want = ranges[name][0]
            dq = G.producer(node.input[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                raise InternalError(f"{self.name}: layer '{name}' reads no quantized input")
            if has_int32_bias(bits[name][0]):
                _requantize_bias(G, node, want[0], floats[name][1])
            src = owner.get(dq.output[0])
            if src is not None and ranges[src][1] == want:
                continue  # the producer's pair already has this layer's range and levels
            q = G.producer(dq.input[0])
            dedicated = (src is None and q is not None and q.op_type == "QuantizeLinear"
                         and all(r is node for r in G.readers(dq.output[0]))
                         and all(r.op_type == "DequantizeLinear" for r in G.readers(q.output[0])))
            if dedicated:
                _set_pair(G, q, [dq], want, f"{name}.in")
            else:
                # a pair another layer owns (or shares): re-quantize from its output, as the simulation does
                _new_pair(G, dq.output[0], node, 0, want, f"{name}.in")
        # an 8-bit layer reading a narrowed pair re-quantizes it at its own 8-bit input range, as the simulation does
        for name, node in nodes.items():
            if name in narrow or bits.get(name, (32, 32))[0] >= 32:
                continue
            dq = G.producer(node.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.output[0] in owner:
                _new_pair(G, dq.output[0], node, 0, ranges[name][0], f"{name}.in")
                if has_int32_bias(bits[name][0]):
                    _requantize_bias(G, node, ranges[name][0][0], floats[name][1])
        _drop_unused(G.g)
        set_layer_bits(onnx_model, bits)
        onnx.checker.check_model(onnx_model)
        atomic_write_bytes(dst, onnx_model.SerializeToString())
        return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)
