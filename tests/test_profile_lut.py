"""Profiling with fusion units, checkpoint/resume, the LUT v2 format, and the profile/validate CLI."""

import json

import numpy as np
import pytest

from bitnas.backends import get_backend
from bitnas.cli import main
from bitnas.errors import LutError
from bitnas.latency_luts import LatencyTable
from bitnas.latency_luts.lut import CALIBRATION_CANDIDATES, block_key, group_units
from bitnas.latency_luts.profiler import layer_items, measure_items, profile
from bitnas.space import LayerSpec
from bitnas.supernets.mbv2 import all_blocks

BLOCKS = [  # layers of one module scope that chain form a block
    (LayerSpec("conv", 8, 24, 1, 1, 1, 8, "relu6", name="b0.expand"),
     LayerSpec("conv", 24, 24, 3, 1, 24, 8, "relu6", name="b0.dw"),
     LayerSpec("conv", 24, 8, 1, 1, 1, 8, "none", residual=True, name="b0.project")),
    (LayerSpec("conv", 8, 32, 1, 1, 1, 8, "relu6", name="b1.expand"),
     LayerSpec("conv", 32, 32, 5, 2, 32, 8, "relu6", name="b1.dw"),
     LayerSpec("conv", 32, 12, 1, 1, 1, 4, "none", name="b1.project")),
]
BITS = [(32, 32), (8, 8)]


@pytest.fixture(scope="module")
def lut():
    specs = [s for b in BLOCKS for s in b] + [LayerSpec("linear", 12, 10, hw=4)]
    return profile(get_backend("ort"), specs, BITS, "ort-cpu", reduce_range=False, warmup=1, repeats=10, rounds=2,
                   statistic="p10", space="test", blocks=BLOCKS, mixed_fraction=0.5)


def test_blocks_are_measured_whole_and_used(lut):
    assert len(lut.blocks) >= 4  # every block at both uniform bit options, plus mixed ones
    layers = list(BLOCKS[0]) + list(BLOCKS[1]) + [LayerSpec("linear", 12, 10, hw=4)]
    p = lut.predict(layers)
    assert p["blocks_measured"] == 2 and p["blocks_corrected"] == 0
    expected = sum(lut.block_latency(block_key(b)) for b in BLOCKS) + lut.layer_latency(layers[-1]) + lut._overhead()
    assert p["latency_ms"] == pytest.approx(expected)
    assert p["latency_sd_ms"] >= 0 and p["latency_layer_sum_ms"] > 0


def test_unmeasured_block_gets_a_learned_correction_with_uncertainty(lut):
    mixed = [b for b in (tuple(s.with_bits(bits) for s, bits in zip(BLOCKS[0], pol))
                         for pol in [((8, 8), (32, 32), (8, 8)), ((32, 32), (8, 8), (32, 32)),
                                     ((8, 8), (8, 8), (32, 32)), ((32, 32), (32, 32), (8, 8))])
             if block_key(b) not in lut.blocks]
    assert mixed, "the sample measured every mixed policy; lower mixed_fraction"
    p = lut.predict(list(mixed[0]))
    assert p["blocks_corrected"] == 1 and p["latency_sd_ms"] > 0
    assert 0.2 * p["latency_layer_sum_ms"] < p["latency_ms"] < 3 * p["latency_layer_sum_ms"]


def test_group_units_finds_blocks_and_all_blocks_covers_the_space():
    from bitnas.supernets import build_supernet

    net = build_supernet("mbv2-tiny")
    keys = {tuple(s.key for s in b) for b in all_blocks(net.d)}
    rng = np.random.default_rng(0)
    for _ in range(30):
        layers = [s.with_bits((32, 32)) for s in net.layers(net.space.sample(rng))]
        units = group_units(layers)
        blocks = [u for u in units if len(u) == 3]
        assert 3 * len(blocks) == len(layers) - 3  # stem, head, classifier stay single
        assert all(tuple(s.key for s in b) in keys for b in blocks)


