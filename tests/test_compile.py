import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bitnas.api import PASSES
from bitnas.artifact import Artifact, write_artifact
from bitnas.errors import ArtifactError, UserError
from bitnas.fingerprint import has_vnni
from bitnas.onnxio import load_onnx
from bitnas.passes import (
    AssignBitwidths,
    Compact,
    ExportOnnx,
    ExtractSubnet,
    IncStaticPtq,
    Package,
    RecalibrateBn,
    Verify,
)
from bitnas.passes.assign_bits import read_layer_bits
from bitnas.passes.inc_ptq import quantized_nodes, resolve_reduce_range
from bitnas.pipeline import PassContext, Sequential
from bitnas.supernets.evaluate import calibration_batches, predictions, prepare_subnet
from bitnas.supernets.static import fold_bn, quantize_net


def mixed_candidate(net, seed=None):
    """An architecture (the largest, or a random one) whose layers alternate INT8 and float."""
    c = net.space.largest() if seed is None else net.space.sample(np.random.default_rng(seed))
    names = [s.name for s in net.layers(c)]
    policy = {n: ((8, 8) if i % 2 == 0 else (32, 32)) for i, n in enumerate(names)}
    return net.space.make(c.arch_dict, policy)


@pytest.fixture(scope="module")
def compiled(trained, digits, tmp_path_factory):
    work = tmp_path_factory.mktemp("compile") / "work"
    work.mkdir()
    cand = mixed_candidate(trained)
    calib = calibration_batches(digits, 4)
    reference = quantize_net(prepare_subnet(trained, cand, calib), cand.policy_dict, calib, resolve_reduce_range("auto"))
    ctx = PassContext(workdir=work, inputs={"supernet": trained, "data": digits, "reference_net": reference},
                      results={"predicted": {"latency_ms": 1.0}})
    pipeline = Sequential([ExtractSubnet(), RecalibrateBn(), ExportOnnx(), AssignBitwidths(), IncStaticPtq(),
                           Compact(), Verify(repeats=20, warmup=2, rounds=2), Package(out="artifact")])
    artifact = pipeline.run(cand, ctx)
    return cand, ctx, artifact


def test_every_pass_is_registered_with_a_strict_documented_config():
    for name in ("ExtractSubnet", "RecalibrateBn", "ExportOnnx", "AssignBitwidths", "IncStaticPtq", "OrtStaticPtq",
                 "Compact", "Verify", "Package"):
        cls = PASSES[name]
        for field_name, field in cls.Config.model_fields.items():
            assert field.description, f"{name}.{field_name} lacks a description"
        with pytest.raises(UserError, match="unknown key 'nope'"):
            cls(nope=1)


def test_a_pass_writes_only_inside_its_work_folder():
    """A pass's ``filename`` is one plain ``*.onnx`` name: a path out of the work folder (``../..``, absolute,
    a sub-path) or a file of another kind is refused naming the key."""
    for name in ("ExportOnnx", "AssignBitwidths", "IncStaticPtq", "OrtStaticPtq", "SubByteWeights"):
        cls = PASSES[name]
        assert cls(filename="mine.onnx").config.filename == "mine.onnx"
        for bad in ("../../thesis.onnx", "/etc/x.onnx", "sub/x.onnx", "..\\x.onnx", "..", "", "x.txt", ".onnx"):
            with pytest.raises(UserError, match="key 'filename'.*(plain file name|visible)"):
                cls(filename=bad)


def test_export_names_nodes_after_layers_and_matches_torch(trained, digits, tmp_path):
    c = mixed_candidate(trained, 1)
    static = trained.extract(c)
    ctx = PassContext(workdir=tmp_path, inputs={"data": digits})
    out = ExportOnnx().run(static, ctx)
    model = onnx.load(str(out.path))
    names = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert names == [s.name for s in trained.layers(c)] == out.layers
    x = digits.x_val[:32]
    (y,) = ort.InferenceSession(str(out.path)).run(None, {"input": x})
    with torch.no_grad():
        ref = fold_bn(static)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_ptq_quantizes_exactly_the_int8_layers_in_qdq(compiled):
    cand, ctx, artifact = compiled
    model = onnx.load(str(artifact.model_path))
    int8 = {k for k, v in cand.policy_dict.items() if v == (8, 8)}
    layers = set(artifact.manifest["model"]["layers"])
    assert quantized_nodes(model) == int8 & layers
    assert quantized_nodes(model) and layers - int8  # really mixed
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearConv" not in ops
    bits = read_layer_bits(model)
    assert {k: tuple(v) for k, v in bits.items()} == {k: tuple(cand.policy_dict[k]) for k in layers}
    q = artifact.manifest["quantization"]
    assert q["reduce_range"] == (not has_vnni()) and q["engine"] == "onnx-neural-compressor"


def test_verify_reports_parity_accuracy_and_latency_ratio_per_backend(compiled):
    _, ctx, artifact = compiled
    m = artifact.manifest["measured"]
    for b in ("ort", "openvino", "tvm"):
        e = m[b]
        assert e["top1_agreement_vs_fakequant"] >= 0.99
        assert abs(e["accuracy"] - e["accuracy_fp32"]) <= 0.02
        # the ratio is the median of per-round ratios: near the pooled one, with its spread over the rounds
        assert e["latency_ratio_to_fp32"] == pytest.approx(e["latency_ms"] / e["latency_ms_fp32"], rel=0.3)
        assert e["latency_ratio_rounds"] >= 1 and 0 <= e["latency_ratio_iqr"] < e["latency_ratio_to_fp32"]
    assert m["top1_agreement"]["ort~openvino"] >= 0.99 and m["top1_agreement"]["ort~tvm"] >= 0.99
    assert m["latency_ms"] == m["ort"]["latency_ms"]


