"""QFA bit schedules: the two-stage default and the single-stage baseline (``stage1_epochs=0``)."""

import pytest
import torch

from bitnas.errors import ConfigError
from bitnas.supernets import build_supernet
from bitnas.supernets.data import Dataset, load_digits
from bitnas.supernets.qat_train import default_schedule, train_qat_supernet


@pytest.fixture(scope="module")
def space():
    return build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16).space


def test_two_stage_default_mixes_in_float_then_low_bits_only(space):
    assert default_schedule(space, 9) == [(3, (2, 3, 4, 32)), (6, (2, 3, 4))]
    assert default_schedule(space, 12, 3) == [(3, (32,)), (3, (2, 3, 4, 32)), (6, (2, 3, 4))]


def test_single_stage_is_low_bits_for_the_same_epochs(space):
    one = default_schedule(space, 9, stage1_epochs=0)
    assert one == [(9, (2, 3, 4))]
    assert default_schedule(space, 12, 3, stage1_epochs=0) == [(3, (32,)), (9, (2, 3, 4))]
    two = default_schedule(space, 9)
    assert sum(e for e, _ in one) == sum(e for e, _ in two)
    assert all(32 not in bits for _, bits in one)
    with pytest.raises(ConfigError):
        default_schedule(space, 4, 3, stage1_epochs=2)


def test_single_stage_trains_with_low_bits_only():
    d = load_digits(image_size=16)
    data = Dataset(d.name, d.x_train[:32], d.y_train[:32], d.x_val[:16], d.y_val[:16], d.num_classes)
    torch.manual_seed(0)
    net = build_supernet("qfa-mbv3-tiny", "mbv3", image_size=16)
    res = train_qat_supernet(net, data, default_schedule(net.space, 1, stage1_epochs=0), batch_size=32,
                             n_random=0, seed=0)
    assert [h["bits"] for h in res["history"]] == [[2, 3, 4]]
    assert res["settings"]["schedule"] == [[1, [2, 3, 4]]]
