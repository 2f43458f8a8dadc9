"""BitFusion end to end through the CLI: profile (simulated latency and energy), APQ's constrained evolution
under an energy budget on a W/A {2, 4, 8} space, and the knee compiled into a verified sub-byte artifact."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import yaml

from bitnas.cli import main
from bitnas.passes.assign_bits import layer_bits_of


@pytest.fixture(scope="module")
def searched(tmp_path_factory, trained):
    """A bitfusion-mbv2-tiny project on the session's trained weights (mbv2-tiny's, the same supernet),
    profiled on BitFusion and searched under an energy budget between the space's extremes."""
    from bitnas.latency_luts import LatencyTable

    run = tmp_path_factory.mktemp("bitfusion") / "run"
    assert main(["init", str(run), "--space", "bitfusion-mbv2-tiny", "--target", "bitfusion"]) == 0
    torch.save({"model": trained.state_dict(), "fingerprint": "trained-fixture"}, run / "weights.pt")
    cfg = yaml.safe_load((run / "project.yaml").read_text())
    cfg["train"]["checkpoint"] = str(run / "weights.pt")
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["profile", "--project", str(run)]) == 0
    lut = LatencyTable.load(run / "lut.json")
    from bitnas.project import Project

    net = Project.load(run).supernet()
    lo = lut.predict(net.layers(net.space.smallest((2, 2))))["energy_mj"]
    hi = lut.predict(net.layers(net.space.largest((8, 8))))["energy_mj"]
    budget = lo + 0.4 * (hi - lo)
    cfg["search"].update({"searcher": "evolution", "budget": 8, "pop_size": 4, "calib_batches": 2,
                          "objectives": ["accuracy", "energy_mj"], "constraints": {"energy_mj": budget},
                          "options": {"float_samples": 8}})
    cfg["compile"]["passes"] = ["ExtractSubnet", {"RecalibrateBn": {"batches": 2}}, "ExportOnnx", "AssignBitwidths",
                                {"IncStaticPtq": {"calibration_batches": 2}}, "SubByteWeights",
                                "SubByteActivations", "Compact",
                                {"Verify": {"backends": ["ort", "openvino"], "repeats": 10, "warmup": 1,
                                            "rounds": 1}}, "Package"]
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", "--project", str(run)]) == 0
    return run, budget, lut


def test_the_lut_has_latency_and_energy_for_every_bit_option(searched):
    _, _, lut = searched
    assert lut.measurement["simulated"] and lut.target == "bitfusion"
    bits = {(e["spec"]["w_bits"], e["spec"]["a_bits"]) for e in lut.entries.values()}
    assert {(2, 2), (4, 4), (8, 8), (6, 6), (2, 8)} <= bits
    assert all(e["energy_mj"] > 0 and e["cycles"] > 0 for e in lut.entries.values())


def test_every_front_member_is_under_the_energy_budget(searched):
    run, budget, _ = searched
    result = json.loads((run / "search.json").read_text())
    front = [e for e in result["evaluations"] if e["on_front"]]
    assert front and all(e["objectives"]["energy_mj"] <= budget for e in front)
    # APQ's evolution discards a candidate over budget before any true evaluation: none was paid for
    assert all(e["objectives"]["energy_mj"] <= budget for e in result["evaluations"])
    assert (run / "front.png").stat().st_size > 0 and (run / "front_bits.png").stat().st_size > 0


def test_the_knee_compiles_into_a_verified_sub_byte_artifact(searched):
    run, budget, lut = searched
    assert main(["compile", "--project", str(run)]) == 0
    (art,) = [p for p in (run / "artifacts").iterdir() if p.is_dir()]
    man = json.loads((art / "manifest.json").read_text())
    policy = {k: tuple(v) for k, v in man["candidate"]["policy"].items()}
    assert all(w in (2, 4, 8) and a in (2, 4, 8) for w, a in policy.values())
    model = onnx.load(str(art / "model.onnx"))
    assert {k: tuple(v) for k, v in layer_bits_of(art / "model.onnx").items()}.items() <= policy.items()
    if any(w <= 4 for w, _ in layer_bits_of(art / "model.onnx").values()):
        assert any(t.data_type == onnx.TensorProto.INT4 for t in model.graph.initializer)
    # the search's size is what the artifact stores; its predicted energy and cycles are the LUT's
    assert man["parameter_bytes"] == pytest.approx(man["predicted"]["size_bytes"], abs=64)
    assert man["predicted"]["energy_mj"] <= budget and man["predicted"]["cycles"] > 0
    assert man["quantization"]["activation_storage"]["narrow_layers"] == sum(
        a < 8 for _, a in layer_bits_of(art / "model.onnx").values())
    for backend in ("ort", "openvino"):
        assert man["measured"][backend]["top1_agreement_vs_fakequant"] >= 0.99, (backend, man["measured"][backend])
    assert main(["verify", str(art)]) == 0
