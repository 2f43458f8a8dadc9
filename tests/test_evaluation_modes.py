"""``search.evaluation``: simulated, inc-ptq (SimQ-NAS) and qaft (BOMP-NAS) through ``bitnas search``; APQ's
predictor transfer inside ``evolution``; BOMP-NAS's UCB over the eq. 1 scalarization."""

import copy
import json

import numpy as np
import pytest
import yaml

from bitnas.cli import main


def _lut(net, target: str, path) -> float:
    """A latency table of ``net``'s layers for ``target`` (as data: made-up latencies, proportional to the MACs
    whatever the bits); returns a latency limit that only the smaller architectures meet (cheap to evaluate)."""
    from bitnas.api import TARGETS
    from bitnas.latency_luts import LatencyTable

    entries = {}
    for spec in net.all_layer_specs():
        for b in net.d.bit_options:
            sb = spec.with_bits(b)
            entries[sb.key] = {"median_ms": 1e-6 * sb.macs + 0.002, "spec": sb.to_dict()}
    here = TARGETS.get(target).make_backend(threads=1).fingerprint()
    lut = LatencyTable(target=target, fingerprint=here, measurement={"statistic": "median", "threads": 1},
                       entries=entries, overhead={"median_ms": 0.002}, space=net.space.name)
    lut.save(path)
    lo, hi = (lut.predict(net.layers(c))["latency_ms"] for c in (net.space.smallest(), net.space.largest()))
    return lo + 0.15 * (hi - lo)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained):
    """The session's trained mbv2-tiny as a checkpoint, and LUTs for mbv2-tiny on ort-cpu and for
    bitfusion-mbv2-tiny (the same weights, W/A bits {2, 4, 8}) on bitfusion."""
    import torch

    from bitnas.supernets import build_supernet

    out = tmp_path_factory.mktemp("evaluation_inputs")
    torch.save({"model": trained.state_dict(), "fingerprint": "trained-fixture"}, out / "supernet.pt")
    limits = {"ort-cpu": _lut(trained, "ort-cpu", out / "lut-ort.json"),
              "bitfusion": _lut(build_supernet("bitfusion-mbv2-tiny"), "bitfusion", out / "lut-bitfusion.json")}
    (out / "limits.json").write_text(json.dumps(limits))
    return out


