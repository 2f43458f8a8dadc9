"""SubByteActivations: activations below 8 bits as clipped UINT8 QDQ, computing what the simulation computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bitnas.errors import UserError
from bitnas.passes import (
    AssignBitwidths,
    Compact,
    ExportOnnx,
    ExtractSubnet,
    IncStaticPtq,
    Package,
    RecalibrateBn,
    SubByteActivations,
    SubByteWeights,
)
from bitnas.passes.assign_bits import layer_bits_of
from bitnas.passes.verify import run_batched
from bitnas.pipeline import PassContext, Sequential
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.static import quantize_net

BITS = [(8, 8), (8, 4), (4, 4), (2, 8), (4, 2), (8, 2), (2, 4)]


@pytest.fixture(scope="module")
def bitfusion_net(trained):
    """The session's trained weights in the W/A {2, 4, 8} space of the same architectures."""
    from bitnas.supernets import build_supernet

    net = build_supernet("bitfusion-mbv2-tiny")
    net.load_state_dict(trained.state_dict())
    return net.eval()


@pytest.fixture(scope="module")
def compiled(bitfusion_net, digits, tmp_path_factory):
    """The largest subnet with W/A bits cycling through BITS, compiled to QDQ."""
    net = bitfusion_net
    c = net.space.largest()
    names = [s.name for s in net.layers(c)]
    cand = net.space.make(c.arch_dict, {n: BITS[i % len(BITS)] for i, n in enumerate(names)})
    ctx = PassContext(workdir=tmp_path_factory.mktemp("subbyte_act"), inputs={"supernet": net, "data": digits})
    out = Sequential([ExtractSubnet(), RecalibrateBn(batches=2), ExportOnnx(), AssignBitwidths(),
                      IncStaticPtq(calibration_batches=2), SubByteWeights(), SubByteActivations(),
                      Compact()]).run(cand, ctx)
    return out, ctx


def test_the_artifact_computes_what_the_simulation_computes_on_onnx_runtime(compiled, digits):
    from bitnas.backends import get_backend

    out, ctx = compiled
    quant = ctx.results["quantization"]
    calib = calibration_batches(digits, 2, 64, ctx.seed)
    sim = quantize_net(ctx.inputs["last_static_net"], layer_bits_of(out.path), calib, quant["reduce_range"])
    backend = get_backend("ort")
    runner = backend.compile(out.path)
    x, _ = digits.head("val", 256)
    with torch.no_grad():
        ref = sim(torch.from_numpy(x)).numpy()
    got = run_batched(backend, runner, x)
    # the same integer arithmetic: most images give the very same logits; a rounding tie decided otherwise in
    # one layer changes a few
    exact = (np.abs(got - ref).max(axis=1) <= 1e-4 * max(1.0, float(np.abs(ref).max()))).mean()
    assert exact >= 0.95, exact
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_narrow_layers_quantize_to_their_levels_behind_a_clip(compiled):
    out, ctx = compiled
    bits = layer_bits_of(out.path)
    model = onnx.load(str(out.path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    narrow = {k for k, (w, a) in bits.items() if a < 8}
    assert narrow and ctx.results["activation_storage"]["narrow_layers"] == len(narrow)
    for node in model.graph.node:
        if node.name not in narrow:
            continue
        qmax = 2 ** bits[node.name][1] - 1
        # output: Clip -> QuantizeLinear, the Clip's bounds exactly the 2**a levels of the Q's scale
        (clip,) = [r for r in readers[node.output[0]] if r.op_type == "Clip"]
        (q,) = readers[clip.output[0]]
        assert q.op_type == "QuantizeLinear"
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        assert inits[q.input[2]].dtype == np.uint8 and 0 <= zero <= qmax
        lo, hi = float(inits[clip.input[1]]), float(inits[clip.input[2]])
        assert lo == pytest.approx(-zero * scale, rel=1e-6) and hi == pytest.approx((qmax - zero) * scale, rel=1e-6)
        # input: read through a DequantizeLinear of the same levels
        dq = producers[node.input[0]]
        assert dq.op_type == "DequantizeLinear"
        in_zero = int(inits[dq.input[2]])
        assert 0 <= in_zero <= qmax


def test_package_refuses_activations_the_static_quantizer_left_at_8_bits(bitfusion_net, digits, tmp_path):
    c = bitfusion_net.space.largest((8, 4))
    ctx = PassContext(workdir=tmp_path, inputs={"supernet": bitfusion_net, "data": digits})
    with pytest.raises(UserError, match="put SubByteActivations after the PTQ pass"):
        Sequential([ExtractSubnet(), RecalibrateBn(batches=1), ExportOnnx(), AssignBitwidths(),
                    IncStaticPtq(calibration_batches=1), Package()]).run(c, ctx)
