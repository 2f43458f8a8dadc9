import numpy as np
import pytest
import torch

from bitnas.supernets import build_supernet
from bitnas.supernets.evaluate import accuracy, calibration_batches, prepare_subnet
from bitnas.supernets.static import fold_bn
from bitnas.supernets.train import train_supernet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = build_supernet("mbv2-tiny").eval()
    # non-trivial BN statistics so that slicing mistakes show up
    with torch.no_grad():
        for m in n.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return n


def test_extract_computes_what_the_supernet_computes(net, digits):
    x = torch.from_numpy(digits.x_val[:16])
    rng = np.random.default_rng(0)
    cands = [net.space.largest(), net.space.smallest()] + [net.space.sample(rng) for _ in range(12)]
    for c in cands:
        with torch.no_grad():
            expected = net(x, c)
            got = net.extract(c)(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_extracted_subnets_differ_by_architecture(net, digits):
    x = torch.from_numpy(digits.x_val[:4])
    with torch.no_grad():
        a = net.extract(net.space.largest())(x)
        b = net.extract(net.space.smallest())(x)
    assert not torch.allclose(a, b)


def test_layers_match_the_extracted_units_in_order(net):
    rng = np.random.default_rng(1)
    for _ in range(10):
        c = net.space.sample(rng)
        layers = net.layers(c)
        units = net.extract(c).units()
        assert [s.name for s in layers] == [u.layer_name for u in units]
        for s, u in zip(layers, units):
            assert s.bits == tuple(c.policy_dict[s.name])
            if s.op == "conv":
                assert (s.cout, s.cin // s.groups, s.kernel, s.kernel) == tuple(u.conv.weight.shape)
                assert s.stride == u.conv.stride[0] and s.groups == u.conv.groups
            else:
                assert (s.cout, s.cin) == tuple(u.fc.weight.shape)


def test_all_layer_specs_cover_every_candidate(net):
    keys = {s.key for s in net.all_layer_specs()}
    rng = np.random.default_rng(2)
    for c in [net.space.largest(), net.space.smallest()] + [net.space.sample(rng) for _ in range(200)]:
        for s in net.layers(c):
            assert s.with_bits((32, 32)).key in keys, s


def test_fold_bn_keeps_outputs(net, digits):
    x = torch.from_numpy(digits.x_val[:8])
    static = net.extract(net.space.sample(np.random.default_rng(3)))
    with torch.no_grad():
        torch.testing.assert_close(fold_bn(static)(x), static(x), rtol=1e-4, atol=1e-4)


def test_training_learns_and_bn_recalibration_matters(trained, digits):
    calib = calibration_batches(digits, 4)
    acc = accuracy(prepare_subnet(trained, trained.space.largest(), calib), digits)
    assert acc > 0.8
    small = accuracy(prepare_subnet(trained, trained.space.smallest(), calib), digits)
    assert small > 0.5


def test_training_resumes_from_checkpoint_to_the_same_weights(digits, tmp_path):
    from bitnas.supernets.data import Dataset

    small = Dataset("d", digits.x_train[:128], digits.y_train[:128], digits.x_val[:64], digits.y_val[:64], 10)
    torch.manual_seed(0)
    full = build_supernet("mbv2-tiny")
    train_supernet(full, small, epochs=2, batch_size=64, n_random=1, seed=5)

    ckpt = tmp_path / "ck.pt"
    torch.manual_seed(0)
    first = build_supernet("mbv2-tiny")
    # a run killed right after its first epoch's checkpoint
    with pytest.raises(_Killed):
        train_supernet(first, small, epochs=2, batch_size=64, n_random=1, seed=5, checkpoint=ckpt,
                       progress=_kill_after_epoch)
    torch.manual_seed(123)  # a resumed process starts from different global RNG state
    resumed = build_supernet("mbv2-tiny")
    info = train_supernet(resumed, small, epochs=2, batch_size=64, n_random=1, seed=5, checkpoint=ckpt)
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


class _Killed(Exception):
    pass


def _kill_after_epoch(epoch, total, history):
    raise _Killed


def test_a_checkpoint_of_other_settings_is_kept_aside_not_overwritten(digits, tmp_path):
    from bitnas.supernets.data import Dataset

    small = Dataset("d", digits.x_train[:64], digits.y_train[:64], digits.x_val[:32], digits.y_val[:32], 10)
    ckpt = tmp_path / "supernet.pt"
    torch.manual_seed(0)
    first = train_supernet(build_supernet("mbv2-tiny"), small, epochs=1, batch_size=64, n_random=0, seed=1,
                           checkpoint=ckpt)
    before = ckpt.read_bytes()
    torch.manual_seed(0)
    second = train_supernet(build_supernet("mbv2-tiny"), small, epochs=1, batch_size=64, n_random=0, seed=2,
                            checkpoint=ckpt)  # one setting changed
    assert first["fingerprint"] != second["fingerprint"]
    (aside,) = [p for p in tmp_path.iterdir() if p.name != "supernet.pt"]
    assert aside.name == f"supernet.{first['fingerprint'][:16]}.old.pt" and aside.read_bytes() == before
    torch.manual_seed(0)  # the same settings again: resumed (finished), nothing moved
    third = train_supernet(build_supernet("mbv2-tiny"), small, epochs=1, batch_size=64, n_random=0, seed=2,
                           checkpoint=ckpt)
    assert third["fingerprint"] == second["fingerprint"] and len(list(tmp_path.iterdir())) == 2