@pytest.mark.parametrize("space,family,size", [("ofa-resnet-tiny", "resnet", 16), ("mbv3-tiny", "mbv3", 16)])
def test_every_family_block_is_a_fusion_unit_the_lut_measures(space, family, size):
    from bitnas.latency_luts.profiler import unit_model
    from bitnas.supernets.families import build_supernet, fusion_units

    net = build_supernet(space, family, 1, size, 10)
    units = fusion_units(net)
    keys = {tuple(s.key for s in u) for u in units}
    rng = np.random.default_rng(1)
    for _ in range(20):
        layers = [s.with_bits((32, 32)) for s in net.layers(net.space.sample(rng))]
        for unit in group_units(layers):
            names = {s.name.rpartition(".")[0] for s in unit}
            assert len(names) == 1  # a unit never spans two blocks
            if len(unit) > 1:
                assert tuple(s.key for s in unit) in keys
    if family == "resnet":  # a bottleneck is conv1-conv2-conv3, then the projection shortcut, one unit
        layers = net.layers(net.space.sample(rng))
        with_shortcut = [u for u in group_units(layers) if any(s.name.endswith("shortcut") for s in u)]
        assert with_shortcut and all([s.name.rpartition(".")[2] for s in u] == ["conv1", "conv2", "conv3", "shortcut"]
                                     for u in with_shortcut)
        model = unit_model(with_shortcut[0])  # the residual adds the shortcut's output, which reads the input
        nodes = {n.name: n for n in model.graph.node}
        assert list(nodes["layer3"].input)[0] == "input"
        assert "layer3_out" in nodes["l2_residual"].input
        stems = (group_units(net.layers(net.space.sample(rng)))[0] for _ in range(100))
        stem = next(u for u in stems if len(u) == 3)  # its residual conv adds its input, conv1's output
        nodes = {n.name: n for n in unit_model(stem).graph.node}
        assert list(nodes["l1_residual"].input) == ["l0_act_out", "l1_act_out"]
    else:  # the squeeze-excite sits inside its block
        assert any([s.op for s in u] == ["conv", "conv", "se", "conv"] for u in units)
    unit_model(units[0])  # buildable


def test_interrupted_profile_resumes_from_its_checkpoint(tmp_path):
    items = layer_items([s for b in BLOCKS for s in b], [(32, 32)])
    backend = get_backend("ort")
    ckpt = tmp_path / "lut.json.partial.json"
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def on_chunk(results, overheads):
        json.dump({"settings": "s", "results": results, "overheads": overheads}, ckpt.open("w"))
        calls["n"] += 1
        if calls["n"] == 1:
            raise Stop

    with pytest.raises(Stop):
        measure_items(backend, items, tmp_path / "m", False, 1, 4, 2, chunk=2, on_chunk=on_chunk)
    from bitnas.latency_luts.profiler import load_checkpoint

    done = load_checkpoint(ckpt, "s")
    assert len(done["results"]) == 2
    first = dict(done["results"])
    results, overheads = measure_items(backend, items, tmp_path / "m", False, 1, 4, 2, chunk=2, done=done)
    assert set(results) == {it.key for it in items} and len(overheads) == 3
    assert all(results[k] == v for k, v in first.items())  # not re-measured
    assert load_checkpoint(ckpt, "other settings")["results"] == {}
    ckpt.write_text("{broken")
    with pytest.raises(LutError, match="checkpoint is corrupt"):
        load_checkpoint(ckpt, "s")


