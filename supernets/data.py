"""Data sets: the embedded digits default, CIFAR-10 python batches and ``.npz`` arrays from local files."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitnas.api import DATASETS
from bitnas.errors import DataError


@dataclass
class Dataset:
    """Float32 NCHW images normalized per channel, int64 labels, a fixed train/val split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    def batches(self, split: str, batch_size: int, rng: np.random.Generator | None = None):
        """Yield (x, y) torch batches; shuffled when ``rng`` is given."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def with_channels(data, channels: int | None, where: str):
    """``data`` with ``channels`` input channels: a 1-channel set repeated (grayscale as RGB); ``None``: as is."""
    import dataclasses

    have = int(data.in_channels)
    if channels is None or channels == have:
        return data
    if have != 1 or not dataclasses.is_dataclass(data):
        raise DataError(f"{where}: the data set has {have} channels; only a 1-channel set can be repeated to "
                        f"{channels}")
    return dataclasses.replace(data, x_train=np.repeat(data.x_train, channels, axis=1),
                               x_val=np.repeat(data.x_val, channels, axis=1))


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[2] == size and x.shape[3] == size:
        return x
    t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy()


def _normalize(x_train: np.ndarray, x_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return ((x_train - mean) / std).astype(np.float32), ((x_val - mean) / std).astype(np.float32)


def _finish(name, x_train, y_train, x_val, y_val, image_size) -> Dataset:
    x_train = _resize(x_train.astype(np.float32), image_size)
    x_val = _resize(x_val.astype(np.float32), image_size)
    x_train, x_val = _normalize(x_train, x_val)
    y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    return Dataset(name, x_train, y_train, x_val, y_val, num_classes)


def load_digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, upsampled bilinearly, with a stratified split fixed by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    return _finish("digits", x_tr, y_tr, x_va, y_va, image_size)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            # CIFAR-10's python batches are pickles by format; this reads only local files the user points at.
            return pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR-10 batch file not found") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not a batch
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 python batch (top level is {type(batch).__name__})")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, np.asarray(labels)


def load_cifar10(folder: str | Path, image_size: int = 32) -> Dataset:
    """CIFAR-10 in its python-pickle batches (``data_batch_*`` for training, ``test_batch`` for val)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: CIFAR-10 folder not found")
    train_files = sorted(folder.glob("data_batch_*"))
    if not train_files:
        raise DataError(f"{folder}: no data_batch_* files")
    parts = [_cifar_batch(p) for p in train_files]
    x_val, y_val = _cifar_batch(folder / "test_batch")
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return _finish("cifar10", x_tr, y_tr, x_val, y_val, image_size)


def load_npz(path: str | Path, image_size: int = 32) -> Dataset:
    """Arrays ``x_train, y_train, x_val, y_val`` (images NCHW or NHWC) from an ``.npz`` file."""
    path = Path(path)
    try:
        arrays = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: npz file not found") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    with arrays:
        missing = [k for k in ("x_train", "y_train", "x_val", "y_val") if k not in arrays.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {missing}; has {arrays.files}")
        xs = {k: np.asarray(arrays[k]) for k in ("x_train", "y_train", "x_val", "y_val")}
    for k in ("x_train", "x_val"):
        x = xs[k]
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        if x.ndim != 4:
            raise DataError(f"{path}: '{k}' has shape {xs[k].shape}, expected images (N,C,H,W) or (N,H,W,C)")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        xs[k] = x
    for xk, yk in (("x_train", "y_train"), ("x_val", "y_val")):
        if len(xs[xk]) != len(xs[yk]):
            raise DataError(f"{path}: '{xk}' has {len(xs[xk])} rows but '{yk}' has {len(xs[yk])}")
    return _finish(path.stem, xs["x_train"], xs["y_train"], xs["x_val"], xs["y_val"], image_size)


def _digits(path: str | None = None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    return load_digits(image_size, val_fraction, seed)


def _needs_path(name: str, path: str | None) -> str:
    if path is None:
        raise DataError(f"data set '{name}' needs a path (data.path)")
    return path


def _cifar10(path: str | None = None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    return load_cifar10(_needs_path("cifar10", path), image_size)


def _npz(path: str | None = None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    return load_npz(_needs_path("npz", path), image_size)


DATASETS.register("digits", _digits)
DATASETS.register("cifar10", _cifar10)
DATASETS.register("npz", _npz)


def load_dataset(name: str, path: str | None = None, image_size: int = 32, val_fraction: float = 0.2,
                 seed: int = 0) -> Dataset:
    """The registered data set ``name`` (or a plug-in ``module:attr``), loaded with these settings."""
    return DATASETS.get(name, "data.name")(path=path, image_size=image_size, val_fraction=val_fraction, seed=seed)
