"""EdMIPS: composite layers match the quantized static net at one-hot selectors, costs, sweep, discretization."""

import numpy as np
import pytest
import torch

from bitnas.errors import ConfigError
from bitnas.latency_luts import LatencyTable
from bitnas.searchers import EdmipsSearcher, Objective
from bitnas.searchers.edmips import _interp
from bitnas.supernets import build_supernet
from bitnas.supernets.evaluate import calibration_batches, prepare_subnet
from bitnas.supernets.static import quantize_net

OBJ = [Objective("accuracy", "max"), Objective("latency_ms", "min")]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_supernet("mbv2-tiny")


def table(net):
    """A latency table as data (no profiling): a layer's latency grows with MACs and drops at INT8."""
    entries = {}
    for s in net.all_layer_specs():
        for b in net.d.bit_options:
            spec = s.with_bits(b)
            entries[spec.key] = {"median_ms": 1e-6 * spec.macs * (0.4 if b == (8, 8) else 1.0) + 0.001}
    return LatencyTable(target="test", fingerprint={}, measurement={"statistic": "median"}, entries=entries,
                        overhead={"median_ms": 0.001}, space=net.space.name)


def searcher(net, digits, **kw):
    opts = {"cost": "bitops", "etas": (0.0, 50.0), "steps": 3, "warm_steps": 8, "batch": 16, "calib_batches": 1}
    opts.update(kw)
    return EdmipsSearcher(net.space, OBJ, seed=0, supernet=net, data=digits, **opts)


def _select(units, w, a):
    with torch.no_grad():
        for u in units:
            u.alpha.copy_(torch.tensor([40.0 if b == w else -40.0 for b in u.w_bits]))
            u.beta.copy_(torch.tensor([40.0 if b == a else -40.0 for b in u.a_bits]))


@pytest.mark.parametrize("bits", [(8, 8), (32, 32)])
def test_composite_net_at_one_hot_selectors_is_the_quantized_subnet(net, digits, bits):
    s = searcher(net, digits)
    arch = net.space.largest().arch_dict
    comp, units, _ = s.build(arch)
    _select(units, *bits)
    cand = net.space.make(arch, {u.unit.layer_name: bits for u in units})
    calib = calibration_batches(digits, s.calib_batches, s.batch, s.seed)
    ref = quantize_net(prepare_subnet(net, cand, calib), cand.policy_dict, calib)
    x = torch.from_numpy(digits.x_val[:32])
    with torch.no_grad():
        assert torch.allclose(comp(x), ref(x), atol=1e-5)


def test_expected_bits_and_costs(net, digits):
    s = searcher(net, digits, cost="latency", lut=table(net))
    comp, units, specs = s.build(net.space.smallest().arch_dict)
    ew, ea = (float(b.detach()) for b in units[0].expected_bits())
    assert ew == pytest.approx(20.0) and ea == pytest.approx(20.0)  # equal start over {8, 32}
    fns, ref = s._cost_terms(units, specs)
    lut = table(net)
    for bits in ((8, 8), (32, 32)):
        _select(units, *bits)
        with torch.no_grad():
            got = float(s.expected_cost(units, fns))
        want = sum(lut.layer_latency(sp.with_bits(bits)) for sp in specs)
        assert got == pytest.approx(want, rel=1e-4)
    assert ref == pytest.approx(sum(lut.layer_latency(sp.with_bits((32, 32))) for sp in specs), rel=1e-6)
    with torch.no_grad():
        for u in units:
            u.alpha.zero_()
            u.beta.zero_()
    cost = s.expected_cost(units, fns)
    cost.backward()
    # w_bits are sorted (8, 32): more weight on 8 bits lowers the cost, more on 32 raises it
    assert all(u.alpha.grad[0] < 0 < u.alpha.grad[1] and u.beta.grad[0] < 0 < u.beta.grad[1] for u in units)


def test_interpolation_hits_the_knots():
    knots = [(64.0, 1.0), (256.0, 2.0), (1024.0, 0.5)]
    x = torch.tensor([64.0, 256.0, 1024.0, 160.0])
    assert torch.allclose(_interp(x, knots), torch.tensor([1.0, 2.0, 0.5, 1.5]))


def test_a_large_eta_pushes_every_layer_to_int8_and_the_supernet_is_untouched(net, digits):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    s = searcher(net, digits, batch=8)
    s.rounds = 1
    low, high = s.sweep(net.space.smallest().arch_dict)
    n8 = [sum(1 for b in c.policy_dict.values() if b == (8, 8)) for c in (low, high)]
    assert high.arch == low.arch and n8[1] == len(net.layers(high)) and n8[1] >= n8[0]
    assert [h["eta"] for h in s.history] == [0.0, 50.0]
    assert s.history[1]["relative_cost"] < s.history[0]["relative_cost"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_multinomial_discretization_gives_allowed_pairs(net, digits):
    s = searcher(net, digits, discretize="multinomial", trials=50)
    _, units, _ = s.build(net.space.smallest().arch_dict)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        units[0].alpha.copy_(torch.tensor([-5.0, 5.0]))  # w_bits sorted (8, 32): 32 is likely
        units[0].beta.copy_(torch.tensor([-5.0, 5.0]))
    assert units[0].discretize("multinomial", rng, 50) == (32, 32)
    assert all(u.discretize("multinomial", rng, 1) in u.pairs for u in units)


def test_bad_settings_are_config_errors(net, digits):
    with pytest.raises(ConfigError, match="supernet"):
        EdmipsSearcher(net.space, OBJ)
    with pytest.raises(ConfigError, match="latency table"):
        EdmipsSearcher(net.space, OBJ, supernet=net, data=digits, cost="latency")
    with pytest.raises(ConfigError, match="discretization"):
        searcher(net, digits, discretize="argmax")
