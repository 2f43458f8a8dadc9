"""Batched cheap objectives: stored fusion models, the unit-table scorer, and the searchers' batch path."""

import numpy as np
import pytest

from bitnas.errors import LutError
from bitnas.latency_luts.build import space_bits
from bitnas.latency_luts.lut import CALIBRATION_FEATURES, FusionModel, LatencyTable, block_key
from bitnas.scoring import BatchScorer
from bitnas.supernets.families import build_supernet, fusion_units


def synthetic_lut(net, calibrated=True, energy=False, seed=0):
    """A LUT that covers the whole space: every layer at every bit option, every fusion unit's float and
    all-INT8 form measured whole except a third of them (priced by the fusion model), and a calibration on
    every feature. Latencies follow the layers' MACs with noise, so every number differs."""
    rng = np.random.default_rng(seed)
    entries = {}
    bits = space_bits(net.space)
    for s in net.all_layer_specs():
        for b in bits:
            q = s.with_bits(b)
            ms = 1e-3 + q.macs * 1e-8 * (0.5 if b == (8, 8) else 1.0) * rng.uniform(0.8, 1.2)
            entries[q.key] = {"spec": q.to_dict(), "median_ms": ms, "iqr_ms": ms * 0.05, "n": 20,
                              **({"energy_mj": ms * 0.3} if energy else {})}
    blocks = {}
    for i, unit in enumerate(fusion_units(net)):
        for b in ((32, 32), (8, 8)):
            if b not in bits or i % 3 == 0:
                continue
            specs = [s.with_bits(b) for s in unit]
            total = sum(entries[s.key]["median_ms"] for s in specs)
            blocks[block_key(specs)] = {"layers": [s.key for s in specs], "median_ms": total * rng.uniform(0.6, 0.9),
                                        "iqr_ms": total * 0.02, "n": 20}
    cal = {}
    if calibrated:
        cal = {"features": list(CALIBRATION_FEATURES), "coef": list(rng.uniform(-0.01, 0.05, len(CALIBRATION_FEATURES))),
               "residual_sd_rel": 0.03}
        cal["coef"][0] = 1.0
    data = {"format": "bitnas-lut", "version": 2, "target": "ort-cpu", "space": net.space.name,
            "fingerprint": {}, "measurement": {"statistic": "median"}, "overhead": {"median_ms": 0.0005},
            "entries": entries, "blocks": blocks, "calibration": cal}
    return LatencyTable.from_dict(data, "synthetic.json")


def exact(net, lut, X, names):
    from bitnas.api import OBJECTIVES
    from bitnas.scoring import _Holder

    out = {n: [] for n in names}
    for x in X:
        layers = net.layers(net.space.decode(x))
        for n in names:
            out[n].append(OBJECTIVES.get(n).compute(_Holder(lut), layers))
    return {n: np.array(v) for n, v in out.items()}


SPACES = [("mbv2-tiny", "mbv2", 1, 32), ("mbv3-tiny", "mbv3", 1, 16), ("qfa-mbv3-tiny", "mbv3", 1, 16),
          ("ofa-resnet-tiny", "resnet", 1, 16), ("vit-tiny", "vit", 1, 16), ("ofa-mbv3-w1.0", "ofa-mbv3", 3, 224),
          ("ofa-resnet50", "ofa-resnet", 3, 224)]


@pytest.mark.parametrize("space,family,channels,size", SPACES, ids=[s[0] for s in SPACES])
def test_batch_scores_equal_the_exact_path_on_every_space(space, family, channels, size):
    net = build_supernet(space, family, channels, size, 10)
    energy = family == "mbv2"
    lut = synthetic_lut(net, calibrated=family != "vit", energy=energy)
    names = ["latency_ms", "size_bytes", "bitops"] + (["energy_mj"] if energy else [])
    scorer = BatchScorer(net.space, net.layers, lut, names)
    assert scorer.exact, scorer.reason
    rng = np.random.default_rng(3)
    n = 60 if size == 224 else 150
    X = rng.integers(0, net.space.upper_bounds() + 1, size=(n, net.space.n_genes))
    got, want = scorer.score(X), exact(net, lut, X, names)
    for name in names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=name)
    assert len(set(np.round(got["latency_ms"], 12))) > 0.6 * n  # the candidates really differ


