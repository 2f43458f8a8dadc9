"""The profiler's unit models: every op and activation as torch exports bitnas's module of it; the rest refused."""

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from bitnas.backends import get_backend
from bitnas.errors import UnknownLayerError, UserError
from bitnas.latency_luts.profiler import (
    block_items,
    input_for,
    input_shapes,
    layer_items,
    unit_model,
    write_unit_model,
)
from bitnas.passes.export_onnx import INPUT_NAME
from bitnas.passes.inc_ptq import quantized_nodes
from bitnas.space import LayerSpec
from bitnas.supernets.static import _ACTS, SE, ConvUnit, LinearUnit, TokenLinearUnit
from bitnas.supernets.transformer import _attend

ACTS = ("none", "relu", "relu6", "hswish", "gelu")
PLUMBING = {"Constant", "Identity"}  # constants are initializers in the unit models; Identity names the output

CASES = {
    **{f"conv-{a}": LayerSpec("conv", 8, 16, 3, 1, 1, 6, a) for a in ACTS},
    "conv-dw-s2": LayerSpec("conv", 16, 16, 5, 2, 16, 7, "relu6"),
    **{f"conv-{a}-res": LayerSpec("conv", 8, 8, 3, 1, 1, 6, a, residual=True) for a in ACTS},
    **{f"conv-{a}-add-then-act": LayerSpec("conv", 8, 8, 1, 1, 1, 6, a, residual=True, act_after_add=True)
       for a in ("relu", "hswish")},
    **{f"linear-{a}": LayerSpec("linear", 8, 10, hw=4, act=a) for a in ACTS},
    **{f"dense-{a}": LayerSpec("dense", 8, 12, hw=5, act=a) for a in ACTS},
    "dense-none-res": LayerSpec("dense", 8, 8, hw=5, residual=True),
    "dense-gelu-res": LayerSpec("dense", 8, 8, hw=5, act="gelu", residual=True),
    "dense-res-from-outside": LayerSpec("dense", 16, 8, hw=5, residual=True),  # a ViT's output projection
    "dense-relu-add-then-act": LayerSpec("dense", 8, 8, hw=5, act="relu", residual=True, act_after_add=True),
    "dense-one-token": LayerSpec("dense", 8, 10, hw=1),
    "attention": LayerSpec("attention", 16, 16, groups=2, hw=5),
    "attention-one-head": LayerSpec("attention", 8, 8, groups=1, hw=3),
    "se": LayerSpec("se", 16, 4, hw=6),
    "layernorm": LayerSpec("layernorm", 8, 8, hw=5),
    "maxpool-3s2": LayerSpec("maxpool", 8, 8, 3, 2, hw=8),  # a ResNet stem's
    "avgpool-2s2": LayerSpec("avgpool", 8, 8, 2, 2, hw=8),  # once-for-all's avgpool_conv shortcut
}


class Residual(nn.Module):
    """``x + unit(x)``; with ``act`` the activation of the sum, as ResNet's bottleneck does."""

    def __init__(self, unit: nn.Module, act: str | None = None):
        super().__init__()
        self.unit, self.act = unit, act

    def forward(self, x):
        y = x + self.unit(x)
        return _ACTS[self.act](y) if self.act else y


class Act(nn.Module):
    def __init__(self, act: str):
        super().__init__()
        self.act = act

    def forward(self, x):
        return _ACTS[self.act](x)


class Attention(nn.Module):
    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, q, k, v):
        return _attend(q, k, v, self.heads, self.head_dim)


