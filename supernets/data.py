"""Data sets: the embedded digits default, CIFAR-10 python batches and ``.npz`` arrays, held in memory; and
image folders (JPEG/PNG files, one folder per class), decoded batch by batch as they are read.

Both kinds implement ``bitnas.api.TaskData``, the one interface every command reads a data set through:
``batches``, ``count``, ``head`` and ``digest`` besides the shape (``in_channels``, ``image_size``,
``num_classes``) and the ``preprocess`` record.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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

    ``crop`` (image folders): the shorter side is resized to ``size`` and the centre ``size`` x ``size``
    square is cut out (torchvision's ``Resize(size)`` then ``CenterCrop(size)``), rather than the whole
    image squeezed to a square; ``antialias`` filters before downscaling (as torchvision and Pillow do).
    The record holds their keys only when set, so a record written before they existed means the same.
    """

    raw_scale: float
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    crop: bool = False
    antialias: bool = False

    def to_dict(self) -> dict:
        return {"raw_scale": self.raw_scale, "resize": [self.size, self.size], "interpolation": "bilinear",
                "align_corners": False, **({"resize_mode": CROP} if self.crop else {}),
                **({"antialias": True} if self.antialias else {}), "mean": list(self.mean), "std": list(self.std),
                "channels": self.channels, "layout": "NCHW", "dtype": "float32"}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Preprocess:
        try:
            mode = d.get("resize_mode", STRETCH)
            if mode not in (STRETCH, CROP):
                raise ValueError(f"resize_mode {mode!r}: expected '{STRETCH}' or '{CROP}'")
            pre = cls(float(d["raw_scale"]), int(d["resize"][0]), tuple(float(v) for v in d["mean"]),
                      tuple(float(v) for v in d["std"]), int(d["channels"]), mode == CROP,
                      bool(d.get("antialias", False)))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
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
        x = np.ascontiguousarray(x, dtype=np.float32)
        x = _resize_crop(x, self.size, self.antialias) if self.crop else _resize(x, self.size, self.antialias)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        x = ((x - mean) / std).astype(np.float32)
        if x.shape[1] == 1 and self.channels > 1:
            x = np.repeat(x, self.channels, axis=1)
        return x


STRETCH, CROP = "stretch", "shorter-side-center-crop"  # Preprocess's resize modes, as its record names them
SPLITS = ("train", "val")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: a data set has the splits 'train' and 'val'")
    return split


