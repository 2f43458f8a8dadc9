import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from bitnas.backends import get_backend
from bitnas.errors import LutError, UnknownLayerError
from bitnas.latency_luts import LatencyTable
from bitnas.latency_luts.profiler import layer_model, profile, write_layer_model
from bitnas.passes.inc_ptq import quantized_nodes
from bitnas.space import LayerSpec

SPECS = [
    LayerSpec("conv", 8, 16, 3, 1, 1, 8, "relu6"),
    LayerSpec("conv", 16, 16, 5, 2, 16, 8, "relu6"),
    LayerSpec("conv", 16, 8, 1, 1, 1, 8, "none", residual=True),
    LayerSpec("linear", 16, 10, hw=4),
]


@pytest.fixture(scope="module")
def lut():
    return profile(get_backend("ort"), SPECS, [(32, 32), (8, 8)], "ort-cpu", reduce_range=False,
                   warmup=2, repeats=20, rounds=2, space="test")


def test_layer_model_computes_the_layer(tmp_path):
    spec = LayerSpec("conv", 4, 6, 3, 2, 1, 9, "relu6")
    model = layer_model(spec, seed=0)
    w = next(np.frombuffer(t.raw_data, np.float32) for t in model.graph.initializer if t.name == "W")
    b = next(np.frombuffer(t.raw_data, np.float32) for t in model.graph.initializer if t.name == "B")
    x = np.random.default_rng(0).normal(size=(1, 4, 9, 9)).astype(np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})
    ref = F.relu6(F.conv2d(torch.from_numpy(x), torch.from_numpy(w.reshape(6, 4, 3, 3).copy()),
                           torch.from_numpy(b.copy()), stride=2, padding=1)).numpy()
    assert y.shape == (1, 6, spec.out_hw, spec.out_hw)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_int8_layer_model_is_quantized_qdq(tmp_path):
    import onnx

    path = write_layer_model(SPECS[0].with_bits((8, 8)), tmp_path, reduce_range=False)
    model = onnx.load(str(path))
    assert quantized_nodes(model) == {"layer"}
    assert "QLinearConv" not in {n.op_type for n in model.graph.node}


def test_profile_has_every_entry_with_spread_and_fingerprint(lut):
    assert set(lut.entries) == {s.with_bits(b).key for s in SPECS for b in [(32, 32), (8, 8)]}
    for e in lut.entries.values():
        assert 0 < e["p10_ms"] <= e["median_ms"] and e["n"] == 20 and e["iqr_ms"] >= 0
    fp = lut.fingerprint
    for key in ("cpu_model", "isa", "threads", "libraries"):
        assert key in fp
    assert fp["libraries"]["onnxruntime"] == ort.__version__
    assert lut.overhead["median_ms"] > 0


def test_predict_sums_layers_and_counts_call_overhead_once(lut):
    layers = [s.with_bits((32, 32)) for s in SPECS]
    total = lut.predict(layers)["latency_ms"]
    one = [lut.predict([s])["latency_ms"] for s in layers]
    ov = lut.overhead["median_ms"]
    assert total == pytest.approx(sum(one) - (len(layers) - 1) * ov)


def test_unknown_layer_names_the_layer(lut):
    spec = LayerSpec("conv", 3, 3, 3, 1, 1, 5, "relu6", name="s9.b0.dw")
    with pytest.raises(UnknownLayerError, match=r"s9\.b0\.dw.*conv\|cin3"):
        lut.predict([spec])


