import json
import math

import pytest

from bitnas.backends.bitfusion import BitFusionBackend, BitFusionModel, ConvCall, load_config, load_presets
from bitnas.cli import main
from bitnas.errors import ConfigError, UnknownLayerError, UnsupportedBackendError
from bitnas.latency_luts import LatencyTable
from bitnas.space import LayerSpec


@pytest.fixture(scope="module")
def bf():
    return BitFusionBackend()


def test_edge_preset_has_the_published_configuration():
    cfg = load_config("edge")
    assert (cfg.rows, cfg.cols, cfg.brick_bits, cfg.max_bits, cfg.frequency_mhz) == (16, 32, 2, 8, 500)
    assert (cfg.wbuf_kb, cfg.ibuf_kb, cfg.obuf_kb, cfg.dram_bits_per_cycle, cfg.psum_bits) == (64, 32, 16, 192, 32)
    e = cfg.energy_pj  # the released simulator's own energy costs for bf_e_conf.ini
    assert (e.core_per_cycle, e.dram_per_bit) == (235.104, 15.0)
    assert (e.wbuf_read_per_bit, e.ibuf_write_per_bit, e.obuf_read_per_bit) == pytest.approx(
        (0.02136565625, 0.1137040625, 0.0331553125))
    default, presets = load_presets()
    assert default == "edge" and cfg.published and "bf_e_conf.ini" in cfg.source
    cloud = presets["cloud"]
    assert cloud.rows * cloud.cols > cfg.rows * cfg.cols
    assert not cloud.published and "not a published" in cloud.source
    assert "not published" in BitFusionBackend(preset="cloud").fingerprint()["preset_origin"]


@pytest.mark.parametrize("w,a,expected", [(8, 8, 1), (4, 4, 4), (2, 2, 16), (2, 8, 4), (4, 8, 2), (6, 8, 1),
                                          (3, 3, 4), (8, 2, 4), (1, 1, 16), (16, 8, 0.5), (16, 16, 0.25)])
def test_speedup_is_floor_8_over_bits_squared(bf, w, a, expected):
    assert bf.model.speedup(w, a) == expected


def test_hand_worked_tiling_of_a_reference_layer():
    # 3->64 3x3 conv, 32x32 output, 8/8 bits, batch 1, tiles b=1, ow=oh=8, ic=3, oc=32, loops B>OC>OH>IC>OW
    m = BitFusionModel(load_config("edge"))
    c = m.evaluate(ConvCall(3, 32, 1, 3, 64, 8, 8, 1), {"B": 1, "OW": 8, "IC": 3, "OC": 32},
                   ("B", "OC", "OH", "IC", "OW"))
    # tiles: weights ceil(3*3*3/16)*16 = 32 (padded to 16 lanes) x 32 oc x 8 bit = 8192; input (8-1+3)^2 x 3
    # x 8 = 2400; partial sums 8*8*32 x 32 bit = 65536 (exactly half the 16 KiB obuf: fits)
    # innermost first: OW x4 -> input 9600 fits, psums 262144 do not (stop growing; 65536 loaded first);
    # OH x4 -> input 38400 fits, psums x4; OC x2 -> weights 16384 fit, psums x2 = 2097152 read and written
    assert c.sram_write_bits["wbuf"] == 16384 and c.sram_write_bits["ibuf"] == 38400
    assert (c.dram_read_bits, c.dram_write_bits) == (16384 + 38400 + 2097152, 2097152)
    # compute: 4*4*2 tiles x (1 b x ceil(32/32) x 8*8 px x 9 taps x ceil(3/16)) = 32 x 576
    assert c.compute_cycles == 18432
    # first fill 16384+38400+65536 = 120320 bits -> 627 cycles; last drain 65536 -> 342; the middle
    # 4249088 - 120320 - 65536 = 4063232 bits -> 21163 cycles, 2731 more than compute
    assert c.stall_cycles == 2731 + 627 + 342 == 3700 and c.cycles == 22132
    # per MAC (32 tiles x 64 px x 32 oc x 27 = 1769472) 8-bit weight and input reads; the psum tile is
    # written and read once per tile (64 x 32 x 32 bit x 32 tiles) and once per DRAM transfer
    assert c.sram_read_bits == {"wbuf": 1769472 * 8, "ibuf": 1769472 * 8, "obuf": 2097152 + 2097152}
    assert c.macs == 1769472


