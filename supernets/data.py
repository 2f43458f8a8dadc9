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


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes the network's input: what an artifact's manifest records and ``bitnas run
    --image`` applies, exactly as the data set was prepared.

    A raw value divided by ``raw_scale`` lies in [0, 1] (255 for 8-bit images; scikit-learn's digits count
    0..16); the image is resized bilinearly (``align_corners=False``) to ``size`` x ``size``, normalized per
    channel with ``mean`` and ``std``, and a one-channel set is repeated to ``channels`` (grayscale fed to an
    RGB network). The network reads NCHW float32.
    """

    raw_scale: float
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int

    def to_dict(self) -> dict:
        return {"raw_scale": self.raw_scale, "resize": [self.size, self.size], "interpolation": "bilinear",
                "align_corners": False, "mean": list(self.mean), "std": list(self.std), "channels": self.channels,
                "layout": "NCHW", "dtype": "float32"}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Preprocess:
        try:
            pre = cls(float(d["raw_scale"]), int(d["resize"][0]), tuple(float(v) for v in d["mean"]),
                      tuple(float(v) for v in d["std"]), int(d["channels"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{where}: malformed 'preprocess' record ({exc!r})") from None
        if not (pre.raw_scale > 0 and pre.size > 0 and len(pre.mean) == len(pre.std) > 0
                and all(v > 0 for v in pre.std) and pre.channels in (len(pre.mean), *(() if len(pre.mean) > 1
                                                                                       else (pre.channels,)))):
            raise DataError(f"{where}: 'preprocess' record is inconsistent: {d}")
        return pre

    def apply(self, images: np.ndarray, raw_scale: float | None = None) -> np.ndarray:
        """Raw images, (H,W), (H,W,C), (C,H,W), (N,H,W), (N,H,W,C) or (N,C,H,W), to the network's input."""
        x = np.asarray(images, dtype=np.float32)
        colour = (1, 3, 4)
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            if x.shape[-1] in colour and x.shape[0] not in colour:
                x = x.transpose(2, 0, 1)[None]
            elif x.shape[0] in colour:
                x = x[None]
            else:
                x = x[:, None]
        elif x.ndim == 4:
            if x.shape[-1] in colour and x.shape[1] not in colour:
                x = x.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"images of shape {x.shape}: expected (H,W), (H,W,C), (C,H,W) or a batch of them")
        if x.shape[1] == 4:  # drop alpha
            x = x[:, :3]
        stats = len(self.mean)
        if x.shape[1] == 3 and stats == 1:
            x = x.mean(axis=1, keepdims=True)  # colour image for a grayscale network
        elif x.shape[1] == 1 and stats == 3:
            x = np.repeat(x, 3, axis=1)
        x = x / float(raw_scale or self.raw_scale)
        x = _resize(np.ascontiguousarray(x, dtype=np.float32), self.size)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        x = ((x - mean) / std).astype(np.float32)
        if x.shape[1] == 1 and self.channels > 1:
            x = np.repeat(x, self.channels, axis=1)
        return x


@dataclass
class Dataset:
    """Float32 NCHW images normalized per channel, int64 labels, a fixed train/val split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    preprocess: Preprocess | None = None  # how a raw image became these arrays (None: not known)

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


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout PyTorch's CPU convolutions run fastest on: channels-last for image batches
    (1.2-2x per training step here for the MobileNet families, whose depthwise kernels gain most); the values
    and their NCHW indexing are unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def with_channels(data, channels: int | None, where: str):
    """``data`` with ``channels`` input channels: a 1-channel set repeated (grayscale as RGB); ``None``: as is."""
    import dataclasses

    have = int(data.in_channels)
    if channels is None or channels == have:
        return data
    if have != 1 or not dataclasses.is_dataclass(data):
        raise DataError(f"{where}: the data set has {have} channels; only a 1-channel set can be repeated to "
                        f"{channels}")
    pre = getattr(data, "preprocess", None)
    extra = {"preprocess": dataclasses.replace(pre, channels=channels)} if pre is not None else {}
    return dataclasses.replace(data, x_train=np.repeat(data.x_train, channels, axis=1),
                               x_val=np.repeat(data.x_val, channels, axis=1), **extra)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[2] == size and x.shape[3] == size:
        return x
    t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy()


def _finish(name, x_train, y_train, x_val, y_val, image_size, raw_scale: float) -> Dataset:
    """Images already divided by ``raw_scale`` (in [0, 1]): resized, normalized with the train split's
    per-channel statistics, recorded as the set's ``Preprocess``."""
    x_train = _resize(x_train.astype(np.float32), image_size)
    x_val = _resize(x_val.astype(np.float32), image_size)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    x_train, x_val = ((x_train - mean) / std).astype(np.float32), ((x_val - mean) / std).astype(np.float32)
    y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    pre = Preprocess(float(raw_scale), int(image_size), tuple(float(v) for v in mean.reshape(-1)),
                     tuple(float(v) for v in std.reshape(-1)), int(x_train.shape[1]))
    return Dataset(name, x_train, y_train, x_val, y_val, num_classes, pre)


def load_digits(image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, upsampled bilinearly, with a stratified split fixed by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    return _finish("digits", x_tr, y_tr, x_va, y_va, image_size, raw_scale=16.0)


# what a CIFAR-10 python batch may ask the unpickler for: numpy arrays (however numpy pickled them) and
# Python 2 bytes; any other global (os.system, builtins.eval, ...) would run code, and is refused
_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


class _Refused(Exception):
    pass


def _unpickle(path: Path) -> dict:
    """A CIFAR-10 python batch (a pickle by format), read data-only: arrays, lists, bytes, nothing callable."""
    try:
        with path.open("rb") as fh:
            return _DataOnlyUnpickler(fh, encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{path}: refused: the file asks to load '{exc}', which a CIFAR-10 batch never holds "
                        "(it could run code); only arrays, lists and bytes are read") from None
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
    return _finish("cifar10", x_tr, y_tr, x_val, y_val, image_size, raw_scale=255.0)


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
    raw_scale = 1.0  # float images are taken as given; 8-bit ones are divided by 255
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
            raw_scale = 255.0
        xs[k] = x
    for xk, yk in (("x_train", "y_train"), ("x_val", "y_val")):
        if len(xs[xk]) != len(xs[yk]):
            raise DataError(f"{path}: '{xk}' has {len(xs[xk])} rows but '{yk}' has {len(xs[yk])}")
    return _finish(path.stem, xs["x_train"], xs["y_train"], xs["x_val"], xs["y_val"], image_size, raw_scale)


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
