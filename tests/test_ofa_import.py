"""once-for-all checkpoints (OFAMobileNetV3, OFAProxylessNASNets) read natively: every subnet computes what
the real ``ofa`` package's ``set_active_subnet`` + ``get_active_subnet(preserve_weight=True)`` computes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bitnas.errors import ConfigError, UserError
from bitnas.supernets.families import build_supernet
from bitnas.supernets.ofa import OFASupernet, infer_definition, load_ofa_weights, read_state_dict
from tests.ofa_stub import ofa_networks


def _random_ofa(width: float, n_classes: int, seed: int, kind: str = "mbv3"):
    """An ofa-built supernet with random weights, BN statistics and kernel transformation matrices."""
    networks = ofa_networks()
    torch.manual_seed(seed)
    cls = networks.OFAMobileNetV3 if kind == "mbv3" else networks.OFAProxylessNASNets
    net = cls(n_classes=n_classes, width_mult=width, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
              depth_list=[2, 3, 4])
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith("bn.bias") or "_matrix" in name:
                t.add_(torch.randn_like(t) * 0.1)
            elif name.endswith("bn.weight") or name.endswith("bn.bn.weight"):
                t.uniform_(0.5, 1.5)
    return net.eval()


def _candidate(space, setting: dict, rng):
    """The bitnas candidate of an ofa ``sample_active_subnet`` setting (ks/e per block, d per stage)."""
    arch = {}
    names = {g.name for g in space.genes}
    for s, d in enumerate(setting["d"]):
        if f"s{s}.depth" in names:
            arch[f"s{s}.depth"] = d
        else:  # a fixed one-block stage
            d = 1
        for b in range(d):
            arch[f"s{s}.b{b}.kernel"] = setting["ks"][s * 4 + b]
            arch[f"s{s}.b{b}.expand"] = setting["e"][s * 4 + b]
    policy = {g.name: g.options[rng.integers(len(g.options))] for g in space.policy_genes}
    return space.make(arch, policy)


@pytest.fixture(scope="module", params=[("mbv3", 1.0), ("mbv3", 1.2), ("proxyless", 1.3)],
                ids=["mbv3-w1.0", "mbv3-w1.2", "proxyless-w1.3"])
def pair(request, tmp_path_factory):
    kind, width = request.param
    ofa_net = _random_ofa(width, 10, seed=int(width * 10), kind=kind)
    path = tmp_path_factory.mktemp("ofa") / f"ofa_{kind}_d234_e346_k357_w{width}.pth"
    torch.save({"state_dict": ofa_net.state_dict()}, path)
    return ofa_net, path


def test_the_supernet_has_ofas_state_dict_keys_and_shapes(pair):
    ofa_net, path = pair
    d = infer_definition(read_state_dict(path), path, image_size=32)
    ours = OFASupernet(d).state_dict()
    theirs = ofa_net.state_dict()
    assert list(ours) == list(theirs)
    assert all(tuple(ours[k].shape) == tuple(theirs[k].shape) for k in ours)
    assert (d.width_mult, d.kernels, d.expands, d.depths, d.num_classes) == (
        ofa_net.width_mult, (3, 5, 7), (3, 4, 6), (2, 3, 4), 10)


@pytest.mark.parametrize("size", [32, 224])
def test_twenty_subnets_match_ofa_get_active_subnet(pair, size):
    import random

    ofa_net, path = pair
    state = read_state_dict(path)
    net = OFASupernet(infer_definition(state, path, image_size=size))
    load_ofa_weights(net, state, path)
    net.eval()
    random.seed(size)
    rng = np.random.default_rng(size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    worst, scale = 0.0, 0.0
    for _ in range(20):
        setting = ofa_net.sample_active_subnet()
        sub = ofa_net.get_active_subnet(preserve_weight=True).eval()
        c = _candidate(net.space, setting, rng)
        with torch.no_grad():
            want = sub(x)
            got = net.extract(c).eval()(x)
            dyn = net(x, c)
        worst = max(worst, (got - want).abs().max().item(), (dyn - want).abs().max().item())
        scale = max(scale, want.abs().max().item())
    assert worst <= 1e-5 and worst <= 1e-4 * scale, (worst, scale)


def test_the_layer_list_is_what_the_exported_graph_computes(pair):
    from bitnas.supernets.graphcheck import check_family_layers

    _, path = pair
    state = read_state_dict(path)
    net = OFASupernet(infer_definition(state, path, image_size=32))
    check_family_layers(net, samples=2)
    want = {2, 3, 4} if net.d.kind == "mbv3" else {2, 3}  # first block, plain (and SE) blocks
    assert {len(u) for u in net.fusion_units()} == want


def test_released_key_spellings_load(pair, tmp_path):
    """ofa's released checkpoints spell some keys differently (``mobile_inverted_conv``, ``.bn.`` for
    ``.bn.bn.``); they load to the same weights."""
    ofa_net, path = pair
    old = {k.replace(".conv.", ".mobile_inverted_conv.", 1) if k.startswith("blocks.") else k: v
           for k, v in ofa_net.state_dict().items()}
    old = {k.replace(".bn.bn.", ".bn."): v for k, v in old.items()}
    p = tmp_path / path.name
    torch.save({"state_dict": old}, p)
    a, b = OFASupernet(infer_definition(read_state_dict(path), path)), OFASupernet(
        infer_definition(read_state_dict(p), p))
    load_ofa_weights(a, read_state_dict(path), path)
    load_ofa_weights(b, read_state_dict(p), p)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_key(pair, tmp_path):
    ofa_net, path = pair
    sd = ofa_net.state_dict()
    bad = dict(sd)
    key = "blocks.3.conv.point_linear.conv.conv.weight"
    bad[key] = torch.zeros(3, 3, 1, 1)
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    state = read_state_dict(p)
    net = OFASupernet(infer_definition(state, p))
    with pytest.raises(ConfigError, match=rf"bad.pth: '{key}' has shape \[3, 3, 1, 1\]"):
        load_ofa_weights(net, state, p)
    missing = {k: v for k, v in sd.items() if "blocks.7.conv.depth_conv.bn" not in k}
    torch.save(missing, p)
    with pytest.raises(ConfigError, match=r"no 'blocks.7.conv.depth_conv.bn.bn.weight'"):
        load_ofa_weights(net, read_state_dict(p), p)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_with_code_is_refused(tmp_path, capsys):
    p = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0.pth"
    with open(p, "wb") as f:
        pickle.dump({"state_dict": {"first_conv.conv.weight": _Payload()}}, f)
    with pytest.raises(UserError, match="not a readable weights-only once-for-all checkpoint"):
        read_state_dict(p)
    assert "code ran" not in capsys.readouterr().out


def test_the_family_builds_the_released_spaces():
    for space, width in (("ofa-mbv3-w1.0", 16), ("ofa-mbv3-w1.2", 24), ("ofa-proxyless-w1.3", 40)):
        net = build_supernet(space, None, 3, 32, 10)
        assert net.first_conv.conv.weight.shape[0] == width


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for fine-tuning: on a shared two-core machine a second one mostly waits (with another
    process running, an epoch took 1.2-2x as long with two, once 8x); the accuracies asserted are calibrated
    with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_an_ofa_checkpoint_goes_through_import_profile_search_compile_verify_gate(tmp_path, capsys,
                                                                                   one_torch_thread):
    """The user's path: an ofa-built OFAMobileNetV3 w1.0 (random weights, 10 classes), imported, fine-tuned
    for an epoch on digits at 32x32, profiled on ONNX Runtime, searched (arch + INT8/FP32 per layer), compiled,
    verified on ONNX Runtime and OpenVINO, and gated (``test_family_cli`` runs the same blocks, SE and h-swish,
    on TVM too)."""
    import json

    import yaml

    from bitnas.cli import main
    from tests.conftest import cli_train_to_artifact, quick_compile_passes

    ofa_net = _random_ofa(1.0, 10, seed=3)
    ckpt = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0.pth"
    torch.save({"state_dict": ofa_net.state_dict()}, ckpt)
    run = tmp_path / "ofa"
    assert main(["import-supernet", "--format", "ofa-mbv3", "--checkpoint", str(ckpt), "--out", str(run),
                 "--image-size", "32", "--epochs", "1"]) == 0
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    assert cfg["family"] == {"name": "ofa-mbv3", "space": "ofa-mbv3-w1.0"} and cfg["data"]["channels"] == 3
    # one epoch from random weights in small batches (45 steps), the random subnets (what the search scores and
    # compiles) learning from the labels, not from a largest subnet that is no teacher yet: subnets at 0.74-0.87
    # (3 epochs of 64 with distillation: ~0.75)
    cfg["train"].update({"n_random": 1, "lr": 0.2, "batch_size": 32, "distill": False})
    # measured with the settings of the profile below, so the search reuses that LUT instead of measuring again
    cfg["lut"] = {**(cfg.get("lut") or {}), "warmup": 1, "repeats": 5, "rounds": 1, "statistic": "p10"}
    cfg["search"].update({"searcher": "random", "budget": 3, "pop_size": 3, "calib_batches": 2})
    cfg["compile"]["passes"] = quick_compile_passes(["ort", "openvino"], 10)
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    art, man = cli_train_to_artifact(run, repeats=5)
    err = capsys.readouterr().err
    assert "LUT: reusing" in err and "LUT: not reusing" not in err  # the space was profiled once
    train = json.loads((run / "train.json").read_text())
    assert train["settings"]["init"] and len(train["history"]) == 1
    assert train["history"][-1]["acc_largest"] > 0.8  # fine-tuned: accuracy means something (random: ~0.1)
    assert man["family"] == {"name": "ofa-mbv3", "space": "ofa-mbv3-w1.0"}
    for b in ("ort", "openvino"):
        # 20 blocks of mixed INT8/FP32 after one epoch (val accuracy ~0.8): the simulation and INC's QDQ
        # graph differ by up to ~0.5 logits at precision switches (uniform INT8 agrees on 99.7%)
        assert man["measured"][b]["top1_agreement_vs_fakequant"] >= 0.95, (b, man["measured"][b])
        assert man["measured"][b]["accuracy"] > 0.5, (b, man["measured"][b])
    assert main(["verify", str(art), "--backend", "ort"]) == 0  # checksums, then a run
    assert main(["gate", "--baseline", str(art / "manifest.json"), "--current", str(art / "manifest.json")]) == 0


def test_the_lut_enumeration_covers_every_subnet():
    from bitnas.latency_luts.lut import group_units
    from bitnas.space import FLOAT_BITS

    net = build_supernet("ofa-mbv3-w1.0", "ofa-mbv3", 3, 32, 10)
    specs = {s.key for s in net.all_layer_specs()}
    units = {tuple(s.key for s in u) for u in net.fusion_units()}
    rng = np.random.default_rng(0)
    for _ in range(50):
        layers = [s.with_bits(FLOAT_BITS) for s in net.layers(net.space.sample(rng))]
        assert {s.key for s in layers} <= specs
        assert all(tuple(s.key for s in u) in units for u in group_units(layers) if len(u) > 1)


def test_import_refuses_the_wrong_format_and_uses_the_weights_as_they_are(tmp_path, capsys):
    """``import-supernet`` with ``--epochs 0``: the project's supernet is the checkpoint's (no training), and a
    ProxylessNAS supernet goes through profile, search and compile as it is."""
    import json

    import yaml

    from bitnas.cli import main
    from bitnas.project import Project
    from tests.conftest import quick_compile_passes

    ofa_net = _random_ofa(1.3, 10, seed=5, kind="proxyless")
    ckpt = tmp_path / "ofa_proxyless_d234_e346_k357_w1.3.pth"
    torch.save({"state_dict": ofa_net.state_dict()}, ckpt)
    run = tmp_path / "p"
    assert main(["import-supernet", "--format", "ofa-mbv3", "--checkpoint", str(ckpt), "--out", str(run)]) == 2
    assert "holds an ofa-proxyless supernet" in capsys.readouterr().err
    assert main(["import-supernet", "--format", "ofa-proxyless", "--checkpoint", str(ckpt), "--out", str(run),
                 "--image-size", "32"]) == 0
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    assert cfg["family"] == {"name": "ofa-proxyless", "space": "ofa-proxyless-w1.3"} and cfg["train"]["epochs"] == 0
    net = Project.load(run).supernet()
    ofa_net.set_max_net()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ofa_net.get_active_subnet(preserve_weight=True).eval()(x)
        got = net.extract(net.space.largest()).eval()(x)
    assert (got - want).abs().max().item() <= 1e-5
    # and on, as it is, through profile, a latency/size search (LUT only), compile, verify and gate
    cfg["search"] = {"searcher": "random", "budget": 4, "pop_size": 4, "objectives": ["latency_ms", "size_bytes"]}
    cfg["compile"] = {"passes": quick_compile_passes(["ort"], 10)}
    cfg["lut"] = {**(cfg.get("lut") or {}), "warmup": 1, "repeats": 5, "rounds": 1, "statistic": "p10"}  # profiled
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["profile", "--project", str(run), "--no-blocks", "--repeats", "5", "--rounds", "1",
                 "--warmup", "1"]) == 0
    capsys.readouterr()
    assert main(["search", "--project", str(run)]) == 0
    assert "LUT: reusing" in capsys.readouterr().err  # the search uses the profile's LUT
    assert main(["compile", "--project", str(run), "--pick", "knee"]) == 0
    (art,) = list((run / "artifacts").iterdir())
    man = json.loads((art / "manifest.json").read_text())
    assert man["family"] == {"name": "ofa-proxyless", "space": "ofa-proxyless-w1.3"}
    assert man["predicted"]["latency_ms"] > 0 and "ort" in man["measured"]
    assert main(["verify", str(art), "--backend", "ort", "openvino"]) == 0
    assert main(["gate", "--baseline", str(art / "manifest.json"), "--current", str(art / "manifest.json")]) == 0


def test_a_head_for_other_classes_needs_fine_tuning(tmp_path):
    from bitnas.cli import main
    from bitnas.errors import ConfigError
    from bitnas.project import Project

    ckpt = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0.pth"
    torch.save({"state_dict": _random_ofa(1.0, 5, seed=7).state_dict()}, ckpt)  # 5 classes, digits has 10
    run = tmp_path / "p"
    assert main(["import-supernet", "--format", "ofa-mbv3", "--checkpoint", str(ckpt), "--out", str(run),
                 "--image-size", "32"]) == 0
    with pytest.raises(ConfigError, match=r"train.epochs is 0, but .*classifier for 5 classes left out"):
        Project.load(run).supernet()