def _project(folder, inputs, space="mbv2-tiny", target="ort-cpu", **search):
    folder.mkdir(parents=True, exist_ok=True)
    calib = search.setdefault("calib_batches", 2)
    # small architectures only: each evaluation stays cheap
    search.setdefault("constraints", {"latency_ms": json.loads((inputs / "limits.json").read_text())[target]})
    cfg = {"seed": 0, "family": {"space": space}, "target": target,
           "train": {"checkpoint": str(inputs / "supernet.pt")},
           "lut": {"path": str(inputs / ("lut-bitfusion.json" if target == "bitfusion" else "lut-ort.json"))},
           "search": {"searcher": "random", "pop_size": 4, **search},
           # the compile passes of the inc-ptq evaluation, calibrated alike, then Verify on ONNX Runtime
           "compile": {"passes": ["ExtractSubnet", {"RecalibrateBn": {"batches": calib}}, "ExportOnnx",
                                  "AssignBitwidths", {"IncStaticPtq": {"calibration_batches": calib}},
                                  "SubByteWeights", {"Verify": {"backends": ["ort"], "repeats": 10, "warmup": 0,
                                                                "rounds": 1}}, "Package"]}}
    (folder / "project.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def _search(capsys, folder):
    code = main(["search", "--project", str(folder), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads((folder / "search.json").read_text()), out.err


@pytest.mark.parametrize("search, message", [
    ({"evaluation": "ptq"}, "key 'search.evaluation'"),
    ({"evaluation": "simulated", "qaft": {"epochs": 1}}, "'qaft' settings apply to evaluation qaft, not 'simulated'"),
    ({"evaluation": "qaft", "qaft": {"epochs": 0}}, "key 'search.qaft.epochs'"),
])
def test_bad_evaluation_settings_are_one_error(tmp_path, capsys, search, message):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "project.yaml").write_text(yaml.safe_dump({"search": search}))
    code = main(["search", "--project", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and message in err, err


def test_inc_ptq_refuses_bits_static_ptq_cannot_produce():
    from bitnas.errors import ConfigError
    from bitnas.problem import check_evaluation
    from bitnas.space import Gene, SearchSpace

    check_evaluation(SearchSpace("ok", [Gene("a", ((2, 2), (8, 4), (32, 32)), "policy")]), "inc-ptq")
    with pytest.raises(ConfigError, match="gene 'a' offers W16A8"):
        check_evaluation(SearchSpace("wide", [Gene("a", ((16, 8), (8, 8)), "policy")]), "inc-ptq")


def test_inc_ptq_measures_what_the_artifact_measures_and_never_shares_a_study(tmp_path, capsys, inputs):
    folder = _project(tmp_path / "inc", inputs, evaluation="inc-ptq", budget=2)
    result, _ = _search(capsys, folder)
    assert result["problem"]["evaluation"]["mode"] == "inc-ptq"
    assert "Neural Compressor" in result["problem"]["evaluation"]["accuracy"]
    evals = result["evaluations"]
    assert len(evals) == 2
    for e in evals:
        assert set(e["objectives"]) == {"accuracy", "latency_ms", "size_bytes", "accuracy_simulated"}
        assert 0.0 <= e["objectives"]["accuracy"] <= 1.0
    # the compiled artifact of one candidate measures on ONNX Runtime what the search recorded
    pick = max(evals, key=lambda e: sum(b[0] == 8 for b in e["policy"].values()))
    assert sum(b[0] == 8 for b in pick["policy"].values()) > 0
    assert main(["compile", "--project", str(folder), "--pick", pick["id"]]) == 0
    manifest = json.loads((folder / "artifacts" / pick["id"] / "manifest.json").read_text())
    assert manifest["measured"]["ort"]["accuracy"] == pytest.approx(pick["objectives"]["accuracy"], abs=0.005)
    # the same project in simulated mode is another problem: a new study, the old one kept aside
    cfg = yaml.safe_load((folder / "project.yaml").read_text())
    cfg["search"]["evaluation"] = "simulated"
    (folder / "project.yaml").write_text(yaml.safe_dump(cfg))
    sim, err = _search(capsys, folder)
    assert "belongs to another problem" in err and list(folder.glob("study.*.old.sqlite"))
    assert sim["problem"]["evaluation"]["mode"] == "simulated" and sim["problem"]["hash"] != result["problem"]["hash"]
    by_id = {e["id"]: e["objectives"] for e in sim["evaluations"]}
    assert set(by_id) == {e["id"] for e in evals}  # one seed: the same candidates
    for e in evals:
        assert set(by_id[e["id"]]) == {"accuracy", "latency_ms", "size_bytes"}
        assert by_id[e["id"]]["accuracy"] == e["objectives"]["accuracy_simulated"]


def test_qaft_fine_tunes_low_bit_candidates_in_the_loop(tmp_path, capsys, inputs):
    from bitnas.project import Project

    folder = _project(tmp_path / "qaft", inputs, "bitfusion-mbv2-tiny", "bitfusion", evaluation="qaft",
                      qaft={"epochs": 1, "lr": 0.01}, budget=1, pop_size=2)
    result, _ = _search(capsys, folder)
    ev = result["problem"]["evaluation"]
    assert ev["mode"] == "qaft" and ev["epochs"] == 1 and ev["lr"] == 0.01 and "fine-tuning" in ev["accuracy"]
    (e,) = result["evaluations"]
    assert all(b[0] <= 8 and b[1] <= 8 for b in e["policy"].values())
    assert e["objectives"]["accuracy"] != e["objectives"]["accuracy_simulated"]
    # at W4A4 the inherited (float and INT8) weights lose accuracy; one epoch of fine-tuning at those bits
    # recovers much of it
    problem = Project.load(folder).problem()
    out = problem.evaluate(problem.space.smallest((4, 4)))
    assert out["accuracy"] > out["accuracy_simulated"] + 0.02, out


def test_evolution_pretrains_on_float_accuracies_and_transfers(tmp_path, inputs):
    from bitnas.project import Project
    from bitnas.searchers import Study, run_search
    from bitnas.searchers.predictors import make_predictor, onehot

    options = {"float_samples": 4, "predictor_epochs": 10, "inner_pop": 8, "inner_gens": 2, "batch_size": 1,
               "calib_batches": 2}
    project = Project.load(_project(tmp_path / "evo", inputs, searcher="evolution", options=options, budget=5))
    problem = project.problem()
    searcher = project.make_searcher(problem)  # as `bitnas search` builds it
    study = Study(tmp_path / "evo" / "study.sqlite", problem.problem)
    assert len(run_search(searcher, problem.evaluate, 5, study)) == 5
    study.close()
    assert searcher.transfer and searcher.transfers == 1  # the fifth candidate came from the transferred MLP
    # pre-trained on the architecture columns of 4 float-subnet accuracies, then widened to every column
    assert len(searcher.float_accuracy) == 4 and searcher.float_seconds > 0
    assert searcher.pretrained.net[0].in_features == len(searcher.pretrained.columns) < problem.space.onehot_size
    # a float sample's accuracy is the float subnet's: what the problem measures at an all-float policy
    space = problem.space
    rng = np.random.default_rng([0, 11])
    first = space.make(space.sample(rng).arch_dict)
    assert problem.evaluate(first)["accuracy"] == searcher.float_accuracy[first.id]
    # the predictor that scores proposals is the pre-trained one fine-tuned on the evaluations, not a fresh one
    X, y, probe = onehot(space, searcher.X), searcher.F[:, 0], onehot(space, [space.sample(rng) for _ in range(8)])
    used = searcher.fit_predictor().predict(probe)
    transferred = copy.deepcopy(searcher.pretrained).transfer(np.arange(space.onehot_size), X, y).predict(probe)
    scratch = make_predictor("mlp", 0, epochs=options["predictor_epochs"]).fit(X, y).predict(probe)
    np.testing.assert_allclose(used, transferred)
    assert not np.allclose(used, scratch)
    plain = Project.load(_project(tmp_path / "plain", inputs, searcher="evolution",
                                  options={**options, "transfer": False}, budget=5))
    assert not plain.make_searcher(problem).transfer


def test_bo_ucb_maximizes_mean_plus_kappa_std_of_the_eq1_score():
    from bitnas.api import Objective
    from bitnas.searchers.bo import BoSearcher
    from bitnas.searchers.predictors import GpPredictor, onehot
    from bitnas.space import Gene, SearchSpace

    space = SearchSpace("toy", [Gene("a", (0, 1, 2, 3)), Gene("b", (0, 1, 2)),
                                Gene("l0", ((8, 8), (32, 32)), "policy")])
    objectives = [Objective("accuracy", "max", cheap=False), Objective("size", "min")]
    told = [space.make({"a": a, "b": b}, {"l0": (8, 8)}) for a in range(4) for b in range(2)]
    acc = np.array([0.5 + 0.1 * c.arch_dict["a"] for c in told])
    size = np.array([1.0 + 0.5 * c.arch_dict["b"] for c in told])
    # eq. 1 with reference values 0.5 (accuracy) and 2.0 (size): acc / 0.5 + 2.0 / size, by hand
    by_hand = [3.0, 1.0 + 2 / 1.5, 3.2, 1.2 + 2 / 1.5, 3.4, 1.4 + 2 / 1.5, 3.6, 1.6 + 2 / 1.5]
    rest = [c for c in (space.make({"a": a, "b": b}, {"l0": bits}) for a in range(4) for b in range(3)
                        for bits in ((8, 8), (32, 32))) if c.id not in {t.id for t in told}]
    gp = GpPredictor(seed=0).fit(onehot(space, told), np.array(by_hand))
    mean, std = gp.predict_std(onehot(space, rest))
    firsts = {}
    for kappa in (0.0, 10.0):
        bo = BoSearcher(space, objectives, seed=0, pop_size=3, batch_size=len(rest), acquisition="ucb", kappa=kappa,
                        references={"accuracy": 0.5, "size": 2.0}, init="random", pool_size=100)
        bo.tell(told, np.column_stack([-acc, size]))
        asked = bo.ask()
        np.testing.assert_allclose(bo.scores, by_hand)
        assert sorted(c.id for c in asked) == sorted(c.id for c in rest)  # the pool: every unseen candidate
        ucb = mean + kappa * std
        got = np.array([ucb[[r.id for r in rest].index(c.id)] for c in asked])
        assert np.all(np.diff(got) <= 1e-9)  # asked in decreasing mean + kappa * std
        firsts[kappa] = asked[0].id
    # the mean alone prefers the twin of the best evaluated point; a large kappa prefers the unexplored
    best_mean = rest[int(np.argmax(mean))].id
    assert firsts[0.0] == best_mean and firsts[10.0] != best_mean
