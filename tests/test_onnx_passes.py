"""The ONNX passes on a small Before graph against an Expected graph written down by hand.

Before: input -> Conv "a" -> Relu -> Conv "b" -> GlobalAveragePool -> Flatten -> Gemm "fc" -> logits.
Each test runs one pass through ``run(OnnxModel, PassContext)``, compares the structure of its output with
the Expected one (data path, how each layer's weight and bias are stored, initializer types, metadata),
then runs the result on ONNX Runtime against the float Before graph.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnas.errors import InternalError
from bitnas.passes import AssignBitwidths, IncStaticPtq, OnnxModel, OrtStaticPtq, SubByteWeights
from bitnas.passes.assign_bits import POLICY_KEY, read_layer_bits
from bitnas.passes.inc_ptq import resolve_reduce_range
from bitnas.passes.package import compact_model
from bitnas.pipeline import PassContext
from bitnas.space import Candidate
from bitnas.supernets.data import Dataset

LAYERS = ["a", "b", "fc"]
FP32 = (32, 32)
INT8 = (8, 8)
MIXED = {"a": INT8, "b": FP32, "fc": INT8}  # the policy most tests use
PTQ = [IncStaticPtq, OrtStaticPtq]
# 7-bit weights on a CPU without VNNI (where ONNX Runtime's u8s8 kernels could saturate with 8), as by default
RR = resolve_reduce_range("auto")
SMALL_CALIB = {"calibration_batches": 2, "calibration_batch_size": 16, "reduce_range": RR}

# ------------------------------------------------------------------------------------------ Before
BEFORE_PATH = ["Conv:a", "Relu", "Conv:b", "GlobalAveragePool", "Flatten", "Gemm:fc"]
FLOAT_PARAMS = {"a": ("FLOAT", "FLOAT"), "b": ("FLOAT", "FLOAT"), "fc": ("FLOAT", "FLOAT")}

# ------------------------------------------------------------------------------------------ Expected
# A layer the policy puts at INT8 reads a Q/DQ'd activation, an INT8 weight and an INT32 bias through
# DequantizeLinear, and writes a Q/DQ'd output; a float layer ("b") reads the float tensor the previous DQ
# gives and keeps its float weight and bias.
PTQ_PATH = ["QuantizeLinear", "DequantizeLinear", "Conv:a", "QuantizeLinear", "DequantizeLinear", "Relu",
            "Conv:b", "GlobalAveragePool", "Flatten", "QuantizeLinear", "DequantizeLinear", "Gemm:fc",
            "QuantizeLinear", "DequantizeLinear"]
PTQ_PARAMS = {"a": ("DequantizeLinear(INT8)", "DequantizeLinear(INT32)"), "b": ("FLOAT", "FLOAT"),
              "fc": ("DequantizeLinear(INT8)", "DequantizeLinear(INT32)")}
PTQ_OPS = Counter({"DequantizeLinear": 8, "QuantizeLinear": 4, "Conv": 2, "Relu": 1, "GlobalAveragePool": 1,
                   "Flatten": 1, "Gemm": 1})
# b's weight and bias; 4 activation scales (input, a's output, fc's input and output) and their UINT8 zero
# points; per INT8 layer: INT8 weight, weight scale, INT8 weight zero point, INT32 bias, bias scale and
# INT32 bias zero point
PTQ_INIT_TYPES = Counter({"FLOAT": 2 + 4 + 2 * 2, "UINT8": 4, "INT8": 2 * 2, "INT32": 2 * 2})


# ------------------------------------------------------------------------------------------ helpers
def _init(rng, name, shape, scale):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def write_before(path) -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "a.weight", "a.bias"], ["a_out"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "b.weight", "b.bias"], ["b_out"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["b_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [_init(rng, "a.weight", (4, 1, 3, 3), 0.5), _init(rng, "a.bias", (4,), 0.1),
             _init(rng, "b.weight", (6, 4, 3, 3), 0.5), _init(rng, "b.bias", (6,), 0.1),
             _init(rng, "fc.weight", (3, 6), 0.5), _init(rng, "fc.bias", (3,), 0.1)]
    graph = helper.make_graph(
        nodes, "before", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def data_path(model: onnx.ModelProto) -> list[str]:
    """The ops from the graph input to its output along the activations (``op:name`` for Conv/Gemm)."""
    nodes = list(model.graph.node)
    tensor, out, steps = model.graph.input[0].name, model.graph.output[0].name, []
    while tensor != out:
        readers = [n for n in nodes if n.input and n.input[0] == tensor]
        assert len(readers) == 1, f"tensor {tensor} is read by {[n.op_type for n in readers]}"
        node = readers[0]
        steps.append(f"{node.op_type}:{node.name}" if node.op_type in ("Conv", "Gemm") else node.op_type)
        tensor = node.output[0]
    return steps


def param_storage(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """How each Conv/Gemm receives its weight and bias: an initializer's type, or the ops producing it."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def describe(tensor: str) -> str:
        if tensor in inits:
            return TensorProto.DataType.Name(inits[tensor].data_type)
        node = producers[tensor]
        return f"{node.op_type}({describe(node.input[0])})"

    return {n.name: (describe(n.input[1]), describe(n.input[2]))
            for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


def init_types(model: onnx.ModelProto) -> Counter:
    return Counter(TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)


def weight_of(model: onnx.ModelProto, layer: str, index: int = 1) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The stored integer weight (``index`` 2: bias) of ``layer``, its scale, and the DequantizeLinear's
    other inputs."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == layer)
    dq = producers[node.input[index]]
    if dq.op_type == "Cast":
        dq = producers[dq.input[0]]
    assert dq.op_type == "DequantizeLinear"
    return inits[dq.input[0]], inits[dq.input[1]], list(dq.input[2:])


def run_ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def assert_close_to_float(y: np.ndarray, ref: np.ndarray, rel: float) -> None:
    """Mean logit error within ``rel`` of the mean logit, and no error above four times that."""
    assert y.shape == ref.shape
    err, scale = np.abs(y - ref), float(np.abs(ref).mean())
    assert err.mean() <= rel * scale, f"mean error {err.mean()} vs mean |logit| {scale}"
    assert err.max() <= 4 * rel * scale, f"max error {err.max()} vs mean |logit| {scale}"


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def before(tmp_path_factory):
    path = tmp_path_factory.mktemp("before") / "fp32.onnx"
    write_before(path)
    return path


@pytest.fixture(scope="module")
def data():
    """A tiny data set of the Before graph's input shape: what the PTQ passes calibrate on."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    return Dataset("tiny", x, np.zeros(64, np.int64), x[:16].copy(), np.zeros(16, np.int64), 3)


@pytest.fixture(scope="module")
def ref(before, data):
    return run_ort(before, data.x_val)


def context(workdir, data, policy) -> PassContext:
    workdir.mkdir(parents=True, exist_ok=True)
    return PassContext(workdir=workdir, inputs={"candidate": Candidate.make({}, policy), "data": data})


def assign(before, ctx) -> OnnxModel:
    return AssignBitwidths().run(OnnxModel(path=before, layers=list(LAYERS), float_path=before), ctx)


# ------------------------------------------------------------------------------------------ AssignBitwidths
def test_before_graph_is_what_the_passes_expect(before):
    m = onnx.load(str(before))
    assert data_path(m) == BEFORE_PATH
    assert param_storage(m) == FLOAT_PARAMS


def test_assign_bitwidths_writes_bits_and_changes_nothing_else(before, data, ref, tmp_path):
    ctx = context(tmp_path, data, MIXED)
    out = assign(before, ctx)
    assert out.path == tmp_path / "bits.onnx" and out.layers == LAYERS and out.float_path == before
    m, b = onnx.load(str(out.path)), onnx.load(str(before))
    # Expected: the Before graph, plus one metadata entry and a doc string on each quantizable node
    assert [(p.key, json.loads(p.value)) for p in m.metadata_props] == [
        (POLICY_KEY, {"a": [8, 8], "b": [32, 32], "fc": [8, 8]})]
    assert {n.name: n.doc_string for n in m.graph.node} == {
        "a": "bitnas: w8a8", "relu": "", "b": "bitnas: w32a32", "gap": "", "flatten": "", "fc": "bitnas: w8a8"}
    assert read_layer_bits(m) == MIXED
    for n in m.graph.node:
        n.ClearField("doc_string")
    del m.metadata_props[:]
    assert m.SerializeToString() == b.SerializeToString()
    np.testing.assert_array_equal(run_ort(out.path, data.x_val), ref)


def test_assign_bitwidths_replaces_earlier_bits(before, data, tmp_path):
    first = assign(before, context(tmp_path / "1", data, MIXED))
    again = AssignBitwidths().run(first, context(tmp_path / "2", data, {"a": FP32, "b": INT8, "fc": FP32}))
    m = onnx.load(str(again.path))
    assert [p.key for p in m.metadata_props] == [POLICY_KEY]
    assert read_layer_bits(m) == {"a": FP32, "b": INT8, "fc": FP32}
    assert [n.doc_string for n in m.graph.node if n.op_type in ("Conv", "Gemm")] == [
        "bitnas: w32a32", "bitnas: w8a8", "bitnas: w32a32"]


def test_assign_bitwidths_refuses_a_policy_without_some_layer(before, data, tmp_path):
    with pytest.raises(InternalError, match=r"no bits for layer\(s\) \['b'\]"):
        assign(before, context(tmp_path, data, {"a": INT8, "fc": INT8}))


# ------------------------------------------------------------------------------------------ static PTQ
@pytest.fixture(scope="module")
def quantized(before, data, tmp_path_factory):
    """The MIXED policy through AssignBitwidths and each PTQ engine: {engine class: (OnnxModel, ctx)}."""
    out = {}
    for cls in PTQ:
        ctx = context(tmp_path_factory.mktemp(cls.__name__), data, MIXED)
        out[cls] = cls(**SMALL_CALIB).run(assign(before, ctx), ctx), ctx
    return out


@pytest.mark.parametrize("cls", PTQ, ids=lambda c: c.__name__)
def test_ptq_quantizes_exactly_the_int8_layers(cls, quantized):
    q, ctx = quantized[cls]
    m = onnx.load(str(q.path))
    assert q.path == ctx.workdir / "quant.onnx" and q.layers == LAYERS
    assert data_path(m) == PTQ_PATH
    assert param_storage(m) == PTQ_PARAMS
    assert Counter(n.op_type for n in m.graph.node) == PTQ_OPS
    assert init_types(m) == PTQ_INIT_TYPES
    assert "QLinearConv" not in {n.op_type for n in m.graph.node}  # QDQ format, not QOperator
    # the bits survive the quantizer (metadata and doc strings), and so do the layer names
    assert read_layer_bits(m) == MIXED
    assert {n.name: n.doc_string for n in m.graph.node if n.op_type in ("Conv", "Gemm")} == {
        "a": "bitnas: w8a8", "b": "bitnas: w32a32", "fc": "bitnas: w8a8"}
    assert sorted(p.name for p in ctx.workdir.iterdir()) == ["bits.onnx", "quant.onnx"]  # no temporaries
    r = ctx.results["quantization"]
    assert r["engine"] == cls.engine and r["format"] == "QDQ"
    assert (r["quantized_layers"], r["float_layers"], r["reduce_range"]) == (2, 1, RR)
    assert r["calibration"] == {"method": "minmax", "batches": 2, "batch_size": 16}


@pytest.mark.parametrize("cls", PTQ, ids=lambda c: c.__name__)
def test_ptq_weights_are_int8_per_channel_symmetric(cls, quantized, before):
    m = onnx.load(str(quantized[cls][0].path))
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(before)).graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for layer in ("a", "fc"):
        q, scale, rest = weight_of(m, layer)
        w = floats[f"{layer}.weight"]
        assert q.dtype == np.int8 and scale.shape == (w.shape[0],)
        assert all(not np.any(inits[z]) for z in rest), "symmetric: zero points are 0"
        full = 63 if RR else 127
        assert np.abs(q).reshape(len(q), -1).max(axis=1).tolist() == [full] * len(q)  # full range per channel
        s = scale.reshape(-1, *([1] * (w.ndim - 1)))
        assert np.all(np.abs(q * s - w) <= s / 2 + 1e-6)
        qb, bias_scale, rest = weight_of(m, layer, index=2)  # INT32 at input scale x weight scale
        assert qb.dtype == np.int32 and bias_scale.shape == (w.shape[0],)
        assert all(not np.any(inits[z]) for z in rest)
        np.testing.assert_allclose(qb * bias_scale, floats[f"{layer}.bias"], rtol=0, atol=float(bias_scale.max()))


@pytest.mark.parametrize("cls", PTQ, ids=lambda c: c.__name__)
def test_ptq_result_runs_close_to_the_float_graph(cls, quantized, data, ref):
    assert_close_to_float(run_ort(quantized[cls][0].path, data.x_val), ref, rel=0.05)


@pytest.mark.parametrize("cls", PTQ, ids=lambda c: c.__name__)
def test_ptq_of_an_all_float_policy_is_the_before_graph(cls, before, data, ref, tmp_path):
    ctx = context(tmp_path, data, dict.fromkeys(LAYERS, FP32))
    q = cls(**SMALL_CALIB).run(assign(before, ctx), ctx)
    m = onnx.load(str(q.path))
    assert data_path(m) == BEFORE_PATH and param_storage(m) == FLOAT_PARAMS
    assert ctx.results["quantization"]["quantized_layers"] == 0
    np.testing.assert_array_equal(run_ort(q.path, data.x_val), ref)


# ------------------------------------------------------------------------------------------ SubByteWeights
SUBBYTE_CASES = {
    # id: (a's weight bits, SubByteWeights config, how a's weight reaches Conv "a", opset of the result,
    #      the storage mode the pass resolves and reports)
    "w4-int4": (4, {}, "Cast(DequantizeLinear(INT4))", 21, "int4"),
    "w4-int8-storage": (4, {"storage": "int8"}, "DequantizeLinear(INT8)", 17, "int8"),
    # a runtime bitnas does not know to read INT4 (a user's plug-in) gets INT8 storage
    "w4-runtime-without-int4": (4, {"runtimes": ("ort", "my-npu")}, "DequantizeLinear(INT8)", 17, "int8"),
    "w6": (6, {}, "DequantizeLinear(INT8)", 17, "int4"),  # INT4 packs 2-4 bits only: 6 bits stay INT8
}


@pytest.mark.parametrize("case", list(SUBBYTE_CASES))
def test_subbyte_weights_narrow_only_the_layers_below_8_bits(case, before, data, ref, tmp_path):
    bits, config, storage, opset, mode = SUBBYTE_CASES[case]
    policy = {**MIXED, "a": (bits, 8)}
    ctx = context(tmp_path, data, policy)
    q = IncStaticPtq(**SMALL_CALIB).run(assign(before, ctx), ctx)  # the compile pipeline's engine
    out = SubByteWeights(**config).run(q, ctx)
    m = onnx.load(str(out.path))
    onnx.checker.check_model(m, full_check=True)
    packed = storage.startswith("Cast")
    int32 = bits >= 5  # 5-7 bits: an INT32 bias, as ONNX Runtime's QLinearConv rounds it; 2-4: a float one
    # Expected: the PTQ graph, except a's weight (re-quantized at its bits, scale FLOAT16 then a Cast when
    # packed) and a's bias (INT32 at the input scale x the new weight scale for 5-7 bits; float for 2-4, whose
    # layers the runtimes run in a float kernel); a's old INT8 weight and their zero points and scales are gone
    assert data_path(m) == PTQ_PATH
    assert param_storage(m) == {**PTQ_PARAMS, "a": (storage, "DequantizeLinear(INT32)" if int32 else "FLOAT")}
    assert Counter(n.op_type for n in m.graph.node) == PTQ_OPS + Counter(
        {"DequantizeLinear": 0 if int32 else -1, **({"Cast": 1} if packed else {})})
    # the last FLOAT: a's float bias, or the scale of its INT32 bias
    expected_types = Counter({"FLOAT": 2 + 4 + 2 + 1, "UINT8": 4, "INT8": 2, "INT32": 2 + int32})
    expected_types.update({"INT4": 1, "FLOAT16": 1} if packed else {"INT8": 1, "FLOAT": 1})
    assert init_types(m) == expected_types
    assert next(i.version for i in m.opset_import if i.domain in ("", "ai.onnx")) == opset
    if packed:
        assert m.ir_version >= 10
    assert read_layer_bits(m) == policy
    assert [n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")] == LAYERS
    assert ctx.results["weight_storage"] == {"narrow_layers": 1, "storage": mode}
    # a's values lie in the symmetric range of its bits and dequantize to the float weight
    w = numpy_helper.to_array(next(t for t in onnx.load(str(before)).graph.initializer if t.name == "a.weight"))
    qv, scale, rest = weight_of(m, "a")
    qv = qv.astype(np.int32)
    qmax = 2 ** (bits - 1) - 1
    assert rest == [] and scale.shape == (w.shape[0],)
    assert qv.min() >= -qmax and qv.max() <= qmax
    s = scale.astype(np.float32).reshape(-1, 1, 1, 1)
    assert np.all(np.abs(qv.astype(np.float32) * s - w) <= s / 2 + 1e-3 * np.abs(w).max())
    if int32:  # rounded once from the float bias, at the input's scale x a's new weight scale
        qb, bias_scale, rest = weight_of(m, "a", index=2)
        producers = {o: n for n in m.graph.node for o in n.output}
        x_dq = producers[next(n for n in m.graph.node if n.name == "a").input[0]]
        x_scale = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == x_dq.input[1]))
        np.testing.assert_allclose(bias_scale, float(x_scale) * scale.astype(np.float32), rtol=1e-6)
        b = numpy_helper.to_array(next(t for t in onnx.load(str(before)).graph.initializer if t.name == "a.bias"))
        np.testing.assert_array_equal(qb, np.rint(b / bias_scale).astype(np.int32))
    # fc keeps the PTQ's INT8 weight as it was
    np.testing.assert_array_equal(weight_of(m, "fc")[0], weight_of(onnx.load(str(q.path)), "fc")[0])
    assert_close_to_float(run_ort(out.path, data.x_val), ref, rel=0.1)


def test_subbyte_weights_after_ort_ptq_on_a_graph_whose_bias_is_named_after_its_layer(before, data, tmp_path):
    ctx = context(tmp_path, data, {**MIXED, "a": (4, 8)})
    q = OrtStaticPtq(**SMALL_CALIB).run(assign(before, ctx), ctx)
    assert "a.bias" in {o for n in onnx.load(str(q.path)).graph.node for o in n.output}
    out = SubByteWeights().run(q, ctx)
    assert param_storage(onnx.load(str(out.path)))["a"] == ("Cast(DequantizeLinear(INT4))", "FLOAT")


def test_subbyte_weights_copy_a_graph_without_narrow_layers(quantized, tmp_path):
    q, ctx = quantized[OrtStaticPtq]
    ctx = PassContext(workdir=tmp_path, inputs=ctx.inputs)
    out = SubByteWeights().run(q, ctx)
    assert out.path.read_bytes() == q.path.read_bytes()
    assert ctx.results["weight_storage"] == {"narrow_layers": 0, "storage": None}


def test_subbyte_weights_refuse_a_layer_that_was_not_quantized(before, data, tmp_path):
    ctx = context(tmp_path, data, {**MIXED, "a": (4, 8)})
    with pytest.raises(InternalError, match="layer 'a' is not quantized"):
        SubByteWeights().run(assign(before, ctx), ctx)


# ------------------------------------------------------------------------------------------ compact_model
def write_qdq_before(path) -> None:
    """A QDQ graph with everything compact_model drops or keeps: zero points of each kind, value_info,
    an unused initializer, long names."""
    rng = np.random.default_rng(2)

    def t(name, value, dtype):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    inits = [
        t("input_scale", 0.02, np.float32), t("input_zero_point", 128, np.uint8),
        t("a.weight_quantized", rng.integers(-127, 128, (4, 1, 3, 3)), np.int8),
        t("a.weight_scale", [0.01, 0.02, 0.03, 0.04], np.float32),
        t("a.weight_zero_point", [0, 0, 0, 0], np.int8),
        t("a.bias_quantized", rng.integers(-500, 500, (4,)), np.int32),
        t("a.bias_scale", [2e-4, 4e-4, 6e-4, 8e-4], np.float32), t("a.bias_zero_point", [0, 0, 0, 0], np.int32),
        t("relu_out_scale", 0.05, np.float32), t("relu_out_zero_point", 0, np.uint8),  # UINT8 zero: kept
        t("flat_out_scale", 0.05, np.float32), t("flat_out_zero_point", -3, np.int8),  # not zero: kept
        t("fc.weight", rng.standard_normal((3, 4)), np.float32), t("fc.bias", [0.1, 0.2, 0.3], np.float32),
        t("left_over_from_an_earlier_pass", [1.0], np.float32),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "input_scale", "input_zero_point"], ["input_q"],
                         name="input_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["input_q", "input_scale", "input_zero_point"], ["input_dq"],
                         name="input_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["a.weight_quantized", "a.weight_scale", "a.weight_zero_point"],
                         ["a.weight_dq"], name="a.weight_DequantizeLinear", axis=0),
        helper.make_node("DequantizeLinear", ["a.bias_quantized", "a.bias_scale", "a.bias_zero_point"],
                         ["a.bias_dq"], name="a.bias_DequantizeLinear", axis=0),
        helper.make_node("Conv", ["input_dq", "a.weight_dq", "a.bias_dq"], ["a_out"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a_out"], ["relu_out"], name="relu"),
        helper.make_node("QuantizeLinear", ["relu_out", "relu_out_scale", "relu_out_zero_point"], ["relu_q"],
                         name="relu_out_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["relu_q", "relu_out_scale", "relu_out_zero_point"], ["relu_dq"],
                         name="relu_out_DequantizeLinear"),
        helper.make_node("GlobalAveragePool", ["relu_dq"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
        helper.make_node("QuantizeLinear", ["flat_out", "flat_out_scale", "flat_out_zero_point"], ["flat_q"],
                         name="flat_out_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["flat_q", "flat_out_scale", "flat_out_zero_point"], ["flat_dq"],
                         name="flat_out_DequantizeLinear"),
        helper.make_node("Gemm", ["flat_dq", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.ir_version = 8
    helper.set_model_props(model, {POLICY_KEY: json.dumps({"a": [8, 8], "fc": [32, 32]})})
    assert len(model.graph.value_info) > 0
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_compact_model_drops_what_runtimes_do_not_need(tmp_path):
    src, dst = tmp_path / "qdq.onnx", tmp_path / "compact.onnx"
    write_qdq_before(src)
    compact_model(src, dst)
    b, m = onnx.load(str(src)), onnx.load(str(dst))
    # Expected: the same ops in the same order ...
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in b.graph.node]
    # ... every zero point kept, all-zero ones too (ONNX Runtime fuses a Gemm's QDQ only with its weight's);
    # the unused initializer dropped
    assert [len(n.input) for n in m.graph.node if n.op_type == "DequantizeLinear"] == [3, 3, 3, 3, 3]
    kept = Counter(TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer)
    assert kept == Counter({"FLOAT": 7, "UINT8": 2, "INT8": 3, "INT32": 2})
    assert len(m.graph.initializer) == len(b.graph.initializer) - 1
    # ... no shape annotations; names: layers, graph input and output kept, everything else short or empty
    assert len(m.graph.value_info) == 0
    assert [n.name for n in m.graph.node if n.name] == ["a", "fc"]
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    tensors = {t.name for t in m.graph.initializer} | {x for n in m.graph.node for x in [*n.input, *n.output]}
    assert {x for x in tensors if not re.fullmatch(r"t\d+", x)} == {"input", "logits"}
    # ... the bits metadata kept, and the same numbers out
    assert read_layer_bits(m) == {"a": INT8, "fc": FP32}
    x = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(dst, x), run_ort(src, x))


def test_compact_model_keeps_a_ptq_result_running_the_same(quantized, data, tmp_path):
    q, _ = quantized[IncStaticPtq]
    dst = tmp_path / "compact.onnx"
    compact_model(q.path, dst)
    m = onnx.load(str(dst))
    assert data_path(m) == PTQ_PATH
    assert param_storage(m) == PTQ_PARAMS  # weight and bias still through DequantizeLinear
    assert init_types(m) == PTQ_INIT_TYPES
    assert read_layer_bits(m) == MIXED
    assert dst.stat().st_size < q.path.stat().st_size
    np.testing.assert_array_equal(run_ort(dst, data.x_val), run_ort(q.path, data.x_val))


def test_compact_model_keeps_io_names_that_look_like_short_names(tmp_path):
    nodes = [helper.make_node("Relu", ["t1"], ["mid"], name="r1"), helper.make_node("Neg", ["mid"], ["t0"])]
    graph = helper.make_graph(nodes, "io", [helper.make_tensor_value_info("t1", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src, dst = tmp_path / "io.onnx", tmp_path / "io.compact.onnx"
    onnx.save(model, str(src))
    compact_model(src, dst)
    x = np.array([-1.0, 2.0], np.float32)
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"t1": x})[0], -np.maximum(x, 0))


# ------------------------------------------------------------------------------------------ residual Adds
def write_residual_qdq(path, relu_zero: int = 0) -> None:
    """A QDQ graph as a static quantizer writes it for three quantized convolutions around residual Adds:

    t = DQ(Q(input)); ra = Relu(DQ(Q(conv a(t))))
    s1 = Add(t, ra)        -> Q -> DQ -> conv b, and float into Add2
    s2 = Add(s1, DQ(Q(conv b)));  r2 = Relu(s2)  -> Q -> DQ -> conv c, and float into Add3
    s3 = Add(r2, DQ(Q(conv c)))  -> GlobalAveragePool -> Flatten -> logits (no quantized reader)
    """
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def qparams(name, scale, zero):
        inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{name}.s"),
                      numpy_helper.from_array(np.array(zero, np.uint8), f"{name}.z")])
        return [f"{name}.s", f"{name}.z"]

    def qdq(x, name, scale, zero=128):
        p = qparams(name, scale, zero)
        nodes.extend([helper.make_node("QuantizeLinear", [x, *p], [f"{name}.q"], name=f"{name}.quantize"),
                      helper.make_node("DequantizeLinear", [f"{name}.q", *p], [f"{name}.dq"], name=f"{name}.dequantize")])
        return f"{name}.dq"

    def conv(x, name):
        inits.extend([_init(rng, f"{name}.weight", (2, 2, 3, 3), 0.3), _init(rng, f"{name}.bias", (2,), 0.1)])
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"], name=name,
                                      pads=[1, 1, 1, 1]))
        return f"{name}_out"

    t = qdq("input", "t", 0.02)
    a = qdq(conv(t, "a"), "a_out", 0.02, 0)
    nodes.append(helper.make_node("Relu", [a], ["ra"], name="relu_a"))
    nodes.append(helper.make_node("Add", [t, "ra"], ["s1"], name="add1"))
    b = qdq(conv(qdq("s1", "s1", 0.03), "b"), "b_out", 0.03)
    nodes.append(helper.make_node("Add", ["s1", b], ["s2"], name="add2"))
    nodes.append(helper.make_node("Relu", ["s2"], ["r2"], name="relu2"))
    c = qdq(conv(qdq("r2", "r2", 0.03, relu_zero), "c"), "c_out", 0.03)
    nodes += [helper.make_node("Add", ["r2", c], ["s3"], name="add3"),
              helper.make_node("GlobalAveragePool", ["s3"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["logits"], name="flatten")]
    graph = helper.make_graph(
        nodes, "residual", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _readers_of(model, tensor):
    return sorted(n.op_type + ":" + n.name for n in model.graph.node if tensor in n.input)


def _producer_of(model, tensor):
    return next(n for n in model.graph.node if tensor in n.output)


def test_requantize_adds_quantizes_the_adds_convolutions_read(tmp_path):
    from bitnas.backends.ort import kernel_counts
    from bitnas.passes.inc_ptq import requantize_adds

    write_residual_qdq(tmp_path / "before.onnx")
    model = onnx.load(str(tmp_path / "before.onnx"))
    assert requantize_adds(model) == 2
    onnx.checker.check_model(model)
    # Add1 writes to its Q alone; its old float reader (Add2) reads a DQ of that Q; it reads conv a's DQ
    # directly (the Relu after a zero-point-0 DQ changes nothing)
    assert _readers_of(model, "s1") == ["QuantizeLinear:s1.quantize"]
    add2 = next(n for n in model.graph.node if n.name == "add2")
    dq = _producer_of(model, add2.input[0])
    assert dq.op_type == "DequantizeLinear" and list(dq.input) == ["s1.q", "s1.s", "s1.z"]
    add1 = next(n for n in model.graph.node if n.name == "add1")
    assert list(add1.input) == ["t.dq", "a_out.dq"]
    # Add2, Relu: the Relu's Q (zero point 0) reads the Add, the Relu is gone, Add3 reads a DQ of that Q
    assert _readers_of(model, "s2") == ["QuantizeLinear:r2.quantize"]
    assert not any(n.name == "relu2" for n in model.graph.node)
    add3 = next(n for n in model.graph.node if n.name == "add3")
    assert list(_producer_of(model, add3.input[0]).input) == ["r2.q", "r2.s", "r2.z"]
    # Add3's output only a pooling reads: left float
    assert _readers_of(model, "s3") == ["GlobalAveragePool:gap"]
    # ONNX Runtime runs both as QLinearAdd, and the result is the Before graph's within a quantization step
    path = tmp_path / "after.onnx"
    onnx.save(model, str(path))
    ops = kernel_counts(path)
    assert ops.get("QLinearAdd") == 2 and ops.get("Add") == 1, ops
    x = np.random.default_rng(1).uniform(-1, 1, (4, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_ort(path, x), run_ort(tmp_path / "before.onnx", x), atol=0.05)


def test_requantize_adds_leaves_an_add_whose_reader_is_narrower_than_8_bits(tmp_path):
    from bitnas.passes.inc_ptq import requantize_adds

    write_residual_qdq(tmp_path / "before.onnx")
    model = onnx.load(str(tmp_path / "before.onnx"))
    assert requantize_adds(model, narrow={"c"}) == 1  # Add1 (read by b) only
    assert _readers_of(model, "s1") == ["QuantizeLinear:s1.quantize"]
    assert sorted(_readers_of(model, "s2")) == ["Relu:relu2"]


def test_requantize_adds_leaves_an_add_with_a_float_input(tmp_path):
    """Add1 left float (its reader b is narrower) makes Add2's skip input float: Add2 stays float too, however
    its output is read, and so does an Add whose other input is a float layer's output."""
    from bitnas.passes.inc_ptq import requantize_adds

    write_residual_qdq(tmp_path / "before.onnx")
    model = onnx.load(str(tmp_path / "before.onnx"))
    assert requantize_adds(model, narrow={"b"}) == 0
    assert sorted(_readers_of(model, "s1")) == ["Add:add2", "QuantizeLinear:s1.quantize"]
    assert _readers_of(model, "s2") == ["Relu:relu2"]
    model = onnx.load(str(tmp_path / "before.onnx"))
    add1 = next(n for n in model.graph.node if n.name == "add1")
    add1.input[1] = "a_out"  # conv a's float output
    assert requantize_adds(model) == 0


def test_requantize_adds_refuses_a_relu_quantized_off_zero(tmp_path):
    from bitnas.passes.inc_ptq import requantize_adds

    write_residual_qdq(tmp_path / "before.onnx", relu_zero=3)
    with pytest.raises(InternalError, match="relu2.*add2"):
        requantize_adds(onnx.load(str(tmp_path / "before.onnx")))
