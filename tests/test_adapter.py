"""A supernet written in plain PyTorch (not a bitnas family, not once-for-all) plugs in through the adapter:
``space`` and ``extract`` only; bitnas lifts the subnet, derives its layers from the graph, and takes it
to an artifact with no edit to bitnas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from bitnas.errors import ConfigError, UnknownLayerError, UserError
from bitnas.supernets.adapter import AdapterFamily, lift
from bitnas.supernets.graphcheck import check_family_layers, graph_layers
from tests.plugins import plainnet

REF = "tests.plugins.plainnet:SUPERNET"


def _adapted(obj=None):
    return AdapterFamily(obj if obj is not None else plainnet.PlainSupernet(), REF).build("plainnet", 1, 16, 10)


def test_lifted_subnets_compute_the_users_subnet_and_layers_come_from_the_graph():
    torch.manual_seed(0)
    user = plainnet.PlainSupernet().eval()
    net = _adapted(user)
    # one policy gene per quantizable layer of the largest subnet, named after its module path
    assert [g.name for g in net.space.policy_genes] == ["stem"] + [f"stages.{s}.{b}.conv{i}" for s in (0, 1)
                                                                   for b in (0, 1) for i in (1, 2)] + ["fc"]
    x = torch.randn(4, 1, 16, 16)
    rng = np.random.default_rng(0)
    for _ in range(6):
        c = net.space.sample(rng)
        lifted = net.extract(c)
        with torch.no_grad():
            ref = user.extract(c)(x)
            assert torch.allclose(lifted(x), ref, atol=1e-6)
            assert torch.allclose(user(x, c.arch_dict), ref, atol=1e-5)
        # each Conv2d takes its BatchNorm and activation; layer names are the module paths
        units = {u.layer_name: u for u in lifted.units()}
        assert units["stages.0.0.conv1"].act == "relu6" and units["stages.0.0.conv1"].bn is not None
        assert units["stem"].act == "relu" and units["fc"].act == "none"
        layers = net.layers(c)
        policy = c.policy_dict
        assert [s.name for s in layers] == list(units)
        assert all(s.bits == tuple(policy[s.name]) for s in layers)
        depth1 = c.arch_dict["s1.depth"]
        assert sum(s.residual for s in layers if s.name.startswith("stages.1.")) == depth1 - 1
    # memoized per architecture: the policy changes the bits, never triggers another export
    archs = len(net._layers)
    c = net.space.sample(np.random.default_rng(0))
    net.layers(net.space.make(c.arch_dict, {g.name: (8, 8) for g in net.space.policy_genes}))
    assert len(net._layers) == archs
    check_family_layers(net, samples=2)  # what profile runs first: layers() agree with every export
    specs = net.all_layer_specs()
    assert len({s.key for s in specs}) == len(specs) and all(s.bits == (32, 32) for s in specs)


class _Pooled(nn.Module):
    """Conv, ReLU, a pooling bitnas profiles (``pool``) and, with ``concat``, a Concat it does not."""

    def __init__(self, concat: bool = False):
        super().__init__()
        self.concat = concat
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(16 if concat else 8, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        if self.concat:
            x = torch.cat([x, x], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Adapter:
    """A minimal adapter: a space and an extract."""

    input_shape = (1, 16, 16)

    def __init__(self, make, layers=None):
        from bitnas.space import Gene, SearchSpace

        self.space = SearchSpace("tiny", [Gene("w", (8,))], "one subnet")
        self._make = make
        if layers is not None:
            self.layers = layers

    def extract(self, candidate):
        return self._make()


def test_pooling_is_a_layer_and_an_op_bitnas_cannot_profile_is_refused_naming_module_and_op(tmp_path):
    from bitnas.latency_luts.profiler import unit_model

    net = _adapted(_Adapter(_Pooled))
    layers = net.layers(net.space.largest())
    assert [(s.name, s.op, s.kernel, s.stride, s.hw) for s in layers] == [
        ("conv", "conv", 3, 1, 16), ("pool.maxpool", "maxpool", 3, 2, 16), ("fc", "linear", 1, 1, 8)]
    assert [g.name for g in net.space.policy_genes] == ["conv", "fc"]  # pooling has no weights to quantize
    unit_model([layers[1]])  # the profiler builds it
    with pytest.raises(UnknownLayerError, match=r"module '\(top level\)' computes Concat \(ONNX node /body/Concat\)"):
        _adapted(_Adapter(lambda: _Pooled(concat=True)))


def test_extract_that_is_not_a_traceable_module_is_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    with pytest.raises(UserError, match="torch.fx cannot trace Branchy"):
        lift(Branchy())
    with pytest.raises(UserError, match="returned dict, not a torch.nn.Module"):
        _adapted(_Adapter(dict))
    with pytest.raises(UnknownLayerError, match="conv '0' has dilation"):
        lift(nn.Sequential(nn.Conv2d(1, 4, 3, dilation=2)))


def test_a_hand_written_layers_is_checked_against_the_graph():
    from bitnas.space import FLOAT_BITS, LayerSpec

    def wrong(c):  # the stem conv's stride is 2 in this list, 1 in the module
        return [LayerSpec("conv", 1, 8, 3, 2, 1, 16, "relu", name="conv").with_bits(FLOAT_BITS),
                LayerSpec("linear", 8, 10, hw=8, name="fc").with_bits(FLOAT_BITS)]

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    adapter = _Adapter(Plain, layers=wrong)
    from bitnas.space import Gene, SearchSpace

    adapter.space = SearchSpace("tiny", [Gene("w", (8,)), Gene("conv", ((32, 32), (8, 8)), "policy"),
                                         Gene("fc", ((32, 32), (8, 8)), "policy")], "")
    net = _adapted(adapter)
    with pytest.raises(UserError, match="layer 'conv': layers\\(\\) says stride 2, the exported graph has 1"):
        check_family_layers(net, samples=0)
    assert [s.name for s in graph_layers_of(net)] == ["conv", "fc"]


def graph_layers_of(net):
    import tempfile

    from bitnas.passes.export_onnx import export_static

    with tempfile.TemporaryDirectory() as tmp:
        return graph_layers(export_static(net.extract(net.space.largest()), Path(tmp) / "m.onnx", (1, 16, 16)))


def test_pretrained_weights_load_weights_only_and_a_wrong_key_is_named(tmp_path):
    user = plainnet.PlainSupernet()
    net = _adapted(user)
    state = {k: v.clone() + 1 for k, v in user.state_dict().items()}
    good = tmp_path / "w.pt"
    torch.save(state, good)
    assert net.load_pretrained(good) == []
    assert torch.equal(user.stem.weight, state["stem.weight"])
    bad = tmp_path / "bad.pt"
    torch.save({**state, "stemm.weight": state["stem.weight"]}, bad)
    with pytest.raises(UserError, match="key 'stemm.weight' is not a parameter"):
        net.load_pretrained(bad)
    short = tmp_path / "short.pt"
    torch.save({**state, "fc.weight": state["fc.weight"][:5]}, short)
    with pytest.raises(UserError, match=r"'fc.weight' has shape \(5, 24\)"):
        net.load_pretrained(short)
    with pytest.raises(ConfigError, match="which bitnas does not train; set train.epochs: 0"):
        AdapterFamily(user, REF).train(net, None, type("S", (), {"epochs": 3, "init": None})())


def test_a_plain_pytorch_supernet_goes_to_a_verified_artifact(tmp_path, capsys):
    """The user's supernet, trained by the user's own loop, through profile, search, compile, verify, gate."""
    from bitnas.cli import main
    from bitnas.project import Project
    from tests.conftest import quick_compile_passes

    run = tmp_path / "run"
    run.mkdir()
    cfg = {"seed": 0, "family": {"name": REF, "space": "plainnet"}, "data": {"image_size": 16},
           "train": {"init": str(tmp_path / "weights.pt"), "epochs": 0},
           "lut": {"blocks": True, "warmup": 1, "repeats": 5, "rounds": 1},  # what profile measures by default
           "search": {"searcher": "random", "budget": 4, "pop_size": 4, "calib_batches": 1},
           "compile": {"passes": quick_compile_passes(["ort", "openvino"], 20)}}
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    data = Project.load(run / "project.yaml").data()
    user = plainnet.PlainSupernet()
    plainnet.train_sandwich(user, data.x_train, data.y_train, epochs=4)
    torch.save(user.state_dict(), tmp_path / "weights.pt")

    assert main(["train", "--project", str(run)]) == 0
    assert main(["profile", "--project", str(run)]) == 0
    measured = (run / "lut.json").read_bytes()
    lut = json.loads(measured)
    assert lut["space"] == "plainnet" and lut["blocks"]  # its blocks (conv1, conv2 of one module) measured whole
    assert lut["measurement"]["statistic"] == "median" and lut["measurement"]["repeats"] == 5
    assert main(["search", "--project", str(run)]) == 0
    assert (run / "lut.json").read_bytes() == measured  # profiled with the project's settings: reused as it is
    assert main(["compile", "--project", str(run), "--pick", "knee"]) == 0
    (art,) = list((run / "artifacts").iterdir())
    man = json.loads((art / "manifest.json").read_text())
    assert man["family"]["space"] == "plainnet"
    for b in ("ort", "openvino"):
        assert man["measured"][b]["top1_agreement_vs_fakequant"] >= 0.99, man["measured"][b]
        assert man["measured"][b]["accuracy"] > 0.5
    assert main(["verify", str(art)]) == 0
    assert main(["gate", "--baseline", str(art / "manifest.json"), "--current", str(art / "manifest.json")]) == 0

    # raw images run as the manifest's preprocessing says: the data set's raw digits and 8-bit PNG files
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    assert man["preprocess"]["resize"] == [16, 16] and man["preprocess"]["raw_scale"] == 16.0
    bunch = sk_digits()
    _, raw_val = train_test_split(bunch.images, test_size=0.2, random_state=0, stratify=bunch.target)
    np.save(tmp_path / "raw.npy", raw_val[:8])
    np.save(tmp_path / "ready.npy", data.x_val[:8])
    pngs = []
    for i in range(8):
        pngs.append(str(tmp_path / f"d{i}.png"))
        Image.fromarray(np.round(raw_val[i] * 255 / 16).astype(np.uint8)).save(pngs[-1])
    capsys.readouterr()
    results = []
    for args in (["--input", str(tmp_path / "ready.npy")], ["--image", str(tmp_path / "raw.npy")],
                 ["--image", *pngs]):
        assert main(["run", str(art), *args, "--logits"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    ready, raw, png = (np.array(r["logits"]) for r in results)
    np.testing.assert_allclose(raw, ready, atol=1e-4)
    assert np.abs(png - ready).max() < 0.05 * (np.abs(ready).max())  # 8-bit rounding of 17 grey levels


def test_epochs_zero_needs_weights_unless_the_adapter_brings_them(tmp_path):
    from bitnas.project import Project, ProjectConfig

    with pytest.raises(ConfigError, match="train.epochs': 0 trains nothing"):
        Project(ProjectConfig.model_validate({"train": {"epochs": 0}}), tmp_path / "a")
    p = Project(ProjectConfig.model_validate({"family": {"name": REF, "space": "plainnet"},
                                              "train": {"epochs": 0}}), tmp_path / "b")
    assert p.family.name == REF and p.family.pretrained


def test_preprocess_record_reproduces_the_data_sets_arrays_from_raw_images():
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    from bitnas.supernets.data import Preprocess, load_digits, with_channels

    data = with_channels(load_digits(image_size=24), 3, "test")
    bunch = sk_digits()
    _, raw_val = train_test_split(bunch.images, test_size=0.2, random_state=0, stratify=bunch.target)
    pre = Preprocess.from_dict(data.preprocess.to_dict(), "manifest")
    assert pre.channels == 3 and pre.size == 24 and pre.raw_scale == 16.0
    np.testing.assert_allclose(pre.apply(raw_val), data.x_val, atol=1e-5)
    np.testing.assert_allclose(pre.apply(raw_val[3]), data.x_val[3:4], atol=1e-5)  # one (H,W) image
    with pytest.raises(Exception, match="malformed 'preprocess'"):
        Preprocess.from_dict({"raw_scale": 16}, "manifest.json")


def test_a_users_residual_adds_run_quantized_and_the_simulation_quantizes_them_too(tmp_path):
    """The user's ``x + y`` (traced, not a bitnas block): an all-INT8 artifact runs each Add a conv reads as
    ONNX Runtime's QLinearAdd, and agrees with the lifted net's simulated quantization, which quantizes it so."""
    import onnx

    from bitnas.passes import AssignBitwidths, ExportOnnx, ExtractSubnet, IncStaticPtq, RecalibrateBn, Verify
    from bitnas.pipeline import PassContext, Sequential
    from bitnas.supernets.data import load_digits
    from bitnas.supernets.static import AddRequant

    torch.manual_seed(0)
    data = load_digits(image_size=16)
    user = plainnet.PlainSupernet()
    plainnet.train_sandwich(user, data.x_train, data.y_train, epochs=2)
    net = _adapted(user.eval())
    c = net.space.largest()
    cand = net.space.make(c.arch_dict, {g.name: (8, 8) for g in net.space.policy_genes})
    lifted = net.extract(cand)
    requants = [m for m in lifted.modules() if isinstance(m, AddRequant)]
    # each stage's second block adds its input: stage 0's sum is read by stage 1's first conv (quantized),
    # stage 1's by the pooling (left float)
    assert [[u.layer_name for u in m.__dict__["_readers"]] for m in requants] == [["stages.1.0.conv1"]]
    ctx = PassContext(workdir=tmp_path, inputs={"supernet": net, "data": data})
    out = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                      Verify(backends=("ort",), repeats=10, warmup=1, rounds=1)]).run(cand, ctx)
    assert ctx.results["quantization"]["quantized_adds"] == 1
    assert sum(n.op_type == "Add" for n in onnx.load(str(out.path)).graph.node) == 2
    m = ctx.results["measured"]["ort"]
    assert m["top1_agreement_vs_fakequant"] >= 0.99 and m["mean_abs_logit_error_vs_fakequant"] < 0.02, m