@dataclass
class Dataset:
    """In memory: float32 NCHW images normalized per channel, int64 labels, a fixed train/val split."""

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

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.x_train, self.y_train) if _check_split(split) == "train" else (self.x_val, self.y_val)

    def count(self, split: str) -> int:
        return len(self._split(split)[1])

    def head(self, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` images and labels of ``split`` (all of them: ``None``), in ``batches`` order."""
        x, y = self._split(split)
        return x[:n], y[:n]

    def digest(self) -> str:
        """What caches key on: the images of both splits."""
        from bitnas.cache import array_digest

        return array_digest(self.x_train, self.x_val)

    def batches(self, split: str, batch_size: int, rng: np.random.Generator | None = None):
        """Yield (x, y) torch batches; shuffled when ``rng`` is given."""
        x, y = self._split(split)
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
    if have != 1 or not isinstance(data, Dataset):
        raise DataError(f"{where}: the data set has {have} channels; only a 1-channel set can be repeated to "
                        f"{channels}")
    pre = getattr(data, "preprocess", None)
    extra = {"preprocess": dataclasses.replace(pre, channels=channels)} if pre is not None else {}
    return dataclasses.replace(data, x_train=np.repeat(data.x_train, channels, axis=1),
                               x_val=np.repeat(data.x_val, channels, axis=1), **extra)


def _resize(x: np.ndarray, size: int, antialias: bool = False) -> np.ndarray:
    if x.shape[2] == size and x.shape[3] == size:
        return x
    t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=antialias)
    return t.numpy()


def _resize_crop(x: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    """The shorter side resized to ``size``, then the centre square (torchvision's rounding)."""
    h, w = x.shape[2], x.shape[3]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    t = torch.from_numpy(x)
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(t[:, :, top:top + size, left:left + size].numpy())


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STATS_SAMPLE = 256  # train images the per-channel mean and std are estimated from, when not given


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """An image file decoded by Pillow to uint8 (1, C, H, W): converted to grayscale (Pillow's ``L``) for
    ``channels`` 1, to RGB otherwise. ``bitnas run --image`` and image folders both read files with it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except Exception as exc:  # noqa: BLE001 - any file Pillow cannot decode is the user's input
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return img[None, None] if img.ndim == 2 else img.transpose(2, 0, 1)[None]


class ImageFolderDataset:
    """JPEG/PNG files with their labels, decoded a batch at a time as they are read (nothing holds the set).

    Each file goes through ``read_image`` and ``preprocess.apply``, the very steps ``bitnas run --image``
    takes for a raw image: the shorter side resized to ``image_size`` (bilinear, antialiased), the centre
    square cut out, divided by 255, normalized per channel. ``workers`` threads decode (Pillow and torch
    release the GIL); the next batch is decoded while the caller works on the current one. The order of
    each split is a fixed shuffle, so ``head`` gives a mix of classes.
    """

    def __init__(self, name: str, root: Path, files: dict[str, list[str]], labels: dict[str, np.ndarray],
                 classes: list[str], preprocess: Preprocess, workers: int | None = None):
        self.name, self.root, self.classes, self.preprocess = name, root, list(classes), preprocess
        self.num_classes = len(self.classes)
        self._files, self._labels = files, labels  # paths as str: a third of a Path's memory, per file
        self.workers = max(1, workers or min(4, os.cpu_count() or 1))
        self._digest: str | None = None

    @property
    def in_channels(self) -> int:
        return self.preprocess.channels

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    def count(self, split: str) -> int:
        return len(self._files[_check_split(split)])

    def files(self, split: str) -> list[Path]:
        """The image files of ``split``, in ``batches`` order (``labels`` holds their classes)."""
        return [Path(p) for p in self._files[_check_split(split)]]

    def labels(self, split: str) -> np.ndarray:
        return self._labels[_check_split(split)].copy()

    def _decode(self, path: str) -> np.ndarray:
        return self.preprocess.apply(read_image(path, len(self.preprocess.mean)), raw_scale=255.0)

    def _stream(self, paths: list[str], batch_size: int):
        """The images of ``paths`` decoded, ``batch_size`` at a time, the next batch while this one is used."""
        chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
        pool = ThreadPoolExecutor(self.workers)
        try:
            pending = [pool.submit(self._decode, p) for p in chunks[0]] if chunks else []
            for k in range(len(chunks)):
                x = np.concatenate([f.result() for f in pending])
                pending = [pool.submit(self._decode, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
                yield x
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def head(self, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` images and labels of ``split`` (all of them: ``None``), in ``batches`` order,
        decoded now."""
        files, labels = self._files[_check_split(split)][:n], self._labels[split][:n]
        x = list(self._stream(files, 64))
        empty = np.zeros((0, self.in_channels, self.image_size, self.image_size), np.float32)
        return (np.concatenate(x) if x else empty), labels.copy()

    def batches(self, split: str, batch_size: int, rng: np.random.Generator | None = None):
        """Yield (x, y) torch batches decoded from the files; shuffled when ``rng`` is given."""
        files, labels = self._files[_check_split(split)], self._labels[split]
        order = rng.permutation(len(files)) if rng is not None else np.arange(len(files))
        xs = self._stream([files[j] for j in order], batch_size)
        try:
            for i, x in zip(range(0, len(order), batch_size), xs):
                yield torch.from_numpy(x), torch.from_numpy(labels[order[i:i + batch_size]])
        finally:
            xs.close()  # a caller that stops early (calibration) stops the decoding now

    def digest(self) -> str:
        """What caches key on: the preprocessing and every file's path, label, size and modification time
        (a changed file changes them; its bytes are not read again)."""
        if self._digest is None:
            h = hashlib.sha256(json.dumps({"classes": self.classes, "preprocess": self.preprocess.to_dict()},
                                          sort_keys=True).encode())
            skip = len(str(self.root)) + 1  # paths are hashed relative to the root: a moved folder is the same
            for split in SPLITS:
                for p, y in zip(self._files[split], self._labels[split]):
                    try:
                        st = os.stat(p)
                    except OSError as exc:
                        raise DataError(f"{p}: image file unreadable since the folder was listed ({exc})") from None
                    h.update(f"{split}|{p[skip:]}|{int(y)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            self._digest = h.hexdigest()
        return self._digest


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:  # the directory's own file types: no stat per file
        names = sorted(e.name for e in entries if not e.name.startswith(".")
                       and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())
    return [os.path.join(folder, n) for n in names]


def _class_folders(folder: Path) -> tuple[list[str], list[list[str]]]:
    """The class folders under ``folder`` (sorted names: class index) and each one's image files."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found" if not folder.exists() else f"{folder}: not a folder")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = " (it holds images: put each class's images in a folder of its own)" if _images_in(folder) else ""
        raise DataError(f"{folder}: no class folders{loose}")
    if len(classes) < 2:
        raise DataError(f"{folder}: one class folder ('{classes[0]}'); a classifier needs at least 2")
    files = [_images_in(folder / c) for c in classes]

    def nested(where: list[str]) -> str:  # class folders holding folders: a train/val layout gone wrong?
        if any(p.is_dir() for c in where for p in (folder / c).iterdir()):
            return f" (it holds folders: a train/val layout needs both {folder / 'train'} and {folder / 'val'})"
        return ""

    if not any(files):
        raise DataError(f"{folder}: no .jpg, .jpeg or .png images in its {len(classes)} class folders"
                        f"{nested(classes)}")
    for c, fs in zip(classes, files):
        if not fs:
            raise DataError(f"{folder / c}: class folder holds no .jpg, .jpeg or .png images{nested([c])}")
    return classes, files


