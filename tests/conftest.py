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


QUICK = {
    "seed": 0,
    "supernet": {"epochs": 4, "n_random": 1},
    "lut": {"warmup": 2, "repeats": 10, "rounds": 2},
    "search": {"budget": 16, "pop_size": 8},
    "compile": {"latency_repeats": 40},
}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One quick ``bitnas demo`` run (small budgets); returns (summary, out folder)."""
    from bitnas.config import DemoConfig, validate_config
    from bitnas.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = validate_config(DemoConfig, QUICK, "quick")
    return run_demo(cfg, out), out
