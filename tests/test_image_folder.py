"""The image-folder data set: one folder per class of JPEG/PNG files, decoded a batch at a time with the
project's preprocessing; its split, statistics and errors; and a tiny project trained and searched on it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bitnas.api import TaskData
from bitnas.errors import DataError
from bitnas.supernets import data as data_mod
from bitnas.supernets.data import ImageFolderDataset, Preprocess, load_dataset

# a distinct colour per class, so a classifier can tell them apart (and a grayscale read still can)
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "fox": (50, 60, 230)}


def _image(colour, i: int, size=(20, 14)) -> Image.Image:
    """A noisy colour field with a darker stripe, ``size`` (w, h) pixels; a non-square size exercises the crop."""
    rng = np.random.default_rng(i)
    w, h = size
    img = np.clip(np.array(colour, np.float32) + rng.normal(0, 20, (h, w, 3)), 0, 255)
    img[:, (i % w): (i % w) + 3] *= 0.5
    return Image.fromarray(img.astype(np.uint8))


def write_folder(root: Path, n: int = 12, classes=COLOURS, start: int = 0) -> Path:
    """``n`` images per class folder, alternately PNG and JPEG (upper-case suffixes too)."""
    for k, (name, colour) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            suffix = (".png", ".jpg", ".JPEG", ".PNG")[i % 4]
            _image(colour, 100 * k + i).save(root / name / f"img{i:03d}{suffix}")
    return root


@pytest.fixture()
def folder(tmp_path):
    return write_folder(tmp_path / "shapes")


class Counting:
    """``read_image`` wrapped to count the files it decodes."""

    def __init__(self, monkeypatch):
        self.calls, real = [], data_mod.read_image

        def counted(path, channels=3):
            self.calls.append(Path(path).name)
            return real(path, channels)

        monkeypatch.setattr(data_mod, "read_image", counted)


def test_folder_loads_with_shapes_labels_and_normalization(folder):
    ds = load_dataset("image-folder", path=str(folder), image_size=16, val_fraction=0.25, seed=0)
    assert isinstance(ds, ImageFolderDataset) and isinstance(ds, TaskData)
    assert ds.classes == ["cat", "dog", "fox"] and ds.num_classes == 3
    assert (ds.in_channels, ds.image_size, ds.name) == (3, 16, "shapes")
    assert ds.count("train") == 27 and ds.count("val") == 9  # 3 of each class's 12
    assert np.bincount(ds.labels("val"), minlength=3).tolist() == [3, 3, 3]
    for f, y in zip(ds.files("train") + ds.files("val"), np.concatenate([ds.labels("train"), ds.labels("val")])):
        assert f.parent.name == ds.classes[y]
    batches = list(ds.batches("train", 10))
    assert [tuple(x.shape) for x, _ in batches] == [(10, 3, 16, 16), (10, 3, 16, 16), (7, 3, 16, 16)]
    x = np.concatenate([b[0].numpy() for b in batches])
    assert x.dtype == np.float32
    # the train statistics were estimated from all 27 train images (fewer than the 256 sampled)
    assert np.allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-3) and np.allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)
    assert np.array_equal(np.concatenate([b[1].numpy() for b in batches]), ds.labels("train"))
    # the record reproduces a batch from the raw file, as `bitnas run --image` would
    pre = Preprocess.from_dict(json.loads(json.dumps(ds.preprocess.to_dict())), "manifest")
    assert pre == ds.preprocess and pre.crop and pre.antialias
    one = pre.apply(np.asarray(Image.open(ds.files("train")[0]).convert("RGB")), raw_scale=255.0)
    np.testing.assert_allclose(one, x[:1], atol=1e-5)
    hx, hy = ds.head("val", 4)
    assert hx.shape == (4, 3, 16, 16) and np.array_equal(hy, ds.labels("val")[:4])
    shuffled = np.concatenate([y.numpy() for _, y in ds.batches("val", 4, np.random.default_rng(1))])
    assert sorted(shuffled.tolist()) == sorted(ds.labels("val").tolist())


def test_the_shorter_side_is_resized_and_the_centre_cropped():
    wide = np.zeros((1, 1, 4, 8), np.float32)
    wide[..., 2:6] = 255.0  # a bright centre square between dark margins
    pre = Preprocess(255.0, 4, (0.0,), (1.0,), 1, crop=True)
    np.testing.assert_allclose(pre.apply(wide), np.ones((1, 1, 4, 4)))
    stretch = Preprocess(255.0, 4, (0.0,), (1.0,), 1).apply(wide)  # the whole image squeezed: margins stay
    assert stretch[0, 0, 0, 0] < 0.5


def test_batches_decode_lazily_and_nothing_holds_the_images(folder, monkeypatch):
    count = Counting(monkeypatch)
    ds = load_dataset("image-folder", path=str(folder), image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    assert count.calls == []  # given statistics: loading decodes nothing
    assert ds.preprocess.mean == (0.5, 0.5, 0.5) and ds.preprocess.std == (0.25, 0.25, 0.25)
    assert not [v for v in vars(ds).values() if isinstance(v, np.ndarray) and v.dtype == np.float32]
    assert pickle.loads(pickle.dumps(ds)).count("val") == ds.count("val")  # a process pool can take it
    it = ds.batches("train", 4)
    next(it)
    assert len(count.calls) <= 8  # this batch and the next one, decoded ahead
    it.close()
    ds.head("val", 2)
    assert len(count.calls) <= 10
    count.calls.clear()
    assert sum(len(y) for _, y in ds.batches("val", 5)) == ds.count("val") == len(count.calls)
    count.calls.clear()
    load_dataset("image-folder", path=str(folder), image_size=16)  # statistics from the train images only
    assert len(count.calls) == ds.count("train")


def test_statistics_sample_is_bounded(folder, monkeypatch):
    monkeypatch.setattr(data_mod, "STATS_SAMPLE", 5)
    count = Counting(monkeypatch)
    load_dataset("image-folder", path=str(folder), image_size=8)
    assert len(count.calls) == 5


def test_split_is_fixed_by_the_seed_and_per_class(folder):
    a = load_dataset("image-folder", path=str(folder), image_size=8, seed=3, mean=[0.5] * 3, std=[0.2] * 3)
    b = load_dataset("image-folder", path=str(folder), image_size=8, seed=3, mean=[0.5] * 3, std=[0.2] * 3)
    c = load_dataset("image-folder", path=str(folder), image_size=8, seed=4, mean=[0.5] * 3, std=[0.2] * 3)
    assert a.files("val") == b.files("val") and a.files("train") == b.files("train")
    assert set(a.files("val")) != set(c.files("val"))
    assert not set(a.files("val")) & set(a.files("train"))
    assert a.digest() == b.digest() != c.digest()
    # a class added later does not move the others' files between splits
    write_folder(folder, n=12, classes={"owl": (200, 200, 30)})
    d = load_dataset("image-folder", path=str(folder), image_size=8, seed=3, mean=[0.5] * 3, std=[0.2] * 3)
    assert {f for f in d.files("val") if f.parent.name != "owl"} == set(a.files("val"))


def test_train_and_val_folders_are_used_as_they_are(tmp_path):
    root = tmp_path / "tv"
    write_folder(root / "train", n=8)
    write_folder(root / "val", n=3, start=50)
    ds = load_dataset("image-folder", path=str(root), image_size=8, val_fraction=0.5, channels=1)
    assert ds.count("train") == 24 and ds.count("val") == 9
    assert all(f.parts[-3] == "val" for f in ds.files("val"))
    assert ds.in_channels == 1 and len(ds.preprocess.mean) == 1 and ds.head("val", 2)[0].shape == (2, 1, 8, 8)
    (root / "val" / "fox").rename(root / "val" / "wolf")
    with pytest.raises(DataError, match=r"tv/val: its class folders differ .*; missing \['fox'\]; extra \['wolf'\]"):
        load_dataset("image-folder", path=str(root))


def test_errors_name_the_path_at_fault(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("image-folder")
    with pytest.raises(DataError, match="nowhere: image folder not found"):
        load_dataset("image-folder", path=str(tmp_path / "nowhere"))
    root = tmp_path / "d"
    root.mkdir()
    _image((1, 2, 3), 0).save(root / "loose.png")
    with pytest.raises(DataError, match=r"d: no class folders \(it holds images"):
        load_dataset("image-folder", path=str(root))
    write_folder(root, n=2, classes={"only": (9, 9, 9)})
    with pytest.raises(DataError, match="d: one class folder \\('only'\\); a classifier needs at least 2"):
        load_dataset("image-folder", path=str(root))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="d/empty: class folder holds no .jpg, .jpeg or .png images"):
        load_dataset("image-folder", path=str(root))
    bare = tmp_path / "bare"
    for c in ("a", "b"):
        (bare / c).mkdir(parents=True)
        (bare / c / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="bare: no .jpg, .jpeg or .png images in its 2 class folders"):
        load_dataset("image-folder", path=str(bare))
    nested = tmp_path / "nested"
    write_folder(nested / "train", n=2)
    write_folder(nested / "test", n=2)
    with pytest.raises(DataError, match="nested: no .jpg, .jpeg or .png images in its 2 class folders "
                                        r"\(it holds folders: a train/val layout needs both .*nested/train and"):
        load_dataset("image-folder", path=str(nested))
    # a file that does not decode is named: at load (the statistics sample) or in the batch that reads it
    good = write_folder(tmp_path / "g", n=4)
    (good / "dog" / "img002.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"dog/img002.JPEG: not a readable image"):
        load_dataset("image-folder", path=str(good), val_fraction=0.5)
    ds = load_dataset("image-folder", path=str(good), val_fraction=0.5, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(DataError, match=r"dog/img002.JPEG: not a readable image"):
        for split in ("train", "val"):
            list(ds.batches(split, 4))
    for kw, needle in (({"channels": 4}, "read as RGB \\(3\\) or grayscale \\(1\\)"),
                       ({"mean": [0.5]}, "give both or neither"),
                       ({"mean": [0.5], "std": [0.2]}, "data.mean has 1 values; the images are read with 3"),
                       ({"mean": [0.5] * 3, "std": [0.2, 0, 0.2]}, "every value must be > 0")):
        with pytest.raises(DataError, match=needle):
            load_dataset("image-folder", path=str(good), **kw)


@pytest.fixture()
def one_thread():
    """Tiny models run fastest on one intra-op thread, and steadiest on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_project_trains_searches_and_compiles_on_an_image_folder(tmp_path, capsys, one_thread):
    """``bitnas train``, ``profile``, ``search`` and ``compile`` with ``data: {name: image-folder, path: ...}``
    (relative to the project file, ImageNet's statistics given); the artifact's manifest records the
    preprocessing, and ``bitnas run --image`` on a raw file gives the logits of the data set's own array."""
    from bitnas.cli import main
    from bitnas.project import Project
    from tests.conftest import cli_train_to_artifact, quick_compile_passes

    write_folder(tmp_path / "images", n=10)
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"seed": 0, "family": {"name": "mbv3", "space": "mbv3-tiny"},
           "data": {"name": "image-folder", "path": "../images", "image_size": 16, "val_fraction": 0.3,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
           "train": {"epochs": 2, "n_random": 1, "batch_size": 8},
           "search": {"searcher": "random", "budget": 4, "pop_size": 4, "calib_batches": 1},
           "compile": {"passes": quick_compile_passes(["ort"], 10)}}
    (run / "project.yaml").write_text(yaml.safe_dump(cfg))
    art, man = cli_train_to_artifact(run)
    data = Project.load(run).data()
    assert isinstance(data, ImageFolderDataset) and data.num_classes == 3 and data.count("val") == 9
    train = json.loads((run / "train.json").read_text())
    assert train["settings"]["n_train"] == 21 and train["settings"]["image_size"] == 16
    search = json.loads((run / "search.json").read_text())
    assert len(search["evaluations"]) == 4
    assert man["preprocess"]["resize_mode"] == "shorter-side-center-crop"
    assert man["preprocess"]["mean"] == [0.485, 0.456, 0.406] and man["preprocess"]["channels"] == 3
    assert 0.0 <= man["measured"]["ort"]["accuracy"] <= 1.0
    x, _ = data.head("val", 2)
    np.save(tmp_path / "ready.npy", x)
    capsys.readouterr()
    out = []
    for args in (["--input", str(tmp_path / "ready.npy")], ["--image", *map(str, data.files("val")[:2])]):
        assert main(["run", str(art), *args, "--logits"]) == 0
        out.append(np.array(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["logits"]))
    np.testing.assert_allclose(out[1], out[0], atol=1e-4)


class _OldStyle:
    """A plug-in data set with only the members bitnas read before ``count``, ``head`` and ``digest``."""

    name, num_classes, in_channels, image_size = "old", 2, 1, 8

    def batches(self, split, batch_size, rng=None):
        return iter(())


def old_style_data(**_):
    return _OldStyle()


def test_project_data_options_are_checked(folder, tmp_path):
    from bitnas.errors import ConfigError
    from bitnas.project import Project, ProjectConfig

    def project(data):
        return Project(ProjectConfig.model_validate({"data": data}), tmp_path / "run")

    with pytest.raises(Exception, match="'mean' and 'std' go together"):
        project({"mean": [0.5]})
    with pytest.raises(ConfigError, match="key 'data.mean': data set 'digits' takes no 'mean'"):
        project({"mean": [0.5], "std": [0.2]}).data()
    with pytest.raises(ConfigError, match="'tests.test_image_folder:old_style_data' gave a _OldStyle, which lacks "
                                          "count, head, digest"):
        project({"name": "tests.test_image_folder:old_style_data"}).data()
    gray = project({"name": "image-folder", "path": str(folder), "image_size": 8, "channels": 1}).data()
    assert gray.in_channels == 1 and len(gray.preprocess.mean) == 1
