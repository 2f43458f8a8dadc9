"""SubByteWeights: store the weights of layers below 8 bits at their policy's width.

A quantized layer's weight reaches its Conv/Gemm through DequantizeLinear. For a layer whose graph bits
say ``w < 8``, the weight is re-quantized from the float export (per-channel symmetric, ``2**(w-1)-1``
levels each side, as the search simulated) with a new scale. Weights of 2-4 bits are stored packed in ONNX's
INT4 type (opset 21) for runtimes that read it, with their bias in float (the runtimes dequantize them into a
float kernel); weights of 5-7 bits, or any width on a runtime without INT4, are stored as INT8 values
confined to the policy's range. A 5-7-bit layer keeps an INT32 bias at ``input scale x its new weight scale``,
as an 8-bit layer does: ONNX Runtime fuses it into QLinearConv, whose integer bias is on that grid, and the
simulation rounds it so (``has_int32_bias``). The artifact's size on disk follows the policy either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydantic import Field

from bitnas.config import StrictModel, WorkFileName
from bitnas.errors import InternalError
from bitnas.io import atomic_write_bytes
from bitnas.passes.assign_bits import layer_bits_of, set_layer_bits
from bitnas.passes.export_onnx import QUANT_OPS, OnnxModel
from bitnas.pipeline import Pass, PassContext
from bitnas.space import FLOAT_BITS, Bits
from bitnas.supernets.quant import has_int32_bias, stored_scale, weight_qmax

INT4_OPSET = 21
# runtimes that run INT4 weights: ONNX Runtime and OpenVINO read them; TVM's frontend cannot, so its
# backend widens them to INT8 at import (the same values; the file keeps INT4)
INT4_RUNTIMES = {"ort", "openvino", "tvm"}


def float_params(path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias or None) of every Conv/Gemm of the float export at ``path``, by node name."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type in QUANT_OPS and n.input[1] in inits:
            b = n.input[2] if len(n.input) > 2 else ""
            out[n.name] = (numpy_helper.to_array(inits[n.input[1]]),
                           numpy_helper.to_array(inits[b]) if b in inits else None)
    return out


def requantize(w: np.ndarray, bits: int, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric quantization of ``w`` at ``bits``: (int values, scales).

    Below 8 bits the scales are rounded as they are stored, and as the simulated quantizer rounds them
    (``stored_scale``); ``reduce_range`` narrows 8 bits to +-63, as the simulated quantizer does.
    """
    qmax = weight_qmax(bits, reduce_range)
    amax = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(axis=1), 1e-12).astype(np.float32)
    scale = stored_scale(amax / np.float32(qmax), bits)
    q = np.clip(np.rint(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -qmax, qmax).astype(np.int8)
    return q, scale


def int32_bias(bias: np.ndarray, in_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The INT32 bias (values, per-channel scales) at ``in_scale x w_scale``, rounded once from the float
    ``bias`` as the simulated quantizer rounds it (``fake_quant_bias``)."""
    scale = np.maximum(np.float32(in_scale) * np.asarray(w_scale, np.float32), np.float32(1e-12)).astype(np.float32)
    return np.rint(np.asarray(bias, np.float32) / scale).astype(np.int32), scale


class SubByteWeights(Pass):
    """Narrow the stored weights of layers below 8 bits (INT4-packed where the runtimes read it)."""

    class Config(StrictModel):
        storage: Literal["auto", "int4", "int8"] = Field(
            "auto", description="auto: packed INT4 for 2-4 bits unless a target runtime cannot read it")
        runtimes: tuple[str, ...] = Field(("ort", "openvino", "tvm"), description="runtimes the artifact must run on")
        filename: WorkFileName = Field("subbyte.onnx", description="file written in the work folder")

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        bits = layer_bits_of(model.path)
        narrow = {k: b[0] for k, b in bits.items() if b[0] < 8}
        dst = ctx.workdir / self.config.filename
        storage = self.config.storage
        if storage == "auto":
            storage = "int4" if set(self.config.runtimes) <= INT4_RUNTIMES else "int8"
        ctx.results["weight_storage"] = {"narrow_layers": len(narrow), "storage": storage if narrow else None}
        if not narrow:
            atomic_write_bytes(dst, model.path.read_bytes())
            return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)
        onnx_model = narrow_weights(onnx.load(str(model.path)), float_params(model.float_path), narrow, storage)
        set_layer_bits(onnx_model, bits)
        onnx.checker.check_model(onnx_model)
        atomic_write_bytes(dst, onnx_model.SerializeToString())
        return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)


def narrow_weights(onnx_model: onnx.ModelProto, params: dict[str, tuple[np.ndarray, np.ndarray | None]],
                   narrow: dict[str, int], storage: str) -> onnx.ModelProto:
    """Re-store the weights of the QDQ layers named in ``narrow`` (node name -> weight bits below 8).

    ``params`` are the float export's (weight, bias) by node name (``float_params``); ``storage`` "int4"
    packs 2-4-bit weights (opset 21), "int8" keeps every width in INT8 values confined to its range. The
    model is changed in place and returned; what the compiler stores is what the profiler times.
    """
    graph = onnx_model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    packed_any = False
    new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    for node in graph.node:
        if node.op_type not in QUANT_OPS or node.name not in narrow:
            continue
        w_bits = narrow[node.name]
        wdq = producers.get(node.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear":
            raise InternalError(f"layer '{node.name}' is not quantized; run a PTQ pass before SubByteWeights")
        weight, bias = params[node.name]
        q, scale = requantize(weight, w_bits)
        pack = storage == "int4" and w_bits <= 4
        q_name, s_name = f"{node.name}.weight_q{w_bits}", f"{node.name}.weight_scale{w_bits}"
        if pack:
            q_tensor = numpy_helper.from_array(q.astype(ml_dtypes.int4), q_name)  # two values a byte
            packed_any = True
        else:
            q_tensor = numpy_helper.from_array(q, q_name)
        half = pack  # packed weights carry half-precision scales (DequantizeLinear-21), then a Cast
        graph.initializer.extend([q_tensor, numpy_helper.from_array(scale.astype(np.float16 if half else
                                                                                 np.float32), s_name)])
        del wdq.input[:]
        wdq.input.extend([q_name, s_name])  # symmetric: the zero point defaults to 0
        if half:
            w_out = wdq.output[0]
            wdq.output[0] = f"{node.name}.weight_f16"
            new_nodes.append((wdq, helper.make_node("Cast", [wdq.output[0]], [w_out], to=TensorProto.FLOAT)))
        for attr in list(wdq.attribute):
            if attr.name == "axis":
                attr.i = 0
        if len(node.input) > 2 and node.input[2]:
            bdq = producers.get(node.input[2])
            if bdq is not None and bdq.op_type == "DequantizeLinear":
                b = bias  # the export's own, rounded once (or kept) as the simulation does
                if b is None:
                    b = (numpy_helper.to_array(inits[bdq.input[0]]).astype(np.float64)
                         * numpy_helper.to_array(inits[bdq.input[1]]).astype(np.float64)).astype(np.float32)
                taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
                xdq = producers.get(node.input[0])
                if has_int32_bias(w_bits) and xdq is not None and xdq.op_type == "DequantizeLinear":
                    # INT32 at the input's scale x the new weight scale (the bias DequantizeLinear stays)
                    if xdq.input[1] not in inits:
                        raise InternalError(f"layer '{node.name}': its input scale '{xdq.input[1]}' is not an "
                                            "initializer")
                    in_scale = numpy_helper.to_array(inits[xdq.input[1]]).reshape(-1)[0]
                    store_int32_bias(graph, bdq, b, in_scale, scale, f"{node.name}.bias", w_bits, taken)
                    del bdq.input[2:]  # symmetric: no zero point
                else:  # 2-4 bits: a float bias, as the float kernel the runtimes run these layers in adds it
                    b_name = _fresh(f"{node.name}.bias_f32", taken)
                    graph.initializer.append(numpy_helper.from_array(np.asarray(b, np.float32), b_name))
                    node.input[2] = b_name
    for after, cast in new_nodes:
        graph.node.insert(list(graph.node).index(after) + 1, cast)
    _drop_unused(graph)
    if packed_any:
        onnx_model = _to_opset(onnx_model, INT4_OPSET)
    return onnx_model


def policy_qdq(src: Path, dst: Path, bits: dict[str, Bits], calib: Sequence[np.ndarray], reduce_range: bool,
               storage: str = "int4", float_src: Path | None = None) -> None:
    """Quantize the float ONNX model ``src`` to the per-layer ``bits`` (node name -> W/A) and write ``dst``.

    The compiler's own steps for a CPU policy: Intel Neural Compressor's static PTQ of every layer with
    8-bit activations (``IncStaticPtq``), then each layer below 8 weight bits re-stored at its width
    (``SubByteWeights``); ``float_src`` is the float export the narrowed weights are read from (``src``
    when not given). The profiler and the LUT validation build their models here, so they time the graph
    an artifact of that policy contains.
    """
    from bitnas.passes.inc_ptq import inc_quantize_qdq

    bad = {n: b for n, b in bits.items() if b[1] != 8 and tuple(b) != FLOAT_BITS}
    if bad:
        name, b = next(iter(bad.items()))
        raise InternalError(f"layer '{name}': W{b[0]}A{b[1]} needs SubByteActivations' simulated ranges")
    quantized = [n for n, b in bits.items() if b[1] == 8]
    narrow = {n: b[0] for n, b in bits.items() if b[1] == 8 and b[0] < 8}
    if not narrow:
        inc_quantize_qdq(src, dst, quantized, calib, reduce_range)
        return
    int8 = dst.with_name(dst.name + ".int8.onnx")  # dst appears only once whole: a cache may trust it
    try:
        inc_quantize_qdq(src, int8, quantized, calib, reduce_range)
        narrow_file(int8, dst, float_src or src, narrow, storage)
    finally:
        int8.unlink(missing_ok=True)


def narrow_file(int8: Path, dst: Path, float_src: Path, narrow: dict[str, int], storage: str = "int4") -> None:
    """Write ``dst``: the INT8 QDQ model ``int8`` with the weights of the layers in ``narrow`` (node name ->
    weight bits) re-stored at their width from the float export ``float_src`` (atomically)."""
    model = narrow_weights(onnx.load(str(int8)), float_params(float_src), narrow, storage)
    onnx.checker.check_model(model)
    atomic_write_bytes(dst, model.SerializeToString())


def store_int32_bias(graph: onnx.GraphProto, bdq: onnx.NodeProto, bias: np.ndarray, in_scale: float,
                     w_scale: np.ndarray, base: str, tag: object, taken: set[str]) -> list[onnx.TensorProto]:
    """Point the bias DequantizeLinear ``bdq`` at a new INT32 bias and scale (``int32_bias``), added to
    ``graph`` as ``{base}_q{tag}`` and ``{base}_scale{tag}`` (made unique in ``taken``); return the two
    initializers as the graph holds them. Any zero point ``bdq`` reads stays."""
    q, scale = int32_bias(bias, in_scale, w_scale)
    names = [_fresh(f"{base}_q{tag}", taken), _fresh(f"{base}_scale{tag}", taken)]
    graph.initializer.extend([numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1])])
    bdq.input[0], bdq.input[1] = names
    return list(graph.initializer[-2:])


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_k`` for the first k that no initializer or node output of the graph has taken."""
    out, k = name, 0
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads (the old bias DequantizeLinear), then unused initializers."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Raise the default-domain opset (the graph's ops keep their meaning from 17 to 21)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < opset:
            imp.version = opset
    if model.ir_version < 10:
        model.ir_version = 10
    return model
