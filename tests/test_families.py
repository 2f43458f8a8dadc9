"""Elastic families: extract equals the supernet's active path, layers match, ONNX export runs on ORT."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bitnas.errors import ConfigError, SpaceError
from bitnas.supernets import build_supernet, get_space
from bitnas.supernets.qat_train import uniform_policy

FAMILIES = [("mbv3", "qfa-mbv3-tiny"), ("resnet", "ofa-resnet-tiny"), ("vit", "vit-tiny")]


def candidates(space, n_random=3, seed=0):
    rng = np.random.default_rng(seed)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(n_random)]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for f, _ in FAMILIES])
def family(request):
    torch.manual_seed(0)
    fam, space = request.param
    net = build_supernet(space, fam, image_size=16)
    # move BatchNorm statistics and the class token away from their initial values
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if hasattr(net, "cls"):
            net.cls.normal_()
    return net.eval()


def test_extract_equals_the_supernet_active_path(family):
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        for c in candidates(family.space):
            static = family.extract(c)
            torch.testing.assert_close(static(x), family(x, c), rtol=1e-5, atol=1e-5)


def test_layers_list_every_quantizable_layer_in_forward_order(family):
    for c in candidates(family.space):
        specs = family.layers(c)
        units = [u.layer_name for u in family.extract(c).units()]
        policy = c.policy_dict
        quantizable = [s.name for s in specs if s.name in policy]
        assert quantizable == units
        active = {g.name for g in family.space.policy_genes if family.space.is_active(g, family.space.values(c))}
        assert set(quantizable) == active
        assert all(s.bits == tuple(policy.get(s.name, (32, 32))) for s in specs)
        assert len({s.name for s in specs}) == len(specs)


def test_static_subnet_exports_to_onnx_and_matches_on_ort(family, tmp_path):
    c = candidates(family.space, 1, seed=3)[-1]
    if family.family == "mbv3":
        c = uniform_policy(family.space, c, 3)  # exported with its LSQ/BatchQuant fake-quant ops
    static = family.extract(c)
    x = torch.randn(4, 1, 16, 16)
    path = tmp_path / "m.onnx"
    torch.onnx.export(static, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamo=False)
    (y,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, static(x).numpy(), rtol=1e-4, atol=1e-4)


def test_mbv3_has_se_and_hswish_where_mobilenetv3_puts_them():
    net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)
    specs = net.layers(net.space.largest())
    assert specs[0].act == "hswish"
    assert {s.act for s in specs if s.name.startswith("s0.") and s.op == "conv"} == {"relu", "none"}
    assert any(s.name.startswith("s1.") and s.name.endswith(".se") and s.op == "se" for s in specs)
    assert not any(s.name.startswith("s0.") and s.op == "se" for s in specs)
    dw = [s for s in specs if s.name == "s0.b0.dw"][0]
    assert dw.kernel == 5 and dw.groups == dw.cin


def test_elastic_kernel_is_the_centre_crop_and_width_the_leading_channels():
    net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)
    arch = net.space.smallest().arch_dict
    c = net.space.make({**arch, "s0.b0.kernel": 3}, None)
    static = net.extract(c)
    dw = [u for u in static.units() if u.layer_name == "s0.b0.dw"][0]
    full = net.blocks["s0_b0"].dw.weight
    torch.testing.assert_close(dw.conv.weight, full[:dw.conv.out_channels, :, 1:4, 1:4])


def test_transformer_layers_report_heads_tokens_and_attention():
    net = build_supernet("vit-tiny", "vit", image_size=16)
    c = net.space.make({"layers": 2, "l0.heads": 2, "l0.ffn": 32, "l1.heads": 4, "l1.ffn": 64}, None)
    specs = {s.name: s for s in net.layers(c)}
    assert specs["l0.q"].op == "dense" and specs["l0.q"].cout == 16 and specs["l0.q"].hw == 17
    assert specs["l1.attention"].groups == 4 and specs["l1.attention"].weight_count == 0
    assert specs["l0.fc1"].cout == 32 and specs["l0.fc1"].act == "gelu"
    assert "l2.q" not in specs


def test_unknown_family_or_space_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown family 'lstm'"):
        build_supernet("x", "lstm", image_size=16)
    with pytest.raises(SpaceError, match="family 'vit' has no space 'simq-vit'"):
        build_supernet("simq-vit", "vit", image_size=16)
    with pytest.raises(SpaceError, match="paper-scale space for search only"):
        build_supernet("simq-vit")
    assert get_space("vit-tiny").cardinality()["arch_cardinality"] == 4 ** 2 * (1 + 4)