def test_v2_file_round_trip_and_bad_blocks(lut, tmp_path):
    p = tmp_path / "lut.json"
    lut.save(p)
    again = LatencyTable.load(p)
    assert again.blocks == lut.blocks and again.statistic == "p10"
    data = json.loads(p.read_text())
    key = next(iter(data["blocks"]))
    bad = json.loads(json.dumps(data))
    bad["blocks"][key]["layers"] = bad["blocks"][key]["layers"][:2]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LutError, match=r"bad.json: block 'block:conv.*'layers'"):
        LatencyTable.load(tmp_path / "bad.json")
    bad = json.loads(json.dumps(data))
    k0 = next(iter(bad["entries"]))
    bad["entries"][k0]["spec"]["cin"] = 999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LutError, match="holds the spec of another layer"):
        LatencyTable.load(tmp_path / "bad.json")
    bad = json.loads(json.dumps(data))
    bad["version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LutError, match="field 'version'"):
        LatencyTable.load(tmp_path / "bad.json")


def test_lut_of_another_backend_is_refused(lut):
    with pytest.raises(LutError, match="backend"):
        lut.check_device(get_backend("openvino").fingerprint())


def test_shipped_luts_load_and_cover_the_space():
    from pathlib import Path

    import bitnas.latency_luts as pkg
    from bitnas.supernets import build_supernet

    specs = build_supernet("mbv2-tiny").all_layer_specs()
    for target in ("ort-cpu", "openvino-cpu"):
        path = Path(pkg.__file__).with_name(f"{target}_mbv2-tiny.json")
        lut = LatencyTable.load(path)
        assert lut.target == target and lut.space == "mbv2-tiny" and lut.blocks
        assert all(s.with_bits(b).key in lut.entries for s in specs for b in BITS)


def test_profile_and_validate_cli(tmp_path, capsys):
    out = tmp_path / "ort.json"
    assert main(["profile", "--target", "ort-cpu", "--space", "mbv2-tiny", "--out", str(out), "--no-blocks",
                 "--repeats", "3", "--rounds", "1", "--warmup", "1", "--chunk", "400"]) == 0
    lut = LatencyTable.load(out)
    assert len(lut.entries) == 246 and lut.measurement["statistic"] == "p10"
    assert not out.with_name(out.name + ".partial.json").exists()
    capsys.readouterr()
    assert main(["lut", "validate", "--lut", str(out), "--space", "mbv2-tiny", "--samples", "3", "--repeats", "4",
                 "--rounds", "2", "--json", "--plot", str(tmp_path / "v.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    for k in ("mape", "kendall_tau", "within_10pct", "repeatability", "layer_sum_only"):
        assert k in report
    assert report["samples"] == 3 and (tmp_path / "v.png").stat().st_size > 1000
    cal = tmp_path / "cal.json"
    few = ["units_sum_ms", "units", "precision_switches", "one"]
    assert main(["lut", "calibrate", "--lut", str(out), "--samples", "8", "--repeats", "4", "--rounds", "2",
                 "--features", ",".join(few), "--out", str(cal)]) == 0
    calibrated = LatencyTable.load(cal)
    assert len(calibrated.calibration["ids"]) == 8 and calibrated.calibration["residual_sd_rel"] >= 0
    assert calibrated.calibration["features"] == few
    from bitnas.supernets import build_supernet

    net = build_supernet("mbv2-tiny")
    p = calibrated.predict(net.layers(net.space.largest((8, 8))))
    assert p["latency_ms"] > 0 and "latency_uncalibrated_ms" in p
    assert main(["lut", "calibrate", "--lut", str(out), "--samples", "3"]) == 2
    assert f"at least {min(map(len, CALIBRATION_CANDIDATES)) + 4} subnets" in capsys.readouterr().err
    assert main(["lut", "calibrate", "--lut", str(out), "--features", "units_sum_ms,flops"]) == 2
    assert "unknown feature(s) ['flops']" in capsys.readouterr().err
    data = json.loads(out.read_text())
    data["fingerprint"]["cpu_model"] = "Another CPU"
    (tmp_path / "other.json").write_text(json.dumps(data))
    assert main(["lut", "validate", "--lut", str(tmp_path / "other.json"), "--samples", "2"]) == 2
    assert "measured on another device" in capsys.readouterr().err


def test_calibration_features_are_named_and_checked(tmp_path):
    from importlib.resources import files

    from bitnas.supernets import build_supernet

    shipped = json.loads((files("bitnas.latency_luts") / "ort-cpu_mbv2-tiny.json").read_text())
    net = build_supernet("mbv2-tiny")
    layers = net.layers(net.space.largest((8, 8)))
    four = {"features": ["units_sum_ms", "units", "int8_boundaries", "one"], "coef": [1.0, 0.001, 0.0, 0.002]}
    legacy = LatencyTable.from_dict({**shipped, "calibration": {"coef": four["coef"]}}, "legacy.json")
    named = LatencyTable.from_dict({**shipped, "calibration": four}, "named.json")
    assert legacy.predict(layers)["latency_ms"] == pytest.approx(named.predict(layers)["latency_ms"])
    p = named.predict(layers)
    assert p["latency_ms"] == pytest.approx(p["latency_uncalibrated_ms"] - named._overhead() + 0.002
                                            + 0.001 * len(group_units(layers)))
    with pytest.raises(LutError, match="bad.json: field 'calibration.features' names unknown feature"):
        LatencyTable.from_dict({**shipped, "calibration": {**four, "features": ["units", "flops"]}}, "bad.json")
    with pytest.raises(LutError, match="short.json: field 'calibration.coef' must hold 4 finite numbers"):
        LatencyTable.from_dict({**shipped, "calibration": {**four, "coef": [1.0]}}, "short.json")


def test_tvm_profiles_a_transformer_space_through_the_cli(tmp_path):
    """``bitnas profile --target tvm-llvm`` on ViT's space (attention, LayerNorm, GELU dense layers): every
    layer of its subnets at FP32 and INT8 is in the LUT, timed on TVM."""
    from bitnas.supernets import build_supernet

    out = tmp_path / "tvm.json"
    assert main(["profile", "--target", "tvm-llvm", "--family", "vit", "--space", "vit-tiny", "--image-size", "16",
                 "--out", str(out), "--no-blocks", "--repeats", "3", "--rounds", "1", "--warmup", "1",
                 "--chunk", "400"]) == 0
    lut = LatencyTable.load(out)
    assert lut.target == "tvm-llvm" and lut.measurement["backend"] == "tvm"
    assert {k.split("|")[0] for k in lut.entries} >= {"attention", "layernorm", "dense"}
    net = build_supernet("vit-tiny", image_size=16)
    for c in (net.space.largest((8, 8)), net.space.smallest((32, 32))):
        assert lut.predict(net.layers(c))["latency_ms"] > 0
