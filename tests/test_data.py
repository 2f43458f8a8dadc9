import pickle

import numpy as np
import pytest

from bitnas.errors import DataError
from bitnas.supernets.data import load_cifar10, load_dataset, load_digits, load_npz


def test_digits_are_32x32_normalized_with_a_fixed_stratified_split(digits):
    assert digits.x_train.shape[1:] == (1, 32, 32) and digits.x_train.dtype == np.float32
    assert len(digits.y_train) + len(digits.y_val) == 1797
    assert digits.num_classes == 10
    assert abs(float(digits.x_train.mean())) < 1e-3 and abs(float(digits.x_train.std()) - 1) < 1e-2
    again = load_digits()
    assert np.array_equal(again.y_val, digits.y_val) and np.array_equal(again.x_val, digits.x_val)
    counts = np.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified 20%


def _write_cifar(folder, n_batches=2, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(n_batches)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with (folder / name).open("wb") as fh:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, fh)
    return names


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar", n_batches=2, n=6)
    ds = load_cifar10(tmp_path / "cifar")
    assert ds.x_train.shape == (12, 3, 32, 32) and ds.x_val.shape == (6, 3, 32, 32)
    assert ds.in_channels == 3 and ds.y_train.dtype == np.int64
    ds16 = load_dataset("cifar10", str(tmp_path / "cifar"), image_size=16)
    assert ds16.x_train.shape == (12, 3, 16, 16)


def test_cifar10_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_cifar10(tmp_path / "missing")
    folder = tmp_path / "c"
    _write_cifar(folder)
    (folder / "data_batch_2").write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataError, match="data_batch_2: not a CIFAR-10 python batch"):
        load_cifar10(folder)
    with (folder / "data_batch_2").open("wb") as fh:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"data_batch_2: 'data' has shape \(2, 10\)"):
        load_cifar10(folder)
    (folder / "test_batch").unlink()
    _write_cifar(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: CIFAR-10 batch file not found"):
        load_cifar10(folder)


def test_npz_arrays_nchw_and_nhwc_uint8(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.integers(0, 256, (10, 28, 28, 3), dtype=np.uint8), y_train=np.arange(10) % 4,
             x_val=rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8), y_val=np.arange(4))
    ds = load_npz(p, image_size=32)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.num_classes == 4
    p2 = tmp_path / "g.npz"
    np.savez(p2, x_train=rng.normal(size=(5, 8, 8)).astype(np.float32), y_train=np.zeros(5),
             x_val=rng.normal(size=(2, 8, 8)).astype(np.float32), y_val=np.ones(2))
    ds2 = load_dataset("npz", str(p2), image_size=16)
    assert ds2.x_val.shape == (2, 1, 16, 16)


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="npz file not found"):
        load_npz(tmp_path / "none.npz")
    p = tmp_path / "bad.npz"
    np.savez(p, x_train=np.zeros((3, 1, 8, 8)), y_train=np.zeros(3))
    with pytest.raises(DataError, match=r"bad.npz: missing array\(s\) \['x_val', 'y_val'\]"):
        load_npz(p)
    np.savez(p, x_train=np.zeros((3, 1, 8, 8)), y_train=np.zeros(2), x_val=np.zeros((1, 1, 8, 8)), y_val=np.zeros(1))
    with pytest.raises(DataError, match="'x_train' has 3 rows but 'y_train' has 2"):
        load_npz(p)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("cifar10")


def test_a_cifar_batch_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    folder = tmp_path / "cifar"
    _write_cifar(folder)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with (folder / "data_batch_1").open("wb") as fh:
        pickle.dump({b"data": Payload(), b"labels": [0]}, fh)
    with pytest.raises(DataError, match=r"data_batch_1: refused: the file asks to load '(posix|os)\.system'"):
        load_cifar10(folder)
    assert not marker.exists()