def _split_folder(root: Path, val_fraction: float, seed: int):
    """(classes, {split: files}, {split: labels}): from ``root/train`` and ``root/val`` when both exist,
    else a per-class split of ``root``'s class folders (``val_fraction`` of each class, fixed by ``seed``)."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = _class_folders(root / "train")
        val_classes, val = _class_folders(root / "val")
        if val_classes != classes:
            missing, extra = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
            raise DataError(f"{root / 'val'}: its class folders differ from {root / 'train'}'s"
                            + (f"; missing {missing}" if missing else "") + (f"; extra {extra}" if extra else ""))
        per_class = {"train": train, "val": val}
    else:
        classes, files = _class_folders(root)
        per_class = {"train": [], "val": []}
        for k, fs in enumerate(files):
            n = len(fs)
            n_val = min(max(int(round(n * val_fraction)), 1), n - 1) if n > 1 else 0
            perm = np.random.default_rng([seed, k]).permutation(n)
            per_class["val"].append([fs[i] for i in sorted(perm[:n_val])])
            per_class["train"].append([fs[i] for i in sorted(perm[n_val:])])
    out_files, out_labels = {}, {}
    for s, split in enumerate(SPLITS):
        flat = [(p, k) for k, fs in enumerate(per_class[split]) for p in fs]
        order = np.random.default_rng([seed, s, 0]).permutation(len(flat))  # apart from the per-class [seed, k]
        out_files[split] = [flat[i][0] for i in order]
        out_labels[split] = np.asarray([flat[i][1] for i in order], dtype=np.int64)
    return classes, out_files, out_labels


def load_image_folder(path: str | Path, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                      channels: int | None = None, mean: list[float] | None = None,
                      std: list[float] | None = None, workers: int | None = None) -> ImageFolderDataset:
    """An image folder: one sub-folder per class (class index: sorted folder names) holding .jpg, .jpeg or
    .png files; ``path/train`` and ``path/val`` with class folders each, or else a per-class split of
    ``val_fraction`` fixed by ``seed``. Read as RGB, or grayscale for ``channels`` 1. ``mean``/``std``
    (per channel, in [0, 1] units: ImageNet's are [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]) normalize;
    without them they are estimated from up to 256 train images, decoded one batch at a time. Nothing else is
    decoded here: a file that does not decode is named when a batch first reads it."""
    root = Path(path)
    if channels not in (None, 1, 3):
        raise DataError(f"data.channels {channels}: an image folder is read as RGB (3) or grayscale (1)")
    c = channels or 3
    if (mean is None) != (std is None):
        raise DataError("data.mean and data.std: give both or neither")
    for key, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) != c:
            raise DataError(f"data.{key} has {len(v)} values; the images are read with {c} channel(s)")
    if std is not None and not all(s > 0 for s in std):
        raise DataError(f"data.std {list(std)}: every value must be > 0")
    classes, files, labels = _split_folder(root, val_fraction, seed)
    pre = Preprocess(255.0, int(image_size), (0.0,) * c, (1.0,) * c, c, crop=True, antialias=True)
    data = ImageFolderDataset(root.name, root, files, labels, classes, pre, workers)
    if mean is not None:
        data.preprocess = replace(pre, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
        return data
    total, sq, n = np.zeros(c), np.zeros(c), 0
    for x in data._stream(files["train"][:STATS_SAMPLE], 32):  # the train order is a fixed shuffle
        x = x.astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        sq += (x * x).sum(axis=(0, 2, 3))
        n += len(x)
    pixels = n * image_size * image_size
    m = total / pixels
    s = np.sqrt(np.maximum(sq / pixels - m * m, 0.0)) + 1e-6
    data.preprocess = replace(pre, mean=tuple(float(v) for v in m), std=tuple(float(v) for v in s))
    return data


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


def _image_folder(path: str | None = None, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                  channels: int | None = None, mean: list[float] | None = None,
                  std: list[float] | None = None) -> ImageFolderDataset:
    return load_image_folder(_needs_path("image-folder", path), image_size, val_fraction, seed, channels, mean, std)


DATASETS.register("digits", _digits)
DATASETS.register("cifar10", _cifar10)
DATASETS.register("npz", _npz)
DATASETS.register("image-folder", _image_folder)


def load_dataset(name: str, path: str | None = None, image_size: int = 32, val_fraction: float = 0.2,
                 seed: int = 0, **options):
    """The registered data set ``name`` (or a plug-in ``module:attr``), loaded with these settings;
    ``options`` (``channels``, ``mean``, ``std`` for image-folder) go to loaders that take them."""
    return DATASETS.get(name, "data.name")(path=path, image_size=image_size, val_fraction=val_fraction, seed=seed,
                                           **options)
