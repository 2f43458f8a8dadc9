"""TVM runs a packed-INT4 artifact as its INT8-storage equivalent (``widen_int4``), computing what ONNX Runtime
computes from the INT4 file, and still refuses 4-bit tensors that are not such weights."""

from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnas.backends import get_backend
from bitnas.errors import UnsupportedBackendError
from bitnas.passes import AssignBitwidths, IncStaticPtq, OnnxModel, SubByteWeights
from bitnas.pipeline import PassContext
from bitnas.space import Candidate
from bitnas.supernets.data import Dataset

pytest.importorskip("tvm")

POLICY = {"a": (4, 8), "b": (2, 8)}  # both layers' weights packed as INT4


def _opset(model: onnx.ModelProto) -> int:
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_float(path) -> None:
    """input -> Conv "a" -> Relu -> Conv "b" -> out, opset 17, as the compiler exports a float network."""
    rng = np.random.default_rng(0)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["input", "a.weight", "a.bias"], ["a_out"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a_out"], ["relu_out"], name="relu"),
             helper.make_node("Conv", ["relu_out", "b.weight", "b.bias"], ["out"], name="b", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "float", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, 8, 8])],
        [init("a.weight", (8, 3, 3, 3), 0.5), init("a.bias", (8,), 0.1),
         init("b.weight", (6, 8, 3, 3), 0.5), init("b.bias", (6,), 0.1)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The packed-INT4 QDQ model the compiler's passes write for POLICY, and an input for it."""
    folder = tmp_path_factory.mktemp("int4")
    float_path = folder / "float.onnx"
    _write_float(float_path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    data = Dataset("tiny", x, np.zeros(32, np.int64), x[:8].copy(), np.zeros(8, np.int64), 6)
    ctx = PassContext(workdir=folder, inputs={"candidate": Candidate.make({}, POLICY), "data": data})
    model = AssignBitwidths().run(OnnxModel(path=float_path, layers=list(POLICY), float_path=float_path), ctx)
    model = IncStaticPtq(calibration_batches=2, calibration_batch_size=8).run(model, ctx)
    model = SubByteWeights().run(model, ctx)
    return model.path, {"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_the_artifact_on_disk_stores_int4_weights_at_opset_21(artifact):
    path, _ = artifact
    model = onnx.load(str(path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert [n for n, t in types.items() if t == TensorProto.INT4] == ["a.weight_q4", "b.weight_q2"]
    assert types["a.weight_scale4"] == types["b.weight_scale2"] == TensorProto.FLOAT16
    assert _opset(model) == 21 and model.ir_version >= 10


def test_tvm_runs_the_int4_artifact_as_onnx_runtime_does(artifact):
    path, x = artifact
    before = _sha256(path)
    run = get_backend("tvm").compile(path)
    out = run(x)[0]
    ref = get_backend("ort").run(path, x)[0]  # ONNX Runtime reads the INT4 weights as they are stored
    assert out.shape == ref.shape == (1, 6, 8, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    assert _sha256(path) == before  # the artifact that ships stays INT4


def test_widen_int4_gives_the_int8_storage_form_with_the_same_numbers(artifact):
    from bitnas.backends.tvm import widen_int4

    path, x = artifact
    model = onnx.load(str(path))
    kept = model.SerializeToString()
    wide = widen_int4(model)
    assert model.SerializeToString() == kept  # a new model: the one given is not changed
    onnx.checker.check_model(wide, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    wide_inits = {t.name: numpy_helper.to_array(t) for t in wide.graph.initializer}
    for layer, bits in POLICY.items():
        q = wide_inits[f"{layer}.weight_q{bits[0]}"]
        assert q.dtype == np.int8
        np.testing.assert_array_equal(q, inits[f"{layer}.weight_q{bits[0]}"].astype(np.int8))
        scale = wide_inits[f"{layer}.weight_scale{bits[0]}_f32"]
        assert scale.dtype == np.float32
        np.testing.assert_array_equal(scale, inits[f"{layer}.weight_scale{bits[0]}"].astype(np.float32))
    assert not any(t.data_type in (TensorProto.INT4, TensorProto.FLOAT16) for t in wide.graph.initializer)
    assert "Cast" not in {n.op_type for n in wide.graph.node}
    assert _opset(wide) == 17
    # the same numbers as the ONNX graphs define them: without graph optimizations, as ONNX Runtime would
    # otherwise fuse the INT8 form (only) into integer QLinearConv kernels, which round differently
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outs = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, x)[0]
            for m in (model, wide)]
    np.testing.assert_array_equal(outs[1], outs[0])


def test_uint4_weights_with_a_zero_point_run_too(tmp_path):
    rng = np.random.default_rng(2)
    q = rng.integers(0, 16, (4, 5)).astype(ml_dtypes.uint4)
    zp = np.array([8, 7, 9, 8], ml_dtypes.uint4)
    scale = np.array([0.25, 0.5, 0.125, 1.0], np.float16)
    nodes = [helper.make_node("DequantizeLinear", ["w.q", "w.scale", "w.zp"], ["w.f16"], name="w_dq", axis=0),
             helper.make_node("Cast", ["w.f16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("Gemm", ["input", "w"], ["out"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(q, "w.q"), numpy_helper.from_array(scale, "w.scale"),
         numpy_helper.from_array(zp, "w.zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "uint4.onnx"
    onnx.save(model, str(path))
    x = {"input": rng.standard_normal((1, 5)).astype(np.float32)}
    ref = get_backend("ort").run(path, x)[0]
    np.testing.assert_allclose(get_backend("tvm").compile(path)(x)[0], ref, rtol=1e-5, atol=1e-6)


def _refused(kind: str) -> tuple[onnx.ModelProto, str]:
    """A model using a 4-bit tensor where widen_int4 does not reach, and that tensor's name."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])
    inits = [scale]
    if kind == "graph-input":  # a weight fed at run time, not stored
        w4 = helper.make_tensor_value_info("w4", TensorProto.INT4, [4, 4])
        nodes = [helper.make_node("DequantizeLinear", ["w4", "s"], ["wf"], name="dq4"),
                 helper.make_node("MatMul", ["input", "wf"], ["out"], name="mm")]
        inputs, name = [x, w4], "w4"
    elif kind == "activation":  # quantized to INT4 at run time: its zero point stays INT4 too
        inits.append(numpy_helper.from_array(np.array(0, ml_dtypes.int4), "zp4"))
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "zp4"], ["x4"], name="q4"),
                 helper.make_node("DequantizeLinear", ["x4", "s", "zp4"], ["out"], name="dq4")]
        inputs, name = [x], "x4"
    else:  # a Cast to INT4
        nodes = [helper.make_node("Cast", ["input"], ["x4"], name="to4", to=TensorProto.INT4),
                 helper.make_node("Cast", ["x4"], ["out"], name="back", to=TensorProto.FLOAT)]
        inputs, name = [x], "x4"
    model = helper.make_model(helper.make_graph(nodes, kind, inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model, name


@pytest.mark.parametrize("kind", ["graph-input", "activation", "cast"])
def test_tvm_refuses_a_4bit_tensor_that_is_not_a_stored_weight(kind, tmp_path):
    model, name = _refused(kind)
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedBackendError, match=f"4-bit.*'{name}'"):
        get_backend("tvm").compile(path)