def test_manifest_holds_the_required_keys_and_checksums(compiled):
    cand, _, artifact = compiled
    man = json.loads((artifact.root / "manifest.json").read_text())
    for key in ("schema_version", "candidate", "target", "lut", "predicted", "measured", "files", "versions"):
        assert key in man
    assert man["candidate"]["id"] == cand.id and set(man["candidate"]) == {"id", "arch", "policy"}
    for lib in ("torch", "onnx", "onnxruntime", "openvino", "onnx-neural-compressor"):
        assert man["versions"][lib]
    assert set(man["files"]) == {"model.onnx"}
    Artifact.load(artifact.root)  # checksums verify
    # what Verify measured is the very file that ships
    assert man["measured"]["model_sha256"] == man["files"]["model.onnx"]["sha256"]


def test_package_refuses_a_model_changed_after_verify(compiled, tmp_path):
    """A pass between Verify and Package that rewrites the model would ship bytes nobody measured: refused,
    naming the fix; nothing is written."""
    from bitnas.passes import OnnxModel

    cand, ctx, artifact = compiled
    changed = tmp_path / "changed.onnx"
    m = onnx.load(str(artifact.model_path))
    m.doc_string = "rewritten after Verify"
    onnx.save(m, str(changed))
    model = OnnxModel(changed, list(artifact.manifest["model"]["layers"]))
    with pytest.raises(UserError, match="not the model Verify measured.*put Verify right before Package"):
        Package(out=str(tmp_path / "art")).run(model, PassContext(workdir=tmp_path / "w", inputs={"candidate": cand},
                                                                  results=dict(ctx.results)))
    assert not (tmp_path / "art").exists()


def test_tampered_or_missing_files_are_named(compiled, tmp_path):
    _, _, artifact = compiled
    copy = tmp_path / "art"
    shutil.copytree(artifact.root, copy)
    with (copy / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=r"model.onnx: sha256 does not match"):
        Artifact.load(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model.onnx: listed in the manifest but missing"):
        Artifact.load(copy)
    (copy / "manifest.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="manifest.json: not valid JSON"):
        Artifact.load(copy)
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        Artifact.load(tmp_path / "nothing")


def test_not_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"PK\x03\x04 certainly not a protobuf " * 10)
    with pytest.raises(ArtifactError, match=r"model.onnx: not an ONNX model"):
        load_onnx(bad)
    with pytest.raises(ArtifactError, match="ONNX file not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_failed_packaging_keeps_the_previous_artifact(compiled, tmp_path):
    _, _, artifact = compiled
    dest = tmp_path / "artifact"
    write_artifact(dest, artifact.model_path, artifact.manifest)
    before = (dest / "manifest.json").read_text()
    with pytest.raises(TypeError):
        write_artifact(dest, artifact.model_path, {**artifact.manifest, "bad": object()})
    assert (dest / "manifest.json").read_text() == before
    Artifact.load(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_packaging_replaces_only_an_earlier_artifact_and_finishes_an_interrupted_swap(compiled, tmp_path):
    _, _, artifact = compiled
    # a user's folder (a thesis in it) and the run folder are never replaced
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    with pytest.raises(ArtifactError, match=r"thesis: will not replace this folder.*'chapter1.tex'"):
        write_artifact(thesis, artifact.model_path, artifact.manifest)
    assert (thesis / "chapter1.tex").read_text() == "months of work"
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]  # no temporary folder left behind
    # an artifact a user added a file to is not replaced either; a clean earlier artifact is
    dest = tmp_path / "artifact"
    write_artifact(dest, artifact.model_path, artifact.manifest)
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="'notes.txt', which its manifest does not list"):
        write_artifact(dest, artifact.model_path, artifact.manifest)
    (dest / "notes.txt").unlink()
    write_artifact(dest, artifact.model_path, {**artifact.manifest, "seed": 7})
    assert Artifact.load(dest).manifest["seed"] == 7
    # killed between the two renames: the artifact was moved aside and the new one never arrived
    dest.rename(tmp_path / ".artifact.old")
    write_artifact(dest, artifact.model_path, {**artifact.manifest, "seed": 8})
    assert Artifact.load(dest).manifest["seed"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "thesis"]


def test_ptq_refuses_bits_it_cannot_run(trained, digits, tmp_path):
    c = trained.space.largest()
    names = [s.name for s in trained.layers(c)]
    space_bits = {n: (8, 8) for n in names}
    cand = trained.space.make(c.arch_dict, space_bits)
    object.__setattr__(cand, "policy", tuple(sorted({**space_bits, names[2]: (16, 8)}.items())))
    ctx = PassContext(workdir=tmp_path, inputs={"data": digits, "candidate": cand})
    model = AssignBitwidths().run(ExportOnnx().run(trained.extract(c), ctx), ctx)
    with pytest.raises(UserError, match=f"layer '{names[2]}' asks for W16A8"):
        IncStaticPtq().run(model, ctx)


def test_fake_quant_reference_agrees_with_float_on_most_inputs(trained, digits):
    cand = mixed_candidate(trained, 2)
    calib = calibration_batches(digits, 4)
    static = prepare_subnet(trained, cand, calib)
    q = quantize_net(static, cand.policy_dict, calib)
    assert (predictions(q, digits) == predictions(static, digits)).mean() > 0.95
