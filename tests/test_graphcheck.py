"""The graph check: export naming, layers found by pattern, a wrong ``layers()`` named by layer and field."""

import numpy as np
import onnx
import pytest
import torch

from bitnas.errors import UserError
from bitnas.passes.assign_bits import set_layer_bits
from bitnas.passes.export_onnx import export_static
from bitnas.passes.inc_ptq import inc_quantize_qdq
from bitnas.space import LayerSpec
from bitnas.supernets.graphcheck import check_layers, graph_layers
from bitnas.supernets.mbv2 import MBV2Supernet, mbv2_tiny
from bitnas.supernets.mbv3 import MBV3Supernet, mbv3_tiny, qfa_mbv3_tiny
from bitnas.supernets.resnet import ResNetSupernet, ofa_resnet_tiny
from bitnas.supernets.transformer import TransformerSupernet, vit_tiny

FAMILIES = {
    "mbv2": lambda: MBV2Supernet(mbv2_tiny()),
    "mbv3": lambda: MBV3Supernet(mbv3_tiny()),
    "qfa-mbv3": lambda: MBV3Supernet(qfa_mbv3_tiny()),
    "resnet": lambda: ResNetSupernet(ofa_resnet_tiny()),
    "vit": lambda: TransformerSupernet(vit_tiny()),
}


def build(name):
    torch.manual_seed(0)
    return FAMILIES[name]().eval()


class EditedLayers:
    """A supernet whose ``layers()`` is edited by ``edit`` (a hand-written layer list with a mistake)."""

    def __init__(self, net, edit):
        self.net, self.edit = net, edit
        self.space, self.d, self.extract = net.space, net.d, net.extract

    def layers(self, candidate):
        return self.edit(self.net.layers(candidate))


def replace(specs, name, **changes):
    out = []
    for s in specs:
        if s.name == name:
            fields = {**s.to_dict(), "name": s.name, "act_after_add": s.act_after_add, **changes}
            s = LayerSpec.from_dict(fields)
        out.append(s)
    return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_all_layer_specs_hold_every_layer_of_300_random_candidates(name):
    net = build(name)
    specs = net.all_layer_specs()
    keys = {s.key for s in specs}
    assert len(keys) == len(specs) and all(s.bits == (32, 32) for s in specs)
    rng = np.random.default_rng(0)
    for _ in range(300):
        c = net.space.sample(rng)
        for s in net.layers(c):
            assert s.with_bits((32, 32)).key in keys, f"{name} {c.id}: {s.name} {s.key}"


