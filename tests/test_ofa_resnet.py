"""once-for-all ResNet-50 checkpoints (OFAResNets) read natively: every subnet computes what the real ``ofa``
package's ``set_active_subnet`` + ``get_active_subnet(preserve_weight=True)`` computes, its layer list is
what its exported graph computes, and the LUT prices its pooled shortcuts as measured units."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import yaml

from bitnas.errors import ConfigError
from bitnas.latency_luts.lut import group_units, shortcut_len
from bitnas.space import FLOAT_BITS
from bitnas.supernets.families import build_supernet
from bitnas.supernets.ofa import load_ofa_weights, read_state_dict
from bitnas.supernets.ofa_resnet import OFAResNetSupernet, infer_definition
from tests.ofa_stub import ofa_networks

NAME = "ofa_resnet50_d=0,1,2_e=0.2,0.25,0.35_w=0.65,0.8,1.0.pth"
WIDTHS = (0.65, 0.8, 1.0)


def _random_ofa_resnet(n_classes: int, seed: int):
    """An ofa-built OFAResNets with random weights and BatchNorm statistics."""
    networks = ofa_networks()
    torch.manual_seed(seed)
    net = networks.OFAResNets(n_classes=n_classes, depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35],
                              width_mult_list=list(WIDTHS))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith("bn.bias"):
                t.add_(torch.randn_like(t) * 0.1)
            elif name.endswith("bn.weight"):
                t.uniform_(0.5, 1.5)
    return net.eval()


def _candidate(space, setting: dict, rng):
    """The bitnas candidate of an ofa ``sample_active_subnet`` setting: d = [stem, 4 stages], e per block,
    w = width indices [stem conv1/2, stem conv3, 4 stages]."""
    d, e, w = setting["d"], setting["e"], setting["w"]
    arch = {"stem.extra": int(d[0] == 2), "stem.w0": WIDTHS[w[0]], "stem.w1": WIDTHS[w[1]]}
    first = 0
    for s, base in enumerate((2, 2, 4, 2)):
        arch[f"s{s}.extra"], arch[f"s{s}.width"] = d[s + 1], WIDTHS[w[s + 2]]
        for b in range(base + d[s + 1]):
            arch[f"s{s}.b{b}.expand"] = e[first + b]
        first += base + 2
    policy = {g.name: g.options[rng.integers(len(g.options))] for g in space.policy_genes}
    return space.make(arch, policy)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ofa_net = _random_ofa_resnet(10, seed=4)
    path = tmp_path_factory.mktemp("ofa") / NAME
    torch.save({"state_dict": ofa_net.state_dict()}, path)
    return ofa_net, path


def test_the_supernet_has_ofas_state_dict_keys_and_shapes(pair):
    ofa_net, path = pair
    d = infer_definition(read_state_dict(path), path, image_size=32)
    assert (d.depths, d.expands, d.widths, d.num_classes, d.in_channels) == ((0, 1, 2), (0.2, 0.25, 0.35), WIDTHS,
                                                                             10, 3)
    ours, theirs = OFAResNetSupernet(d).state_dict(), ofa_net.state_dict()
    assert list(ours) == list(theirs)
    assert all(tuple(ours[k].shape) == tuple(theirs[k].shape) for k in ours)


def test_twenty_subnets_match_ofa_get_active_subnet_at_224_and_32(pair):
    ofa_net, path = pair
    state = read_state_dict(path)
    nets = {}
    for size in (224, 32):
        nets[size] = OFAResNetSupernet(infer_definition(state, path, image_size=size))
        load_ofa_weights(nets[size], state, path)
        nets[size].eval()
    random.seed(0)
    rng = np.random.default_rng(0)
    xs = {size: torch.randn(1 if size == 224 else 2, 3, size, size, generator=torch.Generator().manual_seed(size))
          for size in nets}
    worst, scale, stems = 0.0, 0.0, set()
    for _ in range(20):
        setting = ofa_net.sample_active_subnet()
        sub = ofa_net.get_active_subnet(preserve_weight=True).eval()
        c = _candidate(nets[32].space, setting, rng)
        stems.add(c.arch_dict["stem.extra"])
        for size, net in nets.items():
            with torch.no_grad():
                want = sub(xs[size])
                got = net.extract(c).eval()(xs[size])
                # the dynamic forward (training, accuracy) at the small size; at 224 the static subnet alone
                dyn = net(xs[size], c) if size == 32 else got
            worst = max(worst, (got - want).abs().max().item(), (dyn - want).abs().max().item())
            scale = max(scale, want.abs().max().item())
    assert stems == {0, 1}  # the stem's residual conv both skipped and kept
    assert worst <= 1e-5 and worst <= 1e-4 * scale, (worst, scale)


def test_the_layer_list_is_what_the_exported_graph_computes_and_the_lut_enumerates_every_block():
    from bitnas.supernets.graphcheck import check_family_layers

    net = build_supernet("ofa-resnet50", "ofa-resnet", 3, 32, 10)
    check_family_layers(net, samples=1)
    specs = {s.key for s in net.all_layer_specs()}
    units = {tuple(s.key for s in u): u for u in net.fusion_units()}
    assert {shortcut_len(u) for u in units.values()} == {0, 1, 2}  # stem; stride-1 projection; pool + conv
    rng = np.random.default_rng(0)
    for _ in range(30):
        layers = [s.with_bits(FLOAT_BITS) for s in net.layers(net.space.sample(rng))]
        assert {s.key for s in layers} <= specs
        grouped = group_units(layers)
        assert all(tuple(s.key for s in u) in units for u in grouped if len(u) > 1)
        assert [s.name for u in grouped for s in u] == [s.name for s in layers]
        # a stage's first block is one unit with its shortcut: s1..s3 average-pool, then a 1x1 conv
        for s in (1, 2, 3):
            (u,) = [u for u in grouped if u[0].name == f"s{s}.b0.conv1"]
            assert [x.name.rpartition(".")[2] for x in u] == ["conv1", "conv2", "conv3", "averagepool", "shortcut"]


def test_the_unit_model_of_a_pooled_shortcut_block_is_that_block():
    """What the profiler measures for a bottleneck with an avgpool_conv shortcut reads, by the graph
    patterns, as the very layers of that block (float and INT8), and runs."""
    import onnx
    import onnxruntime as ort

    from bitnas.latency_luts.profiler import _at, unit_model, write_unit_model
    from bitnas.passes.inc_ptq import quantized_nodes
    from bitnas.supernets.graphcheck import graph_layers, unprofiled_nodes

    net = build_supernet("ofa-resnet50", "ofa-resnet", 3, 32, 10)
    unit = next(u for u in net.fusion_units() if shortcut_len(u) == 2)
    model = unit_model(unit)
    # the model computes the shortcut first: the same layers in another order, so the residual Add reads
    # as the shortcut's (graph order) rather than conv3's; the same nodes either way
    def shape(s):
        return (s.op, s.cin, s.cout, s.kernel, s.stride, s.groups, s.hw)

    got = graph_layers(model)
    assert sorted(map(shape, got)) == sorted(map(shape, unit)) and not unprofiled_nodes(model)
    assert sum(s.residual for s in got) == 1 and sum(s.act == "relu" for s in got) == 3
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        q = write_unit_model([_at(s, (8, 8)) for s in unit], Path(tmp), False)
        # every conv quantized (QDQ), the shortcut's pool (layer3) float
        assert quantized_nodes(onnx.load(str(q))) == {"layer0", "layer1", "layer2", "layer4"}
        sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).normal(size=sess.get_inputs()[0].shape).astype(np.float32)
        (y,) = sess.run(None, {"input": x})
    assert y.shape == (1, unit[2].cout, unit[2].out_hw, unit[2].out_hw) and np.isfinite(y).all()


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(pair, tmp_path):
    ofa_net, path = pair
    sd = dict(ofa_net.state_dict())
    key = "blocks.5.conv2.conv.conv.weight"
    sd[key] = torch.zeros(3, 3, 3, 3)
    p = tmp_path / NAME
    torch.save(sd, p)
    state = read_state_dict(p)
    net = OFAResNetSupernet(infer_definition(state, p, image_size=32))
    with pytest.raises(ConfigError, match=rf"'{key}' has shape \[3, 3, 3, 3\]"):
        load_ofa_weights(net, state, p)
    torch.save({k: v for k, v in ofa_net.state_dict().items() if not k.startswith("input_stem.2.")}, p)
    with pytest.raises(ConfigError, match=r"not an OFAResNets checkpoint: no 'input_stem.2.conv.conv.weight'"):
        infer_definition(read_state_dict(p), p)
    with pytest.raises(ConfigError, match="multiples of 32"):
        build_supernet("ofa-resnet50", "ofa-resnet", 3, 48, 10)


def test_an_imported_ofa_resnet_compiles_to_an_int8_fp32_artifact_that_runs(pair, tmp_path, capsys):
    """The user's path for a once-for-all ResNet-50 checkpoint, as it is (no training): import at 32x32 (the
    wrong format refused by what the file holds), then the default compile passes on a subnet whose pooled
    shortcuts are INT8: INC's QDQ graph on ONNX Runtime and OpenVINO agrees with the simulation."""
    import onnx

    from bitnas.cli import main
    from bitnas.passes import AssignBitwidths, ExportOnnx, ExtractSubnet, IncStaticPtq, RecalibrateBn, Verify
    from bitnas.passes.inc_ptq import quantized_nodes
    from bitnas.pipeline import PassContext, Sequential
    from bitnas.project import Project

    ofa_net, ckpt = pair
    run = tmp_path / "r"
    assert main(["import-supernet", "--format", "ofa-mbv3", "--checkpoint", str(ckpt), "--out", str(run)]) == 2
    assert "--format ofa-mbv3, but the checkpoint holds an ofa-resnet supernet" in capsys.readouterr().err
    assert main(["import-supernet", "--format", "ofa-resnet", "--checkpoint", str(ckpt), "--out", str(run),
                 "--image-size", "32"]) == 0
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    assert cfg["family"] == {"name": "ofa-resnet", "space": "ofa-resnet50"} and cfg["train"]["epochs"] == 0
    project = Project.load(run)
    net, data = project.supernet(), project.data()
    ofa_net.set_max_net()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ofa_net.get_active_subnet(preserve_weight=True).eval()(x)
        got = net.extract(net.space.largest()).eval()(x)
    assert (got - want).abs().max().item() <= 1e-5
    c = net.space.smallest()
    policy = {n: ((8, 8) if n.endswith((".shortcut", ".conv3")) or n.startswith("stem") else (32, 32))
              for n in c.policy_dict}
    cand = net.space.make(c.arch_dict, policy)
    ctx = PassContext(workdir=tmp_path / "w", inputs={"supernet": net, "data": data})
    out = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                      Verify(backends=("ort", "openvino"), repeats=10, warmup=2, rounds=1)]).run(cand, ctx)
    int8 = {k for k, v in policy.items() if v == (8, 8)} & set(out.layers)
    assert {"s1.b0.shortcut", "s3.b0.shortcut", "stem.conv1"} <= int8
    assert quantized_nodes(onnx.load(str(out.path))) == int8
    for backend in ("ort", "openvino"):
        assert ctx.results["measured"][backend]["top1_agreement_vs_fakequant"] >= 0.9, ctx.results["measured"]
