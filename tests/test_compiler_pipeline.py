"""The cached pass pipeline, QAFT, sub-byte weights, the second PTQ engine, compile and gate commands."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bitnas.api import TARGETS
from bitnas.backends import get_backend
from bitnas.cache import PassCache
from bitnas.cli import main
from bitnas.errors import ConfigError
from bitnas.gate import Tolerance, compare, load_figures
from bitnas.passes import (
    AssignBitwidths,
    Compact,
    ExportOnnx,
    ExtractSubnet,
    IncStaticPtq,
    OrtStaticPtq,
    Package,
    Qaft,
    RecalibrateBn,
    SubByteWeights,
    Verify,
)
from bitnas.passes.inc_ptq import quantized_nodes
from bitnas.passes.verify import run_batched
from bitnas.pipeline import PassContext, Sequential
from bitnas.supernets.mbv2 import MBV2Supernet, mbv2_tiny

FAST_VERIFY = {"repeats": 20, "warmup": 2, "rounds": 2}


@pytest.fixture(scope="module")
def subbyte_net(trained):
    """The trained supernet with a space that also offers 4- and 2-bit weights."""
    net = MBV2Supernet(mbv2_tiny(bit_options=((32, 32), (8, 8), (4, 8), (2, 8))))
    net.load_state_dict(trained.state_dict())
    return net.eval()


def _ctx(tmp_path, net, data, cache=None):
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    return PassContext(workdir=work, inputs={"supernet": net, "data": data}, cache=cache, env={"test": 1})


def _pipeline(qaft_lr=1e-3):
    return Sequential([ExtractSubnet(), RecalibrateBn(), Qaft(epochs=1, lr=qaft_lr), ExportOnnx(), AssignBitwidths(),
                       IncStaticPtq(), Verify(backends=("ort",), **FAST_VERIFY), Package()])


def test_rerun_with_only_qaft_changed_reruns_qaft_and_what_follows(trained, digits, tmp_path, monkeypatch):
    cand = trained.space.smallest(policy_bits=(8, 8))
    cache = PassCache(tmp_path / "cache")

    def run(lr):
        ctx = _ctx(tmp_path, trained, digits, cache)
        art = _pipeline(lr).run(cand, ctx)
        return {t.name: t.cached for t in ctx.timings}, art

    first, art1 = run(1e-3)
    assert not any(first.values())
    again, art2 = run(1e-3)
    assert again == {**{k: True for k in first}, "Package": False}
    assert art2.manifest["measured"] == art1.manifest["measured"]  # restored with the cached Verify
    changed, _ = run(2e-3)
    assert changed["ExtractSubnet"] and changed["RecalibrateBn"]
    assert not any(changed[k] for k in ("Qaft", "ExportOnnx", "AssignBitwidths", "IncStaticPtq", "Verify"))
    # a pass that now writes something else for the same input (a new revision) is not served its old output
    monkeypatch.setattr(IncStaticPtq, "revision", IncStaticPtq.revision + 1)
    revised, _ = run(2e-3)
    assert all(revised[k] for k in ("ExtractSubnet", "RecalibrateBn", "Qaft", "ExportOnnx", "AssignBitwidths"))
    assert not revised["IncStaticPtq"]  # (it writes the same file here, so Verify's cached result still holds)


def test_qaft_returns_a_float_net_with_tuned_weights(trained, digits, tmp_path):
    cand = trained.space.smallest(policy_bits=(8, 8))
    ctx = _ctx(tmp_path, trained, digits)
    ctx.inputs["candidate"] = cand
    net = RecalibrateBn().run(ExtractSubnet().run(cand, ctx), ctx)
    tuned = Qaft(epochs=1).run(net, ctx)
    assert all(u.in_q is None and u.w_bits == 32 for u in tuned.units())
    before = torch.cat([p.flatten() for p in net.parameters()])
    assert not torch.allclose(before[:10], before[:10] * 0)  # sanity: real weights
    x = torch.from_numpy(digits.x_val[:8])
    with torch.no_grad():
        assert not torch.allclose(tuned(x), net(x), atol=1e-4)


def test_four_bit_weights_make_a_much_smaller_artifact_that_runs(subbyte_net, digits, tmp_path):
    sizes, arts = {}, {}
    for bits in ((8, 8), (4, 8)):
        cand = subbyte_net.space.largest(policy_bits=bits)
        ctx = _ctx(tmp_path / f"w{bits[0]}", subbyte_net, digits)
        arts[bits] = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                                 SubByteWeights(), Compact(), Verify(backends=("ort", "openvino"), **FAST_VERIFY),
                                 Package()]).run(cand, ctx)
        sizes[bits] = arts[bits].model_path.stat().st_size
    assert sizes[(8, 8)] / sizes[(4, 8)] >= 1.8
    model = onnx.load(str(arts[(4, 8)].model_path))
    int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) == len(arts[(4, 8)].manifest["model"]["layers"])
    m = arts[(4, 8)].manifest["measured"]
    for b in ("ort", "openvino"):
        assert m[b]["top1_agreement_vs_fakequant"] >= 0.99
        assert m[b]["accuracy"] >= m[b]["accuracy_fp32"] - 0.08  # 4-bit PTQ, no fine-tuning


def test_int8_storage_fallback_confines_values_to_the_policy_range(subbyte_net, digits, tmp_path):
    cand = subbyte_net.space.largest(policy_bits=(2, 8))
    ctx = _ctx(tmp_path, subbyte_net, digits)
    out = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                      SubByteWeights(storage="int8")]).run(cand, ctx)
    model = onnx.load(str(out.path))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            w = onnx.numpy_helper.to_array(inits[producers[node.input[1]].input[0]])
            assert w.dtype == np.int8 and w.min() >= -1 and w.max() <= 1
    for name in ("ort", "tvm"):  # INT8 storage is what TVM can read
        backend = get_backend(name)
        y = run_batched(backend, backend.compile(out.path), digits.x_val[:4])
        assert y.shape == (4, 10)


def test_ort_engine_quantizes_the_same_nodes_and_agrees_with_inc(trained, digits, tmp_path):
    c = trained.space.largest()
    names = [s.name for s in trained.layers(c)]
    cand = trained.space.make(c.arch_dict, {n: ((8, 8) if i % 3 else (32, 32)) for i, n in enumerate(names)})
    preds = {}
    for engine in (IncStaticPtq, OrtStaticPtq):
        ctx = _ctx(tmp_path / engine.__name__, trained, digits)
        out = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), engine()]).run(cand, ctx)
        model = onnx.load(str(out.path))
        assert quantized_nodes(model) == {n for i, n in enumerate(names) if i % 3}
        assert ctx.results["quantization"]["engine"] in ("onnx-neural-compressor", "onnxruntime")
        preds[engine.__name__] = get_backend("ort").compile(out.path)({"input": digits.x_val})[0].argmax(1)
    assert (preds["IncStaticPtq"] == preds["OrtStaticPtq"]).mean() >= 0.99


def test_compile_config_errors_name_the_pass_and_key(tmp_path):
    from bitnas.project import Project

    def load(passes):
        path = tmp_path / "c.yaml"
        path.write_text(json.dumps({"compile": {"passes": passes}}))
        return Project.load(path)

    with pytest.raises(ConfigError, match=r"c.yaml: compile.passes\[1\]: unknown pass 'Nope'"):
        load(["ExtractSubnet", "Nope"])
    with pytest.raises(ConfigError, match=r"c.yaml: compile.passes\[0\] Qaft: unknown key 'epoch'"):
        load([{"Qaft": {"epoch": 2}}])
    with pytest.raises(ConfigError, match=r"compile.passes\[0\] Qaft: key 'epochs'"):
        load([{"Qaft": {"epochs": -1}}])
    # a valid list builds each pass with its typed config; Verify runs on the target's runtimes by default
    pipeline = load(["ExtractSubnet", {"Qaft": {"epochs": 2}}, "Verify"]).pipeline
    assert [type(p).__name__ for p in pipeline.passes] == ["ExtractSubnet", "Qaft", "Verify"]
    assert pipeline.passes[1].config.epochs == 2
    assert tuple(pipeline.passes[2].config.backends) == TARGETS.get("ort-cpu").verify_backends


# ------------------------------------------------------------------------------------------------ gate
@pytest.fixture(scope="module")
def gated(trained, digits, tmp_path_factory):
    """One artifact, then a clean re-measurement of the very same model files."""
    tmp = tmp_path_factory.mktemp("gate")
    cand = trained.space.smallest(policy_bits=(8, 8))
    ctx = _ctx(tmp / "a", trained, digits)
    # TVM's ratio moved by up to 40% between two compiles of the same model here, so it is not gated
    verify = Verify(backends=("ort", "openvino"), repeats=200, warmup=10, rounds=10)
    art = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(), verify,
                      Package()]).run(cand, ctx)
    ctx2 = _ctx(tmp / "b", trained, digits)
    ctx2.results = {k: v for k, v in ctx.results.items() if k != "measured"}
    ctx2.inputs.update(ctx.inputs)
    from bitnas.passes.export_onnx import OnnxModel

    model = OnnxModel(path=art.model_path, layers=art.manifest["model"]["layers"], float_path=ctx.workdir / "fp32.onnx")
    again = Package().run(verify.run(model, ctx2), ctx2)
    return art, again


def test_gate_passes_a_clean_rerun_and_fails_a_planted_regression(gated, tmp_path, capsys):
    art, again = gated
    base = art.root / "manifest.json"
    assert main(["gate", "--baseline", str(base), "--current", str(again.root / "manifest.json")]) == 0
    slow = json.loads(base.read_text())
    for b in ("ort", "openvino"):
        slow["measured"][b]["latency_ms"] *= 1.2
        slow["measured"][b]["latency_ratio_to_fp32"] *= 1.2
    planted = tmp_path / "slow.json"
    planted.write_text(json.dumps(slow))
    capsys.readouterr()
    assert main(["gate", "--baseline", str(base), "--current", str(planted)]) == 1
    captured = capsys.readouterr()
    assert "ort latency / fp32" in captured.err and "REGRESSED" in captured.err


def test_gate_checks_size_and_accuracy():
    base = {"candidate": "a", "size": 1000.0, "accuracy": {"ort": 0.95}, "ratio": {"ort": 1.0}}
    ok = compare(base, {**base, "size": 1010.0, "accuracy": {"ort": 0.945}})
    assert not any(c.regressed for c in ok)
    bad = compare(base, {**base, "size": 1100.0, "accuracy": {"ort": 0.90}}, Tolerance())
    assert {c.what for c in bad if c.regressed} == {"size on disk (bytes)", "ort accuracy"}


def test_gate_fails_closed_on_what_it_cannot_compare(gated, tmp_path, capsys):
    import shutil

    art, again = gated
    base = str(art.root / "manifest.json")
    good = json.loads((again.root / "manifest.json").read_text())

    def gate(manifest: dict, *extra: str) -> tuple[int, str]:
        path = tmp_path / "current.json"
        path.write_text(json.dumps(manifest).replace('"NaN_"', "NaN"))
        capsys.readouterr()
        code = main(["gate", "--baseline", base, "--current", str(path), *extra])
        return code, capsys.readouterr().err

    nan = json.loads(json.dumps(good))
    nan["measured"]["ort"]["latency_ratio_to_fp32"] = "NaN_"  # a real JSON NaN once written
    code, err = gate(nan)
    assert code == 2 and "'measured.ort.latency_ratio_to_fp32' is nan" in err
    code, err = gate({**good, "size_bytes_on_disk": -5})
    assert code == 2 and "'size_bytes_on_disk' is -5" in err
    flag = json.loads(json.dumps(good))
    flag["measured"]["openvino"]["accuracy"] = True
    code, err = gate(flag)
    assert code == 2 and "'measured.openvino.accuracy' is True" in err
    dropped = json.loads(json.dumps(good))
    del dropped["measured"]["openvino"]
    code, err = gate(dropped)
    assert code == 1 and "openvino measured" in err  # a backend the baseline has is missing: not a pass
    code, err = gate(good, "--latency-tol", "nan")
    assert code == 2 and "--latency-tol is nan" in err
    # beside its artifact, a manifest's files must be the ones it measured
    copy = tmp_path / "art"
    shutil.copytree(again.root, copy)
    assert main(["gate", "--baseline", base, "--current", str(copy / "manifest.json")]) == 0
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    capsys.readouterr()
    assert main(["gate", "--baseline", base, "--current", str(copy / "manifest.json")]) == 2
    assert "model.onnx: sha256 does not match" in capsys.readouterr().err


def test_gate_input_errors_name_the_file(gated, tmp_path, capsys):
    art, _ = gated
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["gate", "--baseline", str(art.root / "manifest.json"), "--current", str(bad)]) == 2
    assert "bad.json: no 'measured' section" in capsys.readouterr().err
    assert main(["gate", "--baseline", str(tmp_path / "none.json"), "--current", str(bad)]) == 2
    assert "none.json: file not found" in capsys.readouterr().err
    with pytest.raises(Exception, match="not valid JSON"):
        bad.write_text("{")
        load_figures(bad)


def test_compile_command_on_a_demo_folder(demo_run, tmp_path, capsys):
    """`bitnas compile --project` on a copy of the quick demo's run folder; the second run is served from the
    pass cache."""
    summary, out = demo_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    assert main(["compile", "--project", str(run), "--out", str(tmp_path / "c")]) == 0
    man = json.loads((tmp_path / "c" / summary["candidate"] / "manifest.json").read_text())
    demo_man = json.loads((Path(summary["artifact"]) / "manifest.json").read_text())
    assert man["candidate"]["id"] == demo_man["candidate"]["id"] == summary["candidate"]
    assert [p["name"] for p in man["passes"]][:3] == ["ExtractSubnet", "RecalibrateBn", "Qaft"]
    assert main(["compile", "--project", str(run / "project.yaml"), "--out", str(tmp_path / "c2")]) == 0
    out_text = capsys.readouterr()
    assert "yes" in out_text.err or "yes" in out_text.out
    assert (tmp_path / "c2" / summary["candidate"] / "model.onnx").is_file()
    assert main(["compile", "--project", str(run), "--pick", "nope", "--out", str(tmp_path / "c3")]) == 2
    assert "no candidate with id 'nope'" in capsys.readouterr().err
    assert main(["compile", "--project", str(tmp_path / "missing"), "--out", str(tmp_path / "c4")]) == 2
    assert "project file not found" in capsys.readouterr().err
    # a candidate file (a manifest, as the CI gate passes) compiles that candidate without a search pick
    assert main(["compile", "--project", str(run), "--candidate", str(Path(summary["artifact"]) / "manifest.json"),
                 "--out", str(tmp_path / "c5")]) == 0
    again = json.loads((tmp_path / "c5" / summary["candidate"] / "manifest.json").read_text())
    assert again["candidate"] == demo_man["candidate"]


def _with_output_op(src: Path, dst: Path, op: str, value: np.ndarray) -> Path:
    """A copy of ``src`` whose logits pass through ``op`` with a constant (a planted fault)."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0].name
    for n in model.graph.node:
        n.output[:] = ["pre_fault" if o == out else o for o in n.output]
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), "fault"))
    model.graph.node.append(helper.make_node(op, ["pre_fault", "fault"], [out], name="fault"))
    onnx.save(model, str(dst))
    return dst