def test_stored_fusion_trees_predict_what_sklearn_fitted():
    from sklearn.ensemble import GradientBoostingRegressor

    from bitnas.latency_luts.lut import _trees_of

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 18))
    y = 0.3 * X[:, 0] + np.sin(X[:, 3]) + 0.1 * rng.normal(size=300)
    reg = GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                                    random_state=0).fit(X, y)
    model = FusionModel(300, 0.0, 0.1, "x", _trees_of(reg))
    Xt = rng.normal(size=(500, 18)) * 2
    np.testing.assert_allclose(model.log_ratios(Xt), reg.predict(Xt), rtol=0, atol=1e-12)


def test_a_saved_lut_loads_its_fusion_model_instead_of_refitting(tmp_path, monkeypatch):
    net = build_supernet("mbv2-tiny", "mbv2", 1, 32, 10)
    lut = synthetic_lut(net)
    path = lut.save(tmp_path / "lut.json")  # fits once, stores the trees
    rng = np.random.default_rng(0)
    layers = [net.layers(net.space.sample(rng)) for _ in range(20)]
    want = [lut.predict(ls)["latency_ms"] for ls in layers]
    assert sum(lut.predict(ls)["blocks_corrected"] for ls in layers) > 0  # the model prices some blocks

    def refit(table):
        raise AssertionError("the fusion model was refitted at load")

    monkeypatch.setattr(FusionModel, "fit", staticmethod(refit))
    again = LatencyTable.load(path)
    assert [again.predict(ls)["latency_ms"] for ls in layers] == pytest.approx(want, rel=1e-12)
    monkeypatch.undo()

    # a stored model fitted on other measurements is not used: the table refits on its own
    import json

    data = json.loads(path.read_text())
    key = next(iter(data["blocks"]))
    data["blocks"][key]["median_ms"] *= 3
    changed = LatencyTable.from_dict(data, "changed.json")
    assert changed.fusion.digest != data["fusion"]["digest"]

    data["fusion"]["trees"]["left"] = "AAAA"
    with pytest.raises(LutError, match="changed.json: field 'fusion'.trees is malformed"):
        LatencyTable.from_dict(data, "changed.json")
    data["fusion"] = {"n": 3, "mean": "x", "sd": 0.1, "digest": "d"}
    with pytest.raises(LutError, match="field 'fusion'.mean"):
        LatencyTable.from_dict(data, "changed.json")


def test_searchers_score_their_inner_loops_in_batches():
    from bitnas.api import Objective
    from bitnas.searchers import SEARCHERS
    from bitnas.searchers.base import CheapEvaluator, cheap_rows

    net = build_supernet("mbv2-tiny", "mbv2", 1, 32, 10)
    lut = synthetic_lut(net)
    names = ["latency_ms", "size_bytes"]
    scorer = BatchScorer(net.space, net.layers, lut, names)
    calls = {"one": 0, "rows": 0}

    def one(c):
        calls["one"] += 1
        return {n: float(v[0]) for n, v in scorer.score(net.space.encode(c)[None]).items()}

    def batch(X):
        calls["rows"] += len(X)
        return scorer.score(X)

    cheap = CheapEvaluator(one, batch)
    smallest, largest = (cheap(c)["latency_ms"] for c in (net.space.smallest(), net.space.largest()))
    limit = (smallest + largest) / 2
    objectives = [Objective("accuracy", "max", cheap=False), Objective("latency_ms", "min"),
                  Objective("size_bytes", "min")]
    rng = np.random.default_rng(0)
    for name, options in (("linas", {"inner_pop": 40, "inner_gens": 10}), ("evolution", {}),
                          ("bo", {"inner_pop": 40, "inner_gens": 10})):
        calls.update(one=0, rows=0)
        searcher = SEARCHERS.get(name)(net.space, objectives, seed=0, constraints={"latency_ms": limit},
                                      cheap=cheap, pop_size=8, **options)
        for _ in range(3):
            asked = searcher.ask()
            assert asked
            X = np.array([net.space.encode(c) for c in asked])
            lat = cheap_rows(cheap, net.space, X)["latency_ms"]
            assert (lat <= limit).all(), name  # the constraint holds for everything asked
            acc = rng.uniform(0.5, 1.0, len(asked))
            searcher.tell(asked, np.column_stack([-acc, lat, cheap_rows(cheap, net.space, X)["size_bytes"]]))
        assert calls["rows"] > 1000 and calls["rows"] > 20 * calls["one"], (name, calls)
