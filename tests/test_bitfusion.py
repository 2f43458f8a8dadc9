import json

import pytest

from bitnas.backends.bitfusion import BitFusionBackend, BitFusionModel, load_config, load_presets
from bitnas.cli import main
from bitnas.errors import ConfigError, UnknownLayerError, UnsupportedBackendError
from bitnas.latency_luts import LatencyTable
from bitnas.space import LayerSpec


@pytest.fixture(scope="module")
def bf():
    return BitFusionBackend()


def test_edge_preset_has_the_published_configuration():
    cfg = load_config("edge")
    assert (cfg.rows, cfg.cols, cfg.brick_bits, cfg.frequency_mhz) == (16, 32, 2, 500)
    assert (cfg.wbuf_kb, cfg.ibuf_kb, cfg.obuf_kb, cfg.dram_bits_per_cycle) == (64, 32, 16, 192)
    default, presets = load_presets()
    assert default == "edge" and presets["cloud"].rows * presets["cloud"].cols > cfg.rows * cfg.cols


@pytest.mark.parametrize("w,a,expected", [(8, 8, 1), (4, 4, 4), (2, 2, 16), (2, 8, 4), (4, 8, 2), (6, 8, 1),
                                          (3, 3, 4), (8, 2, 4)])
def test_speedup_is_floor_8_over_bits_squared(bf, w, a, expected):
    assert bf.model.speedup(w, a) == expected


def test_hand_worked_1x1_layer(bf):
    # 64->64 1x1 conv on 8x8: per pixel ceil(64/32)=2 column groups x ceil(64/16)=4 passes -> 8 cycles x 64 px
    spec = LayerSpec("conv", 64, 64, 1, 1, 1, 8, w_bits=8, a_bits=8)
    c = bf.simulate(spec)
    assert c.compute_cycles == 512
    # everything fits on chip: weights 4096 B + inputs 4096 B + outputs 4096 B read/written once
    assert c.dram_bytes == 12288
    assert c.stall_cycles == 0 and c.cycles == 512  # 12288 B * 8 / 192 bit = 512 cycles, hidden by compute
    assert c.latency_ms == pytest.approx(512 / 500e6 * 1e3)
    c4 = bf.simulate(spec.with_bits((4, 4)))
    # 4x4: ceil(64/(16*4)) = 1 pass -> 128 compute cycles; 6144 B -> 256 DRAM cycles -> 128 stall cycles
    assert (c4.compute_cycles, c4.dram_bytes, c4.stall_cycles, c4.cycles) == (128, 6144, 128, 256)
    assert c.energy_mj == pytest.approx(c.energy_core_mj + c.energy_buffer_mj + c.energy_dram_mj)
    assert c.energy_core_mj == pytest.approx(64 * 64 * 64 * 0.23e-9)
    assert c4.energy_core_mj == pytest.approx(c.energy_core_mj / 4)


def test_compute_bound_layer_gains_16x_from_8_to_2_bits(bf):
    spec = LayerSpec("conv", 256, 64, 3, 1, 1, 32, "relu")
    c8, c2 = bf.simulate(spec.with_bits((8, 8))), bf.simulate(spec.with_bits((2, 2)))
    assert c8.stall_cycles == 0 and c2.stall_cycles == 0
    assert c8.compute_cycles == 2 * 144 * 1024  # ceil(64/32) x ceil(256*9/16) x 32*32 pixels
    assert c8.cycles / c2.cycles == 16
    assert c8.latency_ms / c2.latency_ms == pytest.approx(16)


def test_memory_bound_layer_gains_less(bf):
    spec = LayerSpec("linear", 1024, 1024, hw=1)
    c8, c2 = bf.simulate(spec.with_bits((8, 8))), bf.simulate(spec.with_bits((2, 2)))
    assert c8.stall_cycles > c8.compute_cycles  # 1 MiB of weights over a 24 B/cycle interface
    gain = c8.cycles / c2.cycles
    assert 3.5 < gain < 4.5  # DRAM bytes shrink 4x, not 16x


def test_depthwise_layer_is_underused_and_gains_nothing_in_compute(bf):
    spec = LayerSpec("conv", 96, 96, 3, 1, 96, 16, "relu6")
    assert bf.model.compute_cycles(spec.with_bits((8, 8))) == bf.model.compute_cycles(spec.with_bits((2, 2)))


def test_float_layers_and_onnx_are_refused(bf, tmp_path):
    with pytest.raises(UnsupportedBackendError, match="no float datapath"):
        bf.simulate(LayerSpec("conv", 8, 8, 1, 1, 1, 4, name="s0.b0.dw"))
    with pytest.raises(UnsupportedBackendError, match="does not execute ONNX"):
        bf.compile(tmp_path / "m.onnx")


def test_bad_config_names_the_key(tmp_path):
    p = tmp_path / "bf.yaml"
    p.write_text("presets:\n  edge:\n    rows: 16\n    colls: 32\n")
    with pytest.raises(ConfigError, match=r"presets.edge: unknown key 'colls'"):
        load_presets(p)
    p.write_text("presets: [1, 2]\n")
    with pytest.raises(ConfigError, match="presets"):
        load_presets(p)


def test_cloud_preset_is_faster_on_a_big_layer():
    spec = LayerSpec("conv", 256, 256, 3, 1, 1, 16, w_bits=8, a_bits=8)
    edge, cloud = BitFusionModel(load_config("edge")), BitFusionModel(load_config("cloud"))
    assert cloud.simulate(spec).cycles < edge.simulate(spec).cycles


def test_profile_bitfusion_cli_builds_a_latency_and_energy_lut(tmp_path):
    out = tmp_path / "bf.json"
    assert main(["profile", "--target", "bitfusion", "--space", "mbv2-tiny", "--out", str(out)]) == 0
    lut = LatencyTable.load(out)
    assert lut.target == "bitfusion" and lut.measurement["simulated"]
    assert all("energy_mj" in e and "stall_cycles" in e for e in lut.entries.values())
    from bitnas.supernets import build_supernet

    net = build_supernet("mbv2-tiny")
    c = net.space.largest((8, 8))
    c2 = net.space.largest((2, 2)) if (2, 2) in net.space.policy_genes[0].options else None
    pred = lut.predict(net.layers(c))
    assert pred["latency_ms"] > 0 and pred["energy_mj"] > 0
    layers2 = [s.with_bits((2, 2)) for s in net.layers(c)]
    assert lut.predict(layers2)["energy_mj"] < pred["energy_mj"]
    assert c2 is None or lut.predict(net.layers(c2))["latency_ms"] < pred["latency_ms"]
    with pytest.raises(UnknownLayerError):
        lut.predict(net.layers(net.space.largest((32, 32))))
    data = json.loads(out.read_text())
    assert data["fingerprint"]["accelerator"]["rows"] == 16
    # a table simulated for another configuration is refused
    cloud = BitFusionBackend(preset="cloud")
    with pytest.raises(Exception, match="accelerator"):
        lut.check_device(cloud.fingerprint())