def test_verify_fails_on_non_finite_outputs_and_below_its_accuracy_floor(gated, trained, digits, tmp_path):
    from bitnas.errors import VerificationError
    from bitnas.passes.export_onnx import OnnxModel

    art, _ = gated
    layers = art.manifest["model"]["layers"]
    ctx = _ctx(tmp_path, trained, digits)
    nan = np.zeros(10)
    nan[3] = np.nan
    broken = _with_output_op(art.model_path, tmp_path / "nan.onnx", "Add", nan)
    with pytest.raises(VerificationError, match=r"nan.onnx: the artifact gives non-finite outputs on ort for 360 of 360"):
        Verify(backends=("ort",), repeats=10).run(OnnxModel(broken, layers, art.model_path), ctx)
    # an accuracy floor relative to the FP32 export: the artifact against itself passes; one that always
    # answers class 0 (finite, wrong) fails it
    Verify(backends=("ort",), repeats=10, max_accuracy_drop=0.0).run(
        OnnxModel(art.model_path, layers, art.model_path), ctx)
    bias = np.zeros(10)
    bias[0] = 1e6
    constant = _with_output_op(art.model_path, tmp_path / "class0.onnx", "Add", bias)
    with pytest.raises(VerificationError, match=r"class0.onnx: accuracy on ort is 0\.\d+, 0\.\d+ below the FP32"):
        Verify(backends=("ort",), repeats=10, max_accuracy_drop=0.2).run(
            OnnxModel(constant, layers, art.model_path), ctx)
