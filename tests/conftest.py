"""Shared fixtures: the embedded data, a briefly trained supernet, and one quick end-to-end demo run."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def digits():
    from bitnas.supernets.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def trained(digits):
    """An mbv2-tiny supernet trained for 2 epochs on the digits (enough for >80% on the largest subnet)."""
    from bitnas.supernets import build_supernet
    from bitnas.supernets.train import train_supernet

    torch.manual_seed(0)
    net = build_supernet("mbv2-tiny")
    train_supernet(net, digits, epochs=2, batch_size=64, n_random=1, seed=0)
    return net


QUICK_PASSES = ["ExtractSubnet", "RecalibrateBn", "Qaft", "ExportOnnx", "AssignBitwidths", "IncStaticPtq",
                "SubByteWeights", {"Verify": {"repeats": 40}}, "Package"]
QUICK = {
    "seed": 0,
    "train": {"epochs": 4, "n_random": 1},
    "lut": {"warmup": 2, "repeats": 10, "rounds": 2},
    "search": {"budget": 16, "pop_size": 8},
    "compile": {"passes": QUICK_PASSES},
}


def quick_project(root, **changes):
    """The default project with small budgets (``changes`` merged into sections), bound to ``root``."""
    from bitnas.config import validate_config
    from bitnas.project import Project, ProjectConfig

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in QUICK.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Project(validate_config(ProjectConfig, data, "quick"), root, "quick")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One quick end-to-end run of the default project (small budgets); returns (summary, run folder)."""
    out = tmp_path_factory.mktemp("demo")
    return quick_project(out).run_all(), out


def quick_compile_passes(backends: list[str], repeats: int) -> list:
    """The default compile pipeline with small calibrations and a short Verify on ``backends``."""
    return ["ExtractSubnet", {"RecalibrateBn": {"batches": 2}}, "ExportOnnx", "AssignBitwidths",
            {"IncStaticPtq": {"calibration_batches": 2}},
            {"Verify": {"backends": backends, "repeats": repeats}}, "Package"]


def cli_train_to_artifact(run, repeats: int = 5, pick=None):
    """``train``, a quick ``profile``, ``search`` and ``compile`` of the project in ``run``: (artifact, manifest).

    ``pick(search.json) -> candidate id`` chooses what to compile instead of the project's ``compile.pick``.
    """
    import json

    from bitnas.cli import main

    assert main(["train", "--project", str(run)]) == 0
    assert main(["profile", "--project", str(run), "--no-blocks", "--repeats", str(repeats), "--rounds", "1",
                 "--warmup", "1"]) == 0
    assert main(["search", "--project", str(run)]) == 0
    chosen = ["--pick", pick(json.loads((run / "search.json").read_text()))] if pick else []
    assert main(["compile", "--project", str(run), *chosen]) == 0
    (art,) = list((run / "artifacts").iterdir())
    return art, json.loads((art / "manifest.json").read_text())


def assert_same_top1(ref, other, name: str, max_flipped: float = 0.02) -> None:
    """``other`` runtime's logits match ``ref``'s up to rounding: a top-1 may differ only where ``ref``'s two
    best classes are closer than twice the largest logit difference, and on at most ``max_flipped`` of the
    inputs (how many inputs are that close depends on the model's confidence)."""
    import numpy as np

    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    diff = np.abs(other - ref).max()
    assert diff < 0.1 * (ref.max() - ref.min()), (name, diff)
    flipped = other.argmax(1) != ref.argmax(1)
    assert flipped.mean() <= max_flipped, (name, flipped.mean())
    assert np.all(margin[flipped] <= 2 * diff), (name, margin[flipped], diff)
