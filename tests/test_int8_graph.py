"""The INT8 graph pattern the compiler emits and the profiler times (issue 13).

HardSwish stays one node between the Q/DQ pairs of the integer convolutions around it (ONNX Runtime's basic
optimization, which the INC pass runs before quantizing, inlines it into HardSigmoid and Mul; the pass
fuses it back, so OpenVINO fuses it into the convolution instead of running two float ops between
reorders). The compiled graph and the profiler's unit model of the same layer have the same pattern, and
the quantized graph still agrees with the float one.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitnas.passes import AssignBitwidths, IncStaticPtq, OnnxModel
from bitnas.passes.inc_ptq import fuse_hardswish, resolve_reduce_range
from bitnas.pipeline import PassContext
from bitnas.space import Candidate, LayerSpec
from bitnas.supernets.data import Dataset

LAYERS = ["a", "b", "fc"]
INT8 = (8, 8)
# 7-bit weights on a CPU without VNNI (where ONNX Runtime's u8s8 kernels could saturate with 8), as by default
CALIB = {"calibration_batches": 2, "calibration_batch_size": 16, "reduce_range": resolve_reduce_range("auto")}
# Conv -> Q -> DQ -> HardSwish -> Q -> DQ -> Conv: each INT8 layer reads a Q/DQ'd input and writes a Q/DQ'd
# output; HardSwish runs between them, one node
EXPECTED_PATH = ["QuantizeLinear", "DequantizeLinear", "Conv:a", "QuantizeLinear", "DequantizeLinear", "HardSwish",
                 "QuantizeLinear", "DequantizeLinear", "Conv:b", "QuantizeLinear", "DequantizeLinear", "HardSwish",
                 "GlobalAveragePool", "Flatten", "QuantizeLinear", "DequantizeLinear", "Gemm:fc", "QuantizeLinear",
                 "DequantizeLinear"]


def _init(rng, name, shape, scale):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def write_hswish_net(path, opset: int = 17) -> None:
    """input -> Conv a -> HardSwish -> Conv b -> HardSwish -> GlobalAveragePool -> Flatten -> Gemm fc."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "a.weight", "a.bias"], ["a_out"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["a_out"], ["a_act"], name="a_act"),
        helper.make_node("Conv", ["a_act", "b.weight", "b.bias"], ["b_out"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["b_out"], ["b_act"], name="b_act"),
        helper.make_node("GlobalAveragePool", ["b_act"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [_init(rng, "a.weight", (8, 1, 3, 3), 0.5), _init(rng, "a.bias", (8,), 0.3),
             _init(rng, "b.weight", (8, 8, 3, 3), 0.3), _init(rng, "b.bias", (8,), 0.3),
             _init(rng, "fc.weight", (5, 8), 0.5), _init(rng, "fc.bias", (5,), 0.1)]
    graph = helper.make_graph(
        nodes, "hswish", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
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


def run_ort(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    return Dataset("tiny", x, np.zeros(64, np.int64), x[:32].copy(), np.zeros(32, np.int64), 5)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, data):
    """(float graph, INC's INT8 graph) of the HardSwish net, all layers INT8, through the compiler's passes."""
    work = tmp_path_factory.mktemp("hswish")
    fp32 = work / "fp32.onnx"
    write_hswish_net(fp32)
    ctx = PassContext(workdir=work, inputs={"candidate": Candidate.make({}, dict.fromkeys(LAYERS, INT8)),
                                            "data": data})
    bits = AssignBitwidths().run(OnnxModel(path=fp32, layers=list(LAYERS), float_path=fp32), ctx)
    return fp32, IncStaticPtq(CALIB).run(bits, ctx).path


def _hswish_by_parts(path, opset: int = 17, alpha: float = 1 / 6, gate_reads_x: bool = True) -> None:
    """x -> HardSigmoid -> Mul(x or another tensor, gate): HardSwish as ONNX Runtime inlines it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3])
    nodes = [helper.make_node("HardSigmoid", ["x"], ["g"], name="hs", alpha=alpha, beta=0.5)]
    if gate_reads_x:
        nodes.append(helper.make_node("Mul", ["x", "g"], ["y"], name="mul"))
    else:
        nodes += [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("Mul", ["n", "g"], ["y"], name="mul")]
    model = helper.make_model(helper.make_graph(nodes, "parts", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_fuse_hardswish_restores_the_op_and_its_values(tmp_path):
    src, dst = tmp_path / "parts.onnx", tmp_path / "fused.onnx"
    _hswish_by_parts(src)
    model = onnx.load(str(src))
    assert fuse_hardswish(model) == 1
    assert [n.op_type for n in model.graph.node] == ["HardSwish"]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    x = np.linspace(-5, 5, 36, dtype=np.float32).reshape(1, 4, 3, 3)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{"alpha": 0.2}, {"gate_reads_x": False}, {"opset": 13}],
                         ids=["other-alpha", "gate-of-another-tensor", "opset-13"])
def test_fuse_hardswish_leaves_other_patterns_alone(kw, tmp_path):
    _hswish_by_parts(tmp_path / "parts.onnx", **kw)
    model = onnx.load(str(tmp_path / "parts.onnx"))
    before = [n.op_type for n in model.graph.node]
    assert fuse_hardswish(model) == 0
    assert [n.op_type for n in model.graph.node] == before


def test_inc_ptq_keeps_hardswish_one_node_between_qdq(compiled):
    model = onnx.load(str(compiled[1]))
    assert data_path(model) == EXPECTED_PATH
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["HardSwish"] == 2 and ops["HardSigmoid"] == 0 and ops["Mul"] == 0


def test_inc_ptq_of_the_hardswish_net_agrees_with_float(compiled, data):
    ref, got = run_ort(compiled[0], data.x_val), run_ort(compiled[1], data.x_val)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).mean() <= 0.1 * np.abs(ref).mean()


def test_openvino_fuses_the_hardswish_into_integer_convolutions(compiled):
    pytest.importorskip("openvino")
    from bitnas.backends.openvino import OpenVinoBackend

    rt = OpenVinoBackend(threads=1)._compiled(compiled[1]).get_runtime_model()
    kinds = Counter((op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                    for op in rt.get_ordered_ops())
    assert kinds[("Convolution", "u8")] == 2
    assert not any(kind == "Math" for kind, _ in kinds), kinds  # no HardSigmoid left to run apart


def test_profiler_unit_model_has_the_pattern_the_compiler_emits(tmp_path):
    from bitnas.latency_luts.profiler import write_layer_model

    spec = LayerSpec("conv", 8, 8, 3, 1, 1, 6, "hswish", w_bits=8, a_bits=8)
    model = onnx.load(str(write_layer_model(spec, tmp_path, reduce_range=False)))
    assert data_path(model)[:6] == ["QuantizeLinear", "DequantizeLinear", "Conv:layer", "QuantizeLinear",
                                    "DequantizeLinear", "HardSwish"]
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["HardSwish"] == 1 and ops["HardSigmoid"] == 0 and ops["Mul"] == 0


@pytest.mark.parametrize("space,size", [("mbv2-tiny", 32), ("ofa-resnet-tiny", 16)])
def test_profiler_block_ends_in_the_integer_add_the_compiler_emits(space, size, tmp_path):
    """An INT8 block unit's residual Add (ResNet's Add, Relu too) runs as ONNX Runtime's QLinearAdd, as in an
    artifact where the next layer is an 8-bit conv, and computes what the float block does within quantization."""
    from bitnas.backends.ort import kernel_counts
    from bitnas.latency_luts.profiler import input_for, write_unit_model
    from bitnas.supernets.families import build_supernet, fusion_units

    net = build_supernet(space, image_size=size)
    block = next(u for u in fusion_units(net, samples=20) if len(u) > 1 and any(s.residual for s in u))
    int8 = [s.with_bits((8, 8)) for s in block]
    path = write_unit_model(int8, tmp_path, reduce_range=False)
    ops = kernel_counts(path)
    assert ops.get("QLinearAdd") == 1 and "Add" not in ops, ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, input_for(int8))[0]
    want = ort.InferenceSession(str(write_unit_model(block, tmp_path, reduce_range=False)),
                                providers=["CPUExecutionProvider"]).run(None, input_for(block))[0]
    assert np.abs(got - want).mean() < 0.05 * np.abs(want).mean()
