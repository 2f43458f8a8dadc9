import numpy as np
import torch

from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.quant import ActQuant, fake_quant_weight, set_calibrating, weight_qmax
from bitnas.supernets.static import fold_bn, quantize_net


def test_weight_fake_quant_is_per_channel_symmetric():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).reshape(-1, 1, 1, 1)
    q = fake_quant_weight(w, 8)
    for c in range(6):
        scale = w[c].abs().max() / 127
        levels = torch.round(q[c] / scale)
        assert torch.allclose(levels * scale, q[c], atol=1e-6)
        assert levels.abs().max() <= 127
        assert (q[c] - w[c]).abs().max() <= scale / 2 + 1e-6
    assert torch.equal(fake_quant_weight(w, 32), w)


def test_reduce_range_uses_seven_bit_weights():
    assert weight_qmax(8, reduce_range=True) == 63 and weight_qmax(8) == 127 and weight_qmax(4) == 7
    w = torch.linspace(-1, 1, 1001).reshape(1, -1)
    assert len(torch.unique(fake_quant_weight(w, 8, reduce_range=True))) == 127


def test_activation_quant_calibrates_then_quantizes_to_256_levels():
    aq = ActQuant(8)
    x = torch.linspace(-1, 3, 10000)
    aq(x)
    set_calibrating(aq, False)
    y = aq(x)
    assert len(torch.unique(y)) <= 256
    assert (y - x).abs().max() <= (4 / 255) / 2 + 1e-5
    assert torch.any(y == 0)  # zero is exactly representable


def test_all_float_policy_is_the_folded_float_net(trained, digits):
    c = trained.space.sample(np.random.default_rng(0))
    static = trained.extract(c)
    calib = calibration_batches(digits, 2)
    q = quantize_net(static, {}, calib)
    x = torch.from_numpy(digits.x_val[:8])
    with torch.no_grad():
        torch.testing.assert_close(q(x), fold_bn(static)(x))


def test_int8_policy_changes_outputs_slightly(trained, digits):
    c = trained.space.largest(policy_bits=(8, 8))
    static = trained.extract(c)
    calib = calibration_batches(digits, 2)
    q = quantize_net(static, c.policy_dict, calib)
    x = torch.from_numpy(digits.x_val[:64])
    with torch.no_grad():
        a, b = q(x), static(x)
    assert not torch.allclose(a, b)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.9