def test_export_names_every_node_after_the_layer_it_computes(tmp_path):
    net = build("mbv3")
    static = net.extract(net.space.largest())
    out = export_static(static, tmp_path / "m.onnx", (1, 16, 16))
    names = [n.name for n in onnx.load(str(out.path)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert out.layers == [u.layer_name for u in static.units()]
    assert [n for n in names if ".se." not in n] == out.layers
    assert {"s1.b0.se.reduce", "s1.b0.se.expand", "s2.b2.se.expand"} <= set(names)
    vit = build("vit")
    out = export_static(vit.extract(vit.space.largest()), tmp_path / "v.onnx", (1, 16, 16))
    named = [n.name for n in onnx.load(str(out.path)).graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert named[:3] == ["l0.ln1", "l0.attention", "l0.ln2"] and named[-1] == "ln"


def test_the_graph_says_what_each_family_computes():
    res = build("resnet")
    c = res.space.make({**res.space.largest().arch_dict, "stem.extra": 1})
    got = {s.name: s for s in check_layers(res, c)}
    conv3, stem2, short = got["s0.b0.conv3"], got["stem.conv2"], got["s0.b0.shortcut"]
    assert (conv3.act, conv3.residual, conv3.act_after_add) == ("relu", True, True)  # Conv, Add, Relu
    assert (stem2.act, stem2.residual, stem2.act_after_add) == ("relu", True, False)  # Conv, Relu, Add
    assert (short.act, short.residual) == ("none", False)
    mbv3 = build("mbv3")
    got = {s.name: s for s in check_layers(mbv3, mbv3.space.largest())}
    se = got["s1.b0.se"]
    assert (se.op, se.cin, se.hw, se.bits) == ("se", got["s1.b0.dw"].cout, got["s1.b0.dw"].out_hw, (32, 32))
    assert got["stem"].act == "hswish" and got["s0.b0.dw"].act == "relu"
    vit = build("vit")
    specs = check_layers(vit, vit.space.largest())
    assert [s.op for s in specs[:9]] == ["conv", "layernorm", "dense", "dense", "dense", "attention", "dense",
                                         "layernorm", "dense"]
    assert specs[-2].name == "ln" and specs[-2].hw == vit.d.tokens
    fc1 = next(s for s in specs if s.name == "l0.fc1")
    assert fc1.act == "gelu"


def test_a_quantized_artifact_reads_as_its_float_graph(tmp_path):
    """QDQ pairs are looked through; h-swish stays one HardSwish node in the INC pass's output (fused back after
    ONNX Runtime's pre-optimization inlines it) and is found."""
    net = build("mbv3")
    c = net.space.sample(np.random.default_rng(2))
    names = [s.name for s in net.layers(c) if s.name in c.policy_dict]
    policy = {n: ((8, 8) if i % 2 else (32, 32)) for i, n in enumerate(names)}
    c = net.space.make(c.arch_dict, policy)
    out = export_static(net.extract(c), tmp_path / "fp32.onnx", (1, 16, 16))
    model = onnx.load(str(out.path))
    set_layer_bits(model, {n: policy[n] for n in out.layers})
    onnx.save(model, str(out.path))
    calib = [np.random.default_rng(0).standard_normal((16, 1, 16, 16)).astype(np.float32)]
    inc_quantize_qdq(out.path, tmp_path / "q.onnx", [n for n in out.layers if policy[n] == (8, 8)], calib, False)
    quant = onnx.load(str(tmp_path / "q.onnx"))
    def count(m, op):
        return sum(n.op_type == op for n in m.graph.node)

    # inlined before quantization, then fused back; the SE gates' HardSigmoid stay as they are
    assert count(quant, "HardSwish") == count(model, "HardSwish") > 0
    assert count(quant, "HardSigmoid") == count(model, "HardSigmoid")
    set_layer_bits(quant, {n: policy[n] for n in out.layers})
    assert [s.key for s in graph_layers(quant)] == [s.key for s in graph_layers(model)] == \
           [s.key for s in net.layers(c)]


def test_a_wrong_layer_list_is_named_by_layer_and_field():
    mbv3 = build("mbv3")
    c = mbv3.space.make({**mbv3.space.largest().arch_dict, "s0.b1.kernel": 3})
    where = rf"\(space 'mbv3-tiny', candidate {c.id}\)"
    wrong = EditedLayers(mbv3, lambda s: replace(s, "s0.b1.dw", kernel=5))
    with pytest.raises(UserError, match=r"layer 's0\.b1\.dw': layers\(\) says kernel 5, the exported graph has 3 "
                                        + where):
        check_layers(wrong, c)
    wrong = EditedLayers(mbv3, lambda s: replace(s, "s1.b0.se", w_bits=8, a_bits=8))
    with pytest.raises(UserError, match=r"layer 's1\.b0\.se': layers\(\) says w_bits 8, the exported graph has 32"):
        check_layers(wrong, c)

    def old_se(specs):  # squeeze-and-excitation as a linear + dense pair
        out = []
        for s in specs:
            if s.op == "se":
                out += [LayerSpec("linear", s.cin, s.cout, hw=s.hw, act="relu", name=s.name + ".reduce"),
                        LayerSpec("dense", s.cout, s.cin, name=s.name + ".expand")]
            else:
                out.append(s)
        return out

    with pytest.raises(UserError, match=r"layer 's1\.b0\.se\.reduce': layers\(\) lists a linear layer, the exported "
                                        r"graph has no layer of that name"):
        check_layers(EditedLayers(mbv3, old_se), c)

    vit = build("vit")
    drop = EditedLayers(vit, lambda specs: [s for s in specs if s.name != "l0.ln1"])
    with pytest.raises(UserError, match=r"layer 'l0\.ln1': the exported graph computes a layernorm layer "
                                        r"\(layernorm\|cin32.*\) that layers\(\) does not list"):
        check_layers(drop, vit.space.largest())

    res = build("resnet")
    c = res.space.largest()
    with pytest.raises(UserError, match=r"layer 's0\.b0\.conv3': layers\(\) says act_after_add False, the exported "
                                        r"graph has True"):
        check_layers(EditedLayers(res, lambda s: replace(s, "s0.b0.conv3", act_after_add=False)), c)

    def swap(specs):  # the shortcut listed before the conv whose Add it feeds
        names = [s.name for s in specs]
        i, j = names.index("s0.b0.conv3"), names.index("s0.b0.shortcut")
        specs[i], specs[j] = specs[j], specs[i]
        return specs

    with pytest.raises(UserError, match=r"layer 's0\.b0\.shortcut': layers\(\) lists it where the exported graph "
                                        r"computes 's0\.b0\.conv3'"):
        check_layers(EditedLayers(res, swap), c)


def test_a_qat_subnet_is_checked_through_its_float_structure():
    net = build("qfa-mbv3")
    rng = np.random.default_rng(0)
    for c in [net.space.largest()] + [net.space.sample(rng) for _ in range(2)]:
        got = check_layers(net, c, extract=lambda c: net.extract(c, quantizers=False))
        assert {s.bits for s in got if s.name in c.policy_dict} - {(32, 32), (8, 8)}  # low-bit layers checked