def test_round_trip_and_malformed_files(lut, tmp_path):
    p = tmp_path / "lut.json"
    lut.save(p)
    again = LatencyTable.load(p)
    assert again.entries == lut.entries and again.target == "ort-cpu"
    data = json.loads(p.read_text())
    data["entries"][next(iter(data["entries"]))]["median_ms"] = "fast"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(LutError, match=r"bad.json: entry 'conv\|.*' lacks a numeric 'median_ms'"):
        LatencyTable.load(bad)
    bad.write_text("{not json")
    with pytest.raises(LutError, match="bad.json: not valid JSON"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(LutError, match="field 'format'"):
        LatencyTable.load(bad)
    # NaN, infinity and booleans are not latencies (JSON's NaN parses as a float)
    first = next(iter(lut.entries))
    for value, shown in (("NaN", "nan"), ("Infinity", "inf"), ("true", "True"), ("-1.0", "-1.0")):
        data = json.loads(p.read_text())
        data["entries"][first]["median_ms"] = "@@"
        bad.write_text(json.dumps(data).replace('"@@"', value))
        with pytest.raises(LutError, match=rf"entry '{re.escape(first)}' field 'median_ms' is {shown}, not a finite"):
            LatencyTable.load(bad)
    data = json.loads(p.read_text())
    data["overhead"] = {"median": float("nan")}
    bad.write_text(json.dumps(data))
    with pytest.raises(LutError, match="'overhead' must map statistics to finite non-negative numbers"):
        LatencyTable.load(bad)


def test_lut_from_another_device_is_refused_unless_forced(lut, tmp_path):
    here = get_backend("ort").fingerprint()
    lut.check_device(here)
    other = {**here, "cpu_model": "Some Other CPU", "isa": ["neon"]}
    with pytest.raises(LutError, match="measured on another device.*cpu_model"):
        lut.check_device(other)
    lut.check_device(other, force=True)
    with pytest.raises(LutError, match="threads"):
        lut.check_device({**here, "threads": here["threads"] + 3})


def test_a_default_calibration_picks_the_feature_set_that_generalizes():
    """Without named features the network-level correction is fitted on each candidate set the number of
    subnets supports and the one with the lowest leave-one-out error is kept, with the measurements."""
    from importlib.resources import files

    from bitnas.latency_luts.lut import CALIBRATION_CANDIDATES
    from bitnas.latency_luts.validate import fit_calibration
    from bitnas.supernets import build_supernet

    shipped = json.loads((files("bitnas.latency_luts") / "ort-cpu_mbv2-tiny.json").read_text())
    table = LatencyTable.from_dict({**shipped, "calibration": {}}, "shipped.json")
    net = build_supernet("mbv2-tiny")
    rng = np.random.default_rng(0)
    nets = [net.layers(net.space.sample(rng)) for _ in range(12)]
    units_sum = np.array([table.predict(layers)["latency_ms"] - table._overhead() for layers in nets])
    measured = 1.3 * units_sum + 0.004 + rng.normal(0, 1e-4, len(nets))  # a plain scale and offset
    cal = fit_calibration(table, nets, measured)
    tried = {tuple(c["features"]): c["loo_rel"] for c in cal["candidates"]}
    assert set(tried) == {tuple(s) for s in CALIBRATION_CANDIDATES if len(s) + 4 <= 12}  # the rest need more
    assert tried[tuple(cal["features"])] == min(tried.values()) == cal["residual_sd_rel"] < 0.01
    assert cal["measured_ms"] == pytest.approx(list(measured))
    calibrated = LatencyTable.from_dict({**shipped, "calibration": cal}, "cal.json")
    got = np.array([calibrated.predict(layers)["latency_ms"] for layers in nets])
    np.testing.assert_allclose(got, measured, rtol=0.02)
    named = fit_calibration(table, nets, measured, features=("units_sum_ms", "one"))
    assert named["features"] == ["units_sum_ms", "one"] and len(named["candidates"]) == 1


def test_the_fusion_regressor_tells_packed_int4_blocks_from_int8_ones():
    """Two blocks whose layers cost the same alone: one stores its weights packed (4 bits), one as INT8.
    OpenVINO folds packed weights to float when it compiles a model, so their blocks fuse differently; the
    regressor's features must differ, and a stored model indexes exactly these features."""
    from bitnas.latency_luts.lut import N_BLOCK_FEATURES, block_features

    blk = [LayerSpec("conv", 8, 24, 1, 1, 1, 8, "relu6"), LayerSpec("conv", 24, 24, 3, 1, 24, 8, "relu6")]
    ms = [0.01, 0.02]
    w4 = block_features([s.with_bits((4, 8)) for s in blk], ms)
    w6 = block_features([s.with_bits((6, 8)) for s in blk], ms)
    w8 = block_features([s.with_bits((8, 8)) for s in blk], ms)
    assert len(w4) == len(w8) == N_BLOCK_FEATURES
    assert w6 == w8 and w4 != w8  # 5-7-bit weights are stored as INT8: the same graph as W8