def test_hand_worked_layer_that_fits_on_chip(bf):
    # 16->32 1x1 conv on 4x4, 8/8: one tile holds it all, so every tiling loads everything first, drains
    # everything last, and has no middle traffic; the fewest compute cycles win
    spec = LayerSpec("conv", 16, 32, 1, 1, 1, 4, w_bits=8, a_bits=8)
    c = bf.simulate(spec)
    assert c.compute_cycles == 16  # 16 px x ceil(32/32) x ceil(16/16)
    # DRAM: weights 16*32*8 = 4096 + input 4*4*16*8 = 2048 + psums in 16*32*32 = 16384; psums out 16384
    assert (c.dram_read_bits, c.dram_write_bits) == (22528, 16384)
    assert c.stall_cycles == math.ceil(22528 / 192) + math.ceil(16384 / 192) == 118 + 86
    assert c.cycles == 220 and c.latency_ms == pytest.approx(220 / 500e6 * 1e3)
    e = load_config("edge").energy_pj
    macs = 16 * 16 * 32
    buffers = (macs * 8 * e.wbuf_read_per_bit + 4096 * e.wbuf_write_per_bit + macs * 8 * e.ibuf_read_per_bit
               + 2048 * e.ibuf_write_per_bit + 2 * 16384 * (e.obuf_read_per_bit + e.obuf_write_per_bit))
    assert c.energy_core_mj == pytest.approx(16 * e.core_per_cycle * 1e-9)
    assert c.energy_buffer_mj == pytest.approx(buffers * 1e-9)
    assert c.energy_dram_mj == pytest.approx((22528 + 16384) * 15 * 1e-9)
    assert c.energy_mj == pytest.approx(c.energy_core_mj + c.energy_buffer_mj + c.energy_dram_mj)
    # 2/2: 16 lanes x 16 MACs = 256 reduction lanes; the 16 weights per column are padded to 256:
    # 256*32*2 = 16384 weight bits (4x the 8-bit layer's), input 512 -> 33280 bits in, 174 + 86 cycles
    c2 = bf.simulate(spec.with_bits((2, 2)))
    assert (c2.compute_cycles, c2.dram_read_bits, c2.stall_cycles, c2.cycles) == (16, 33280, 260, 276)
    assert c2.cycles > c.cycles


# Rows of the released BitFusion simulator (commit 04ec1c8, bf_e_conf.ini; see
# benchmarks/bitfusion_fidelity.py): (layer, batch, im2col, cycles, stall cycles, DRAM read, DRAM write, nJ)
REFERENCE_ROWS = [
    (LayerSpec("conv", 3, 64, 3, 1, 1, 32, w_bits=8, a_bits=8), 1, False,
     22132, 3700, 2151936, 2097152, 69664.550536032),
    (LayerSpec("conv", 64, 128, 3, 2, 1, 16, w_bits=4, a_bits=8), 1, False,
     6401, 1793, 966656, 262144, 22274.505906176),
    (LayerSpec("conv", 3, 64, 3, 1, 1, 32, w_bits=8, a_bits=4), 16, True,
     358827, 326059, 35340288, 33554432, 1060030.3681029119),
    (LayerSpec("conv", 96, 480, 1, 1, 1, 14, w_bits=2, a_bits=8), 16, False,
     514944, 420864, 50700288, 48168960, 1590600.20788608),
    (LayerSpec("conv", 512, 512, 3, 1, 1, 7, w_bits=8, a_bits=2), 16, False,
     1279319, 376151, 142868480, 102760448, 4457743.346909184),
    (LayerSpec("linear", 4096, 1000, w_bits=8, a_bits=4), 16, False,
     191148, 125612, 36175872, 524288, 595501.4264750079),
    (LayerSpec("linear", 512, 10, w_bits=8, a_bits=2), 1, False, 238, 230, 43008, 1024, 665.28861132),
    (LayerSpec("conv", 32, 64, 5, 1, 1, 16, w_bits=2, a_bits=2), 16, False,  # LeNet-5 conv1
     205635, 835, 21626880, 8388608, 535564.918771712),
]


@pytest.mark.parametrize("row", REFERENCE_ROWS, ids=lambda r: f"{r[0].key}-b{r[1]}")
def test_reference_rows_match_the_released_simulator(bf, row):
    spec, batch, im2col, cycles, stall, dram_r, dram_w, nj = row
    c = bf.model.simulate(spec, batch=batch, im2col=im2col)
    assert (c.cycles, c.stall_cycles, c.dram_read_bits, c.dram_write_bits) == (cycles, stall, dram_r, dram_w)
    assert c.energy_mj * 1e6 == pytest.approx(nj, rel=1e-9)


def test_im2col_rule_for_first_layers(bf):
    first = LayerSpec("conv", 3, 64, 3, 1, 1, 32, w_bits=8, a_bits=8)
    assert bf.model.uses_im2col(first) and not bf.model.uses_im2col(LayerSpec("conv", 16, 16, 3, 1, 1, 8))
    # im2col: ceil(27/16) = 2 reduction passes per pixel and column group instead of 9 taps x 1
    assert bf.simulate(first).compute_cycles == 1024 * 2 * 2
    assert bf.model.simulate(first, im2col=False).compute_cycles == 1024 * 2 * 9


def test_compute_bound_layer_gains_16x_in_compute_from_8_to_2_bits(bf):
    spec = LayerSpec("conv", 256, 64, 3, 1, 1, 32, "relu")
    c8, c2 = bf.simulate(spec.with_bits((8, 8))), bf.simulate(spec.with_bits((2, 2)))
    assert c8.compute_cycles == 2 * 9 * 16 * 1024  # ceil(64/32) x 9 taps x ceil(256/16) x 32*32 pixels
    assert c2.compute_cycles == 2 * 9 * 1 * 1024  # ceil(256/256)
    assert c8.stall_cycles < 0.01 * c8.cycles  # only the first fill and last drain show
    # the 32-bit partial sums in and out (2 x 32*32*64*32 bits) do not shrink with the operands and alone
    # need more cycles of the 192-bit interface than the 2-bit compute: the gain stays below 16x
    assert c2.cycles >= math.ceil(2 * 32 * 32 * 64 * 32 / 192) > c2.compute_cycles
    assert c8.cycles / c2.cycles < 16


