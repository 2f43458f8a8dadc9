"""Evaluating sub-networks: BN recalibration, float and simulated-quantization accuracy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from bitnas.api import TaskData
from bitnas.space import Bits, Candidate
from bitnas.supernets.data import fast_layout
from bitnas.supernets.static import StaticNet, quantize_net, recalibrate_bn


def calibration_batches(data: TaskData, n_batches: int, batch_size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """A fixed list of training batches (used for BN recalibration and activation ranges)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (x, _) in enumerate(data.batches("train", batch_size, rng)):
        if i >= n_batches:
            break
        out.append(x)
    return out


def prepare_subnet(supernet, candidate: Candidate, calib: list[torch.Tensor]) -> StaticNet:
    """Extract the candidate's static subnet and recalibrate its BatchNorm statistics."""
    return recalibrate_bn(supernet.extract(candidate), calib)


@torch.no_grad()
def accuracy(net: torch.nn.Module, data: TaskData, batch_size: int = 512) -> float:
    net.eval()
    correct = seen = 0
    for x, y in data.batches("val", batch_size):
        correct += int((net(fast_layout(x)).argmax(1) == y).sum())
        seen += len(y)
    return correct / seen


@torch.no_grad()
def predictions(net: torch.nn.Module, data: TaskData, batch_size: int = 512) -> np.ndarray:
    net.eval()
    return np.concatenate([net(x).argmax(1).numpy() for x, _ in data.batches("val", batch_size)])


def quantized_accuracy(static: StaticNet, policy: Mapping[str, Bits], calib: list[torch.Tensor], data: TaskData,
                       reduce_range: bool = False) -> float:
    return accuracy(quantize_net(static, policy, calib, reduce_range), data)