def module_of(s: LayerSpec) -> nn.Module:
    """bitnas's own module of ``s``, as a family's ``extract`` builds it."""
    if s.op == "conv":
        conv = nn.Conv2d(s.cin, s.cout, s.kernel, s.stride, s.kernel // 2, groups=s.groups)
        unit = ConvUnit("layer", conv, None, "none" if s.act_after_add else s.act)
        return Residual(unit, s.act if s.act_after_add else None) if s.residual else unit
    if s.op == "linear":
        unit = LinearUnit("layer", nn.Linear(s.cin, s.cout))
        return unit if s.act == "none" else nn.Sequential(unit, Act(s.act))
    if s.op == "dense":
        unit = TokenLinearUnit("layer", nn.Linear(s.cin, s.cout), s.act)
        return Residual(unit) if s.residual else unit
    if s.op == "attention":
        return Attention(s.groups, s.cin // s.groups)
    if s.op == "se":
        return SE("se", s.cin, s.cout)
    if s.op == "maxpool":
        return nn.MaxPool2d(s.kernel, s.stride, s.padding)
    if s.op == "avgpool":
        return nn.AvgPool2d(s.kernel, s.stride, s.padding, ceil_mode=True, count_include_pad=False)
    return nn.LayerNorm(s.cin)


# TokenLinearUnit applies gelu only, and adds outside itself: other dense variants have no bitnas module
WITH_MODULE = [k for k, s in CASES.items()
               if not (s.op == "dense" and (s.act not in ("none", "gelu") or s.act_after_add or s.cin != s.cout
                                            and s.residual))]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type not in PLUMBING]


def torch_export(module: nn.Module, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    xs = tuple(torch.randn(*shape) for shape in shapes.values())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), xs, buf, input_names=list(shapes), output_names=["out"], opset_version=17,
                          dynamo=False, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def out_shape(s: LayerSpec) -> tuple[int, ...]:
    return {"linear": (1, s.cout), "dense": (1, s.hw, s.cout), "attention": (1, s.hw, s.cin),
            "layernorm": (1, s.hw, s.cin), "se": (1, s.cin, s.hw, s.hw)}.get(s.op, (1, s.cout, s.out_hw, s.out_hw))


@pytest.fixture(scope="module")
def backends():
    return {name: get_backend(name) for name in ("ort", "openvino")}


@pytest.mark.parametrize("case", list(CASES))
def test_unit_model_is_valid_and_runs_on_ort_and_openvino(case, backends, tmp_path):
    spec = CASES[case]
    model = unit_model([spec])
    onnx.checker.check_model(model, full_check=True)
    x = input_for([spec])
    assert {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input} == \
        {k: list(v.shape) for k, v in x.items()}
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    outs = {name: b.run(path, x)[0] for name, b in backends.items()}
    for out in outs.values():
        assert out.shape == out_shape(spec) and np.isfinite(out).all()
    np.testing.assert_allclose(outs["openvino"], outs["ort"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", WITH_MODULE)
def test_unit_model_has_the_pattern_torch_exports_for_the_bitnas_module(case):
    spec = CASES[case]
    mine = op_types(unit_model([spec]))
    theirs = op_types(torch_export(module_of(spec), input_shapes([spec])))
    assert mine == theirs


def _load_weights(module: nn.Module, spec: LayerSpec, model: onnx.ModelProto) -> None:
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    params = {"conv": {"conv.weight": "W", "conv.bias": "B"}, "dense": {"fc.weight": "W", "fc.bias": "B"},
              "se": {"reduce.weight": "W1", "reduce.bias": "B1", "expand.weight": "W2", "expand.bias": "B2"},
              "layernorm": {"weight": "gamma", "bias": "beta"}}.get(spec.op, {})
    if spec.op == "linear":
        params = {"fc.weight": "W", "fc.bias": "B"} if spec.act == "none" else {"0.fc.weight": "W", "0.fc.bias": "B"}
    module.load_state_dict({k: w[v] for k, v in params.items()})


@pytest.mark.parametrize("case", [k for k in WITH_MODULE if not CASES[k].residual])
def test_unit_model_computes_what_the_bitnas_module_computes(case, backends, tmp_path):
    spec = CASES[case]
    model = unit_model([spec], seed=3)
    module = module_of(spec).eval()
    _load_weights(module, spec, model)
    x = input_for([spec], seed=4)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in x.values())).numpy()
    np.testing.assert_allclose(backends["ort"].run(path, x)[0], ref, rtol=1e-4, atol=1e-5)


def test_residual_adds_the_unit_input_or_a_block_input_from_outside():
    chain = [LayerSpec("dense", 8, 16, hw=5, act="gelu"), LayerSpec("dense", 16, 8, hw=5, residual=True)]
    adds = [n for n in unit_model(chain).graph.node if n.op_type == "Add" and n.name.endswith("residual")]
    assert len(adds) == 1 and INPUT_NAME in adds[0].input
    lone = unit_model([CASES["dense-res-from-outside"]])
    add = next(n for n in lone.graph.node if n.name == "residual")
    assert INPUT_NAME not in add.input and add.input[0] in {t.name for t in lone.graph.initializer}


@pytest.mark.parametrize("chain", [
    # ResNet's bottleneck: the last conv's Add comes before its ReLU
    [LayerSpec("conv", 8, 4, 1, 1, 1, 6, "relu"), LayerSpec("conv", 4, 4, 3, 1, 1, 6, "relu"),
     LayerSpec("conv", 4, 8, 1, 1, 1, 6, "relu", residual=True, act_after_add=True)],
    # a transformer's feed-forward half and its attention half
    [LayerSpec("layernorm", 8, 8, hw=5), LayerSpec("dense", 8, 16, hw=5, act="gelu"),
     LayerSpec("dense", 16, 8, hw=5, residual=True)],
    [LayerSpec("attention", 16, 16, groups=2, hw=5), LayerSpec("dense", 16, 8, hw=5, residual=True)],
], ids=["bottleneck", "ffn", "attention-out"])
def test_chained_units_build_and_run(chain, backends, tmp_path):
    model = unit_model(chain)
    path = tmp_path / "u.onnx"
    onnx.save(model, str(path))
    x = input_for(chain)
    for b in backends.values():
        assert b.run(path, x)[0].shape == out_shape(chain[-1])
    if chain[-1].act_after_add:
        assert op_types(model)[-2:] == ["Add", "Relu"]


INT8 = ["conv-relu6", "conv-hswish", "conv-gelu-res", "conv-relu-add-then-act", "linear-none", "linear-relu",
        "dense-none", "dense-gelu", "dense-gelu-res", "dense-res-from-outside"]


@pytest.mark.parametrize("case", INT8)
def test_int8_variant_quantizes_its_layer_and_runs(case, backends, tmp_path):
    spec = CASES[case].with_bits((8, 8))
    path = write_unit_model([spec], tmp_path, reduce_range=False)
    assert path.name.endswith("_int8.onnx")
    model = onnx.load(str(path))
    assert quantized_nodes(model) == {"layer"}
    # the float pattern stays, HardSwish one node (the quantizer's pre-optimization inlines it; it is fused back),
    # but for a Relu after the residual Add: the Add's output QuantizeLinear (zero point 0) computes it, as in an
    # artifact (quantized_residual_output)
    expanded = op_types(unit_model([CASES[case]]))
    if spec.residual and spec.act_after_add and spec.act == "relu":
        assert expanded[-1] == "Relu"
        expanded = expanded[:-1]
    assert [op for op in op_types(model) if op not in ("QuantizeLinear", "DequantizeLinear")] == expanded
    x = input_for([spec])
    for b in backends.values():
        assert b.run(path, x)[0].shape == out_shape(spec)


def test_int8_layer_in_a_token_unit_is_the_only_one_quantized(backends, tmp_path):
    chain = [LayerSpec("dense", 8, 16, hw=5, act="gelu").with_bits((8, 8)), LayerSpec("dense", 16, 8, hw=5, residual=True)]
    path = write_unit_model(chain, tmp_path, reduce_range=False)
    assert quantized_nodes(onnx.load(str(path))) == {"layer0"}
    assert backends["ort"].run(path, input_for(chain))[0].shape == (1, 5, 8)


def test_float_only_ops_are_listed_once_in_float():
    specs = [CASES["attention"], CASES["se"], CASES["layernorm"], CASES["dense-none"]]
    items = layer_items(specs, [(32, 32), (8, 8)])
    assert [it.specs[0].op for it in items] == ["attention", "se", "layernorm", "dense", "dense"]
    assert all(it.specs[0].bits == (32, 32) for it in items[:3])
    blocks = block_items([specs[2:]], [(32, 32), (8, 8)], 1.0)
    assert {tuple(s.bits for s in it.specs) for it in blocks} == {((32, 32), (32, 32)), ((32, 32), (8, 8))}


REFUSED = {
    "unknown op": (LayerSpec("pool", 8, 8, hw=4, name="s0.pool"), r"'s0\.pool' \(pool\|cin8.*op 'pool'"),
    "unknown act": (LayerSpec("conv", 8, 8, hw=4, act="silu", name="s1.b0.dw"), r"'s1\.b0\.dw'.*activation 'silu'"),
    "act on a float-only op": (LayerSpec("se", 8, 4, hw=4, act="relu", name="s1.b0.se"),
                               r"'s1\.b0\.se'.*op 'se' with activation 'relu'"),
    "float-only op at INT8": (LayerSpec("attention", 8, 8, groups=2, hw=4, name="l0.attention").with_bits((8, 8)),
                              r"'l0\.attention' \(attention\|.*w8a8\).*float only"),
    "float-only op at W4A4": (LayerSpec("layernorm", 8, 8, hw=4, name="l0.ln1").with_bits((4, 4)),
                              r"'l0\.ln1'.*float only, not W4A4"),
    "heads not dividing": (LayerSpec("attention", 8, 8, groups=3, hw=4, name="l0.attention"), r"'l0\.attention'.*3 heads"),
    "residual on attention": (LayerSpec("attention", 8, 8, hw=4, residual=True), r"attention\|cin8.*no residual"),
    "act_after_add alone": (LayerSpec("conv", 8, 8, hw=4, act="relu", act_after_add=True, name="c"), r"'c'.*needs a residual"),
    "strided residual": (LayerSpec("conv", 8, 8, 3, 2, hw=4, residual=True, name="c"), r"'c'.*stride 1"),
    "layernorm changing width": (LayerSpec("layernorm", 8, 4, hw=4, name="ln"), r"'ln'.*cout 4 must equal cin 8"),
    "pool changing width": (LayerSpec("maxpool", 8, 4, 3, 2, hw=4, name="pool"), r"'pool'.*cout 4 must equal cin 8"),
    "pool at INT8": (LayerSpec("avgpool", 8, 8, 2, 2, hw=4, name="p").with_bits((8, 8)), r"'p'.*float only"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_profiler_cannot_build_is_refused_by_name(case, tmp_path):
    spec, message = REFUSED[case]
    for build in (lambda: unit_model([spec]), lambda: write_unit_model([spec], tmp_path, reduce_range=False),
                  lambda: input_for([spec])):
        with pytest.raises(UnknownLayerError, match=message):
            build()
    assert not list(tmp_path.iterdir())


def test_profiling_refuses_an_unbuildable_layer_before_measuring(tmp_path):
    spec, message = REFUSED["unknown act"]
    with pytest.raises(UnknownLayerError, match=message):
        layer_items([CASES["conv-relu"], spec], [(32, 32), (8, 8)])
    with pytest.raises(UnknownLayerError, match=message):
        block_items([[CASES["conv-relu"], spec]], [(32, 32)], 0.0)


def test_mismatched_chain_and_uncalibratable_unit_are_refused_by_name(tmp_path):
    with pytest.raises(UnknownLayerError, match=r"'fc2'.*reads \[1, 5, 16\].*gives \[1, 5, 12\]"):
        unit_model([LayerSpec("dense", 8, 12, hw=5), LayerSpec("dense", 16, 8, hw=5, name="fc2")])
    chain = [LayerSpec("attention", 8, 8, groups=2, hw=5), LayerSpec("dense", 8, 8, hw=5, name="o").with_bits((8, 8))]
    with pytest.raises(UnknownLayerError, match=r"'o'.*keys and values"):
        write_unit_model(chain, tmp_path, reduce_range=False)
    with pytest.raises(UserError, match="at least one layer"):
        unit_model([])
    assert set(input_shapes(chain)) == {INPUT_NAME, f"l0_{INPUT_NAME}_k", f"l0_{INPUT_NAME}_v"}


def test_every_layer_a_trainable_family_emits_builds_and_runs(backends, tmp_path):
    from bitnas.supernets import PAPER_SPACES, build_supernet, space_names

    rng = np.random.default_rng(0)
    seen_int8: set[tuple[str, str]] = set()
    for name in (n for n in space_names() if n not in PAPER_SPACES):
        net = build_supernet(name)
        for it in layer_items(net.layers(net.space.sample(rng)), [(32, 32), (8, 8)]):
            s = it.specs[0]
            if s.bits == (8, 8):
                if (s.op, s.act) in seen_int8:
                    continue  # one INT8 model per op and activation keeps this fast
                seen_int8.add((s.op, s.act))
            path = write_unit_model(it.specs, tmp_path, reduce_range=False)
            assert backends["ort"].run(path, input_for(it.specs))[0].shape == out_shape(s), (name, s.name)


def test_every_layer_kind_a_family_emits_runs_on_tvm_as_on_ort(tmp_path):
    """TVM profiles every family's unit models: each kind of layer the trainable families emit (op, activation,
    residual, float or INT8) builds with TVM's ONNX frontend and computes what ONNX Runtime computes."""
    from bitnas.supernets import PAPER_SPACES, build_supernet, space_names

    ort, tvm = get_backend("ort"), get_backend("tvm")
    rng = np.random.default_rng(1)
    seen: set[tuple] = set()
    for name in (n for n in space_names() if n not in PAPER_SPACES):
        net = build_supernet(name)
        for it in layer_items(net.layers(net.space.sample(rng)), [(32, 32), (8, 8)]):
            s = it.specs[0]
            kind = (s.op, s.act, s.residual, s.act_after_add, s.bits)
            if kind in seen:
                continue
            seen.add(kind)
            path = write_unit_model(it.specs, tmp_path, reduce_range=False)
            x = input_for(it.specs)
            np.testing.assert_allclose(tvm.run(path, x)[0], ort.run(path, x)[0], rtol=1e-3, atol=1e-3,
                                       err_msg=f"{name}: {s.name} {kind}")
    ops = {k[0] for k in seen}
    assert {"conv", "se", "dense", "attention", "layernorm", "linear"} <= ops, ops
    assert {"hswish", "gelu", "relu"} <= {k[1] for k in seen}