def test_memory_bound_layer_gains_less(bf):
    spec = LayerSpec("linear", 1024, 1024, hw=1)
    c8, c2 = bf.simulate(spec.with_bits((8, 8))), bf.simulate(spec.with_bits((2, 2)))
    assert c8.stall_cycles > 10 * c8.compute_cycles  # 8 Mibit of weights over a 192-bit interface
    assert 3.5 < c8.cycles / c2.cycles < 4.5  # weight bits shrink 4x, not 16x


def test_other_bitwidths(bf):
    spec = LayerSpec("conv", 256, 64, 3, 1, 1, 32)
    c8 = bf.simulate(spec.with_bits((8, 8)))
    assert bf.simulate(spec.with_bits((6, 6))).compute_cycles == c8.compute_cycles  # floor(8/6) = 1
    assert bf.simulate(spec.with_bits((16, 8))).compute_cycles == 2 * c8.compute_cycles  # two passes
    assert bf.simulate(spec.with_bits((1, 3))).compute_cycles == c8.compute_cycles // 8  # 4 x 2 per unit


def test_depthwise_layer_maps_one_group_at_a_time(bf):
    dw = LayerSpec("conv", 96, 96, 3, 1, 96, 16, "relu6")
    c8, c2 = bf.simulate(dw.with_bits((8, 8))), bf.simulate(dw.with_bits((2, 2)))
    # each group: one column, one input channel per kernel tap -> 16*16 px x 9 taps, at any precision
    assert c8.compute_cycles == c2.compute_cycles == 96 * 256 * 9
    dense = bf.simulate(LayerSpec("conv", 96, 96, 3, 1, 1, 16, w_bits=8, a_bits=8))
    assert dense.compute_cycles == 3 * 256 * 9 * 6 != c8.compute_cycles  # ceil(96/32) x px x taps x ceil(96/16)
    # each group's 9 weights are padded to 16 lanes: 96 x 16 x 8 bits, not 96 x 96 x 9 x 8
    assert c8.sram_write_bits["wbuf"] == 96 * 16 * 8 and c8.macs == 96 * 256 * 9
    assert c8.tile["groups"] == 96


def test_cost_is_json_friendly(bf):
    d = bf.simulate(LayerSpec("linear", 64, 10, w_bits=4, a_bits=4)).to_dict()
    assert set(d) >= {"latency_ms", "energy_mj", "energy_core_mj", "energy_buffer_mj", "energy_dram_mj", "cycles",
                      "stall_cycles", "compute_cycles", "dram_read_bits", "dram_write_bits"}
    assert json.loads(json.dumps(d)) == d


def test_float_layers_other_ops_and_onnx_are_refused(bf, tmp_path):
    with pytest.raises(UnsupportedBackendError, match="no float datapath"):
        bf.simulate(LayerSpec("conv", 8, 8, 1, 1, 1, 4, name="s0.b0.dw"))
    with pytest.raises(UnsupportedBackendError, match="not op 'attention'"):
        bf.simulate(LayerSpec("attention", 64, 64, groups=4, hw=16, w_bits=8, a_bits=8))
    with pytest.raises(UnsupportedBackendError, match="does not execute ONNX"):
        bf.compile(tmp_path / "m.onnx")


def test_bad_config_names_the_key(tmp_path):
    p = tmp_path / "bf.yaml"
    p.write_text("presets:\n  edge:\n    rows: 16\n    colls: 32\n")
    with pytest.raises(ConfigError, match=r"presets.edge: unknown key 'colls'"):
        load_presets(p)
    good = (load_presets()[1]["edge"].model_dump())
    bad = {**good, "energy_pj": {**good["energy_pj"], "dram_pj": 15.0}}
    p.write_text(json.dumps({"presets": {"edge": bad}}))
    with pytest.raises(ConfigError, match=r"presets.edge: unknown key 'energy_pj.dram_pj'") as exc:
        load_presets(p)
    assert str(exc.value).count("\n") == 0
    p.write_text(json.dumps({"presets": {"edge": {**good, "rows": 0}}}))
    with pytest.raises(ConfigError, match=r"presets.edge: key 'rows'"):
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
    assert all("energy_mj" in e and "stall_cycles" in e and "dram_read_bits" in e for e in lut.entries.values())
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
    assert data["fingerprint"]["accelerator"]["rows"] == 16 and data["fingerprint"]["model_version"] == 2
    # a table simulated for another configuration is refused
    cloud = BitFusionBackend(preset="cloud")
    with pytest.raises(Exception, match="accelerator"):
        lut.check_device(cloud.fingerprint())
