"""Static post-training quantization to QDQ: Intel Neural Compressor (IncStaticPtq) or ONNX Runtime's
quantizer (OrtStaticPtq), one algorithm behind both engines.

The nodes whose bits (read from the graph, see AssignBitwidths) have weights and activations of 2 to 8 bits
are quantized: weights per-channel symmetric INT8 (SubByteWeights narrows those below 8 bits afterwards),
activations per-tensor asymmetric UINT8 (SubByteActivations narrows those below 8 bits afterwards); float
layers stay float. Residual Adds that quantized convolutions read are quantized too (``requantize_adds``), so
the runtimes run them as integer kernels. ``reduce_range`` (7-bit weights) defaults to on when the CPU lacks
an INT8 dot-product instruction, where u8s8 products can saturate.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import Field

from bitnas.config import StrictModel, WorkFileName
from bitnas.errors import InternalError, MissingDependencyError, UserError
from bitnas.fingerprint import has_vnni
from bitnas.io import atomic_write_bytes
from bitnas.passes.assign_bits import layer_bits_of, set_layer_bits
from bitnas.passes.export_onnx import INPUT_NAME, QUANT_OPS, OnnxModel
from bitnas.pipeline import Pass, PassContext
from bitnas.supernets.evaluate import calibration_batches


def resolve_reduce_range(setting: bool | Literal["auto"]) -> bool:
    return (not has_vnni()) if setting == "auto" else bool(setting)


def _ort_enums(method: str):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    return methods[method], QuantFormat, QuantType


def _reader(base, batches: Sequence[np.ndarray], input_name: str):
    class _Reader(base):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(batches):
                return None
            self.i += 1
            return {input_name: batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    return _Reader()


def _finish(tmp: Path, dst: Path, nodes: Iterable[str], reduce_from: Path | None, narrow: Collection[str]) -> int:
    """Write ``dst`` from a quantizer's output ``tmp``: layer names back (quantizers rename the nodes they
    quantize ``X_quant``), weights at the reduced range when ``reduce_from`` (the float export) is given, and
    the residual Adds quantized (``requantize_adds``); return how many Adds."""
    model = onnx.load(str(tmp))
    wanted = set(nodes)
    for node in model.graph.node:
        if node.op_type in QUANT_OPS and node.name.endswith("_quant") and node.name[:-6] in wanted:
            node.name = node.name[:-6]
    if reduce_from is not None:
        reduce_weight_range(model, reduce_from)
    adds = requantize_adds(model, narrow)
    atomic_write_bytes(dst, model.SerializeToString())
    return adds


def requantize_adds(model: onnx.ModelProto, narrow: Collection[str] = ()) -> int:
    """Quantize the residual Adds in place, as ONNX Runtime's and OpenVINO's integer kernels want them;
    return how many.

    The static quantizers here quantize the inputs of convolutions only. An Add whose output a conv reads
    through a QuantizeLinear then still writes float, its other readers (the skip path into the next Add)
    read that float, and the runtimes run the Add and the QuantizeLinear as float ops. Here such an Add
    writes to that QuantizeLinear alone and each of its float readers reads a DequantizeLinear of it, so
    the Add reads DQ outputs and writes to Q: ONNX Runtime's QLinearAdd, an integer Eltwise in OpenVINO.
    In ResNet's Add, Relu the Relu's QuantizeLinear reads the Add and the Relu goes: that Q's zero point is 0,
    so it clips as the Relu did, and the Relu's other readers read a DQ of it in the same way.

    An Add is left as it is unless both its inputs are DequantizeLinear outputs (a float input, such as a
    float layer's output, keeps it a float op, and quantizing its output would only add error) and every
    quantized reader of its output is a convolution whose activations stay at 8 bits (not in ``narrow``, the
    layers ``SubByteActivations`` gives ranges of their own). The simulated quantization
    (``supernets.static.AddRequant``) applies the same rule.
    """
    from onnx import helper, numpy_helper

    from bitnas.passes.subbyte import _fresh

    g = model.graph
    outputs = {o.name for o in g.output}
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    producers = {o: n for n in g.node for o in n.output}
    taken = {t.name for t in g.initializer} | set(producers) | {n.name for n in g.node}

    def zero_at_0(q: onnx.NodeProto) -> bool:
        zero = inits.get(q.input[2]) if len(q.input) > 2 else None
        return zero is not None and not numpy_helper.to_array(zero).any()

    def dq_inputs(add: onnx.NodeProto) -> list[str] | None:
        """The Add's inputs as DQ outputs, or None where one is not: an input it reads as Relu(DQ(x)) with the
        DQ's zero point at 0 is that DQ's output (the Relu changes nothing there)."""
        out = []
        for name in add.input:
            p = producers.get(name)
            if p is not None and p.op_type == "Relu":
                dq = producers.get(p.input[0])
                p = dq if dq is not None and dq.op_type == "DequantizeLinear" and zero_at_0(dq) else None
                name = p.output[0] if p is not None else name
            if p is None or p.op_type != "DequantizeLinear":
                return None
            out.append(name)
        return out

    def the_quantizer(y: str) -> onnx.NodeProto | None:
        """The one QuantizeLinear of ``y`` if every node it feeds is an 8-bit conv's input, else None."""
        qs = [r for r in readers.get(y, []) if r.op_type == "QuantizeLinear"]
        if len(qs) != 1 or y in outputs:
            return None
        dqs = readers.get(qs[0].output[0], [])
        convs = [c for dq in dqs for c in readers.get(dq.output[0], [])]
        if not dqs or any(dq.op_type != "DequantizeLinear" for dq in dqs) or not convs:
            return None
        if any(c.op_type != "Conv" or c.input[0] not in {dq.output[0] for dq in dqs} or c.name in narrow
               for c in convs):
            return None
        return qs[0]

    def read_dq(y: str, q: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        """Every reader of ``y`` but ``q`` reads a DequantizeLinear of ``q`` instead."""
        others = [c for c in readers.get(y, []) if c is not q]
        if not others:
            return
        out = _fresh(f"{y}_dq", taken)
        new.append(helper.make_node("DequantizeLinear", [q.output[0], *q.input[1:]], [out],
                                    name=_fresh(f"{y}_dequantize", taken)))
        producers[out] = new[-1]
        for c in others:
            c.input[:] = [out if i == y else i for i in c.input]

    done, new = 0, []
    for n in list(g.node):  # in graph order: an Add quantized here makes the next one's skip input a DQ
        inputs = dq_inputs(n) if n.op_type == "Add" and n.output[0] not in outputs else None
        if inputs is None:  # a float input: the Add stays a float op however its output is read
            continue
        y = n.output[0]
        q = the_quantizer(y)
        if q is not None:
            read_dq(y, q, new)
            n.input[:] = inputs
            done += 1
            continue
        users = readers.get(y, [])
        if len(users) != 1 or users[0].op_type != "Relu":
            continue
        relu = users[0]
        rq = the_quantizer(relu.output[0])
        if rq is None:
            continue
        if not zero_at_0(rq):
            raise InternalError(f"Relu '{relu.name}' after Add '{n.name}' is quantized with a zero point other "
                                "than 0")
        rq.input[0] = y  # its zero point at 0 clips as the Relu did
        read_dq(relu.output[0], rq, new)
        g.node.remove(relu)
        n.input[:] = inputs
        done += 1
    if new:
        nodes = topological(list(g.node) + new, {i.name for i in g.input} | set(inits) | {""})
        del g.node[:]
        g.node.extend(nodes)
    return done


def topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each reads only ``available`` names or earlier nodes' outputs, as close to
    the given order as that allows."""
    have, out, waiting = set(available), [], list(nodes)
    while waiting:
        rest = []
        for n in waiting:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(waiting):
            raise InternalError(f"node '{rest[0].name}' reads {[i for i in rest[0].input if i not in have]}, "
                                "which no node writes")
        waiting = rest
    return out


def _cleanup(tmp: Path) -> None:
    """Remove a quantizer's temporary model and any external-data file it wrote beside it."""
    for p in tmp.parent.glob(tmp.name + "*"):
        p.unlink(missing_ok=True)


def _optimize_for_inc(src: Path, dst: Path) -> None:
    """ONNX Runtime's basic graph optimization, the step INC's ``quantize`` runs first, with every node named
    and HardSwish whole again (``fuse_hardswish``).

    ONNX Runtime inlines function ops (HardSwish into HardSigmoid and Mul) as nodes without names, and INC's
    topological sort keys nodes by name: it would drop all but one of them.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst), load_external_data=False)
    fused = fuse_hardswish(model)
    taken = {n.name for n in model.graph.node if n.name}
    if len(taken) == len(model.graph.node) and not fused:
        return
    k = 0
    for node in model.graph.node:
        while not node.name:
            k += 1
            if f"{node.op_type}_{k}" not in taken:
                node.name = f"{node.op_type}_{k}"
                taken.add(node.name)
    onnx.save(model, str(dst))


def fuse_hardswish(model: onnx.ModelProto) -> int:
    """Rewrite ``Mul(x, HardSigmoid(x; alpha=1/6, beta=1/2))`` into ``HardSwish(x)`` in place; return how many.

    ONNX Runtime's basic optimization inlines HardSwish into those two nodes. Left so, the quantized graph
    runs them as two float ops between the integer convolutions, which OpenVINO cannot fuse into the
    convolution before it (it runs them in f32 with layout reorders around them); one HardSwish it fuses.
    ONNX Runtime inlines HardSwish again when it loads the model, so the graph it runs is unchanged.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14:  # HardSwish is an opset-14 op
        return 0
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    kept, dropped, fused = [], set(), 0
    for node in graph.node:
        if id(node) in dropped:
            continue
        if node.op_type == "HardSigmoid" and node.output[0] not in outputs:
            attrs = {a.name: a.f for a in node.attribute}
            users = readers.get(node.output[0], [])
            if (abs(attrs.get("alpha", 0.2) - 1 / 6) < 1e-6 and abs(attrs.get("beta", 0.5) - 0.5) < 1e-6
                    and len(users) == 1 and users[0].op_type == "Mul"
                    and sorted(users[0].input) == sorted([node.input[0], node.output[0]])):
                mul = users[0]
                dropped.add(id(mul))
                # in the HardSigmoid's place: after x, before every reader of the Mul's output
                kept.append(onnx.helper.make_node("HardSwish", [node.input[0]], [mul.output[0]],
                                                  name=mul.name or node.name))
                fused += 1
                continue
        kept.append(node)
    if fused:
        del graph.node[:]
        graph.node.extend(kept)
    return fused


def inc_quantize_qdq(src: Path, dst: Path, nodes: Iterable[str], calib: Sequence[np.ndarray],
                     reduce_range: bool, input_name: str = INPUT_NAME, calibrate_method: str = "minmax",
                     narrow: Collection[str] = ()) -> int:
    """Quantize ``nodes`` of ``src`` to INT8 QDQ with Intel Neural Compressor and write ``dst``; its residual
    Adds as ``requantize_adds`` says (``narrow``: layers whose activations a later pass narrows). Returns how
    many Adds run quantized."""
    import onnxruntime as ort

    try:
        from onnx_neural_compressor import data_reader
        from onnx_neural_compressor.quantization import quantize
        from onnx_neural_compressor.quantization.config import StaticQuantConfig
    except ImportError as exc:
        raise MissingDependencyError("onnx-neural-compressor", f"static PTQ ({exc})") from None
    nodes = list(nodes)
    method, QuantFormat, QuantType = _ort_enums(calibrate_method)
    logging.getLogger("onnx_neural_compressor").setLevel(logging.ERROR)
    cfg = StaticQuantConfig(
        _reader(data_reader.CalibrationDataReader, calib, input_name), calibrate_method=method,
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        per_channel=True, reduce_range=reduce_range, nodes_to_quantize=nodes,
        execution_provider="CPUExecutionProvider",
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    tmp = dst.with_name(dst.name + ".tmp.onnx")
    opt = tmp.with_name(tmp.name + ".opt.onnx")
    try:
        _optimize_for_inc(src, opt)
        quantize(str(opt), str(tmp), cfg, optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        # INC's static quantizer does not apply reduce_range to the weights itself
        return _finish(tmp, dst, nodes, src if reduce_range else None, narrow)
    finally:
        _cleanup(tmp)


def ort_quantize_qdq(src: Path, dst: Path, nodes: Iterable[str], calib: Sequence[np.ndarray],
                     reduce_range: bool, input_name: str = INPUT_NAME, calibrate_method: str = "minmax",
                     narrow: Collection[str] = ()) -> int:
    """Quantize ``nodes`` of ``src`` to INT8 QDQ with ONNX Runtime's quantizer and write ``dst``, as
    ``inc_quantize_qdq`` does."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    nodes = list(nodes)
    method, QuantFormat, QuantType = _ort_enums(calibrate_method)
    tmp = dst.with_name(dst.name + ".tmp.onnx")
    try:
        quantize_static(
            str(src), str(tmp), _reader(CalibrationDataReader, calib, input_name), quant_format=QuantFormat.QDQ,
            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=method,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        # ORT's reduced range is +-64; the simulation's (and INC's here) +-63
        return _finish(tmp, dst, nodes, src if reduce_range else None, narrow)
    finally:
        _cleanup(tmp)


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of Conv/Gemm nodes whose weight arrives through a DequantizeLinear (i.e. run quantized)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for n in model.graph.node:
        if n.op_type in QUANT_OPS and len(n.input) > 1:
            p = producers.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                out.add(n.name)
    return out


def reduce_weight_range(model: onnx.ModelProto, float_path: Path) -> int:
    """Re-quantize INT8 weights beyond +-63 to the reduced range in place; return how many.

    Intel Neural Compressor's static quantizer does not pass ``reduce_range`` on to the weights, so on a CPU
    without VNNI its weights would use all 8 bits while the simulated quantizer (and the integer kernels'
    saturation-free range) use 7; ONNX Runtime's quantizer reduces to +-64, one level more than +-63. Each
    such weight is re-quantized from the float export as the simulation quantizes it, and its INT32 bias to
    the new ``input scale x weight scale``.
    """
    from onnx import numpy_helper

    from bitnas.passes.subbyte import float_params, int32_bias, requantize

    floats = float_params(float_path)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def replace(name: str, value: np.ndarray) -> None:
        shape = numpy_helper.to_array(inits[name]).shape
        inits[name].CopyFrom(numpy_helper.from_array(value.reshape(shape), name))

    changed = 0
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS or len(node.input) < 2 or node.name not in floats:
            continue
        wdq = producers.get(node.input[1])
        if wdq is None or wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[wdq.input[0]])
        if q.dtype != np.int8 or np.abs(q.astype(np.int32)).max() <= 63:
            continue
        w, bias = floats[node.name]
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        if w.shape != q.shape or axis != 0:
            raise InternalError(f"layer '{node.name}': weight {q.shape} quantized along axis {axis}; reduce_range "
                                "expects per-output-channel weights along axis 0")
        new_q, scale = requantize(w, 8, reduce_range=True)
        replace(wdq.input[0], new_q)
        replace(wdq.input[1], scale)
        if len(node.input) > 2 and node.input[2]:
            bdq, xdq = producers.get(node.input[2]), producers.get(node.input[0])
            if (bdq is not None and bdq.op_type == "DequantizeLinear" and xdq is not None
                    and xdq.op_type == "DequantizeLinear" and bdq.input[0] in inits):
                if bias is None:
                    bias = numpy_helper.to_array(inits[bdq.input[0]]) * numpy_helper.to_array(inits[bdq.input[1]])
                bq, b_scale = int32_bias(bias, numpy_helper.to_array(inits[xdq.input[1]]).reshape(-1)[0], scale)
                replace(bdq.input[0], bq)
                replace(bdq.input[1], b_scale)
        changed += 1
    return changed


class StaticPtq(Pass):
    """Static PTQ of the layers whose graph bits are W2-8/A2-8; float elsewhere. Engines subclass it."""

    engine: str = ""
    registered = False
    revision = 2  # 2: residual Adds quantized (requantize_adds)

    class Config(StrictModel):
        calibration_batches: int = Field(4, ge=1, description="training batches used for calibration")
        calibration_batch_size: int = Field(64, ge=1, description="images per calibration batch")
        calibrate_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="range estimator")
        reduce_range: bool | Literal["auto"] = Field("auto", description="7-bit weights; auto: on without VNNI")
        filename: WorkFileName = Field("quant.onnx", description="file written in the work folder")

    @abstractmethod
    def quantize(self, src: Path, dst: Path, nodes: list[str], calib: list[np.ndarray], reduce_range: bool,
                 narrow: list[str]) -> int:
        """Quantize ``nodes`` of ``src`` into ``dst`` (QDQ, node names kept, ``requantize_adds`` with
        ``narrow``); return how many Adds run quantized."""

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        data = ctx.need("data", self.name)
        bits = layer_bits_of(model.path)
        for name, (w, a) in bits.items():
            if (w, a) != (32, 32) and not (2 <= a <= 8 and 2 <= w <= 8):
                raise UserError(f"{self.name} runs W2-8/A2-8 or float per layer; layer '{name}' asks for W{w}A{a}")
        nodes = [k for k in model.layers if bits[k] != (32, 32)]
        narrow_acts = sorted(k for k in nodes if bits[k][1] < 8)
        dst = ctx.workdir / self.config.filename
        reduce_range = resolve_reduce_range(self.config.reduce_range)
        ctx.results["quantization"] = {
            "engine": self.engine, "format": "QDQ", "weights": "int8 per-channel symmetric",
            "activations": "uint8 per-tensor asymmetric", "reduce_range": reduce_range,
            "calibration": {"method": self.config.calibrate_method, "batches": self.config.calibration_batches,
                            "batch_size": self.config.calibration_batch_size},
            "quantized_layers": len(nodes), "float_layers": len(bits) - len(nodes),
        }
        if narrow_acts:  # written at 8 bits here; SubByteActivations narrows them to the policy's levels
            ctx.results["quantization"]["activations_below_8_bits"] = narrow_acts
        if nodes:
            # the same batches the search's simulated quantization calibrates on, so the two agree
            batches = [b.numpy() for b in calibration_batches(data, self.config.calibration_batches,
                                                              self.config.calibration_batch_size, ctx.seed)]
            adds = self.quantize(model.path, dst, nodes, batches, reduce_range, narrow_acts)
            ctx.results["quantization"]["quantized_adds"] = adds
        else:
            atomic_write_bytes(dst, model.path.read_bytes())
        out = onnx.load(str(dst))
        set_layer_bits(out, bits)  # quantizers drop metadata: carry the bits over
        got = quantized_nodes(out)
        if got != set(nodes):
            raise InternalError(f"{self.engine} quantized {sorted(got)} but the graph asks for {sorted(nodes)}")
        atomic_write_bytes(dst, out.SerializeToString())
        return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)


class IncStaticPtq(StaticPtq):
    """Static PTQ with Intel Neural Compressor (``onnx-neural-compressor``), QDQ format."""

    engine = "onnx-neural-compressor"

    def quantize(self, src, dst, nodes, calib, reduce_range, narrow):
        return inc_quantize_qdq(src, dst, nodes, calib, reduce_range, calibrate_method=self.config.calibrate_method,
                                narrow=narrow)


class OrtStaticPtq(StaticPtq):
    """Static PTQ with ONNX Runtime's quantizer, QDQ format (to compare engines)."""

    engine = "onnxruntime"

    def quantize(self, src, dst, nodes, calib, reduce_range, narrow):
        return ort_quantize_qdq(src, dst, nodes, calib, reduce_range, calibrate_method=self.config.calibrate_method,
                                narrow=narrow)
