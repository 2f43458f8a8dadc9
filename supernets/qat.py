"""Quantizers for mixed-precision supernet training: LSQ weights (QFA eq. 2) and BatchQuant activations (eq. 5, 8).

A layer owns one quantizer per bitwidth; a bitwidth of 32 means float (no quantizer). Weights are quantized
as a whole shared tensor, then sliced for the active subnet, so nested subnets see nested quantized weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from bitnas.errors import InternalError


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x * scale + (x - x * scale).detach()


class LSQWeight(nn.Module):
    """Symmetric LSQ weight quantizer: ``round(clamp(w / step, -2^(b-1), 2^(b-1)-1)) * step``, step learned."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.n, self.p = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(0))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if int(self.initialized) == 0:
            with torch.no_grad():
                self.step.copy_(2 * w.detach().abs().mean() / math.sqrt(self.p))
                self.initialized.fill_(1)
        step = _grad_scale(self.step, 1.0 / math.sqrt(w.numel() * self.p))
        return _round_ste(torch.clamp(w / step, self.n, self.p)) * step


class BatchQuant(nn.Module):
    """BatchQuant activation quantizer (eq. 5) with the per-channel-averaged extreme-value estimator (eq. 8).

    Training (and an uncalibrated eval) uses the current batch's extremes; ``calibrating`` accumulates a
    running mean of them, which an eval-mode forward then uses. ``gamma`` and ``beta`` are the learnable
    residuals on the step and zero point, initialized to 1 and 0; the batch extremes are constants in the
    backward pass (gradients reach the input, ``gamma`` and ``beta``). ``channel_dim`` is 1 for NCHW maps
    and -1 for token tensors.
    """

    def __init__(self, bits: int, channel_dim: int = 1):
        super().__init__()
        self.bits = int(bits)
        self.channel_dim = channel_dim
        self.p = 2 ** self.bits - 1
        self.gamma = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("run_min", torch.tensor(0.0))
        self.register_buffer("run_max", torch.tensor(0.0))
        self.register_buffer("n_calib", torch.tensor(0))
        self.calibrating = False

    def extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 8: per-channel min and max over all other dimensions, averaged over channels."""
        xc = x.detach().movedim(self.channel_dim, 0).reshape(x.shape[self.channel_dim], -1)
        return xc.min(dim=1).values.mean(), xc.max(dim=1).values.mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            lo, hi = self.extremes(x)
            k = int(self.n_calib)
            self.run_min.copy_((self.run_min * k + lo) / (k + 1))
            self.run_max.copy_((self.run_max * k + hi) / (k + 1))
            self.n_calib.add_(1)
        if self.training or int(self.n_calib) == 0:
            lo, hi = self.extremes(x)
        else:
            lo, hi = self.run_min, self.run_max
        step = torch.clamp((hi - lo) / self.p, min=1e-8)
        zero = torch.clamp(-torch.round(lo / step), 0, self.p)
        s = step * self.gamma
        q = _round_ste(torch.clamp(x / s + zero + self.beta, 0, self.p))
        return (q - zero - self.beta) * s


class BitQuantizers(nn.Module):
    """One weight quantizer and one input-activation quantizer per bitwidth of a layer."""

    def __init__(self, bit_options: Iterable[int], channel_dim: int = 1):
        super().__init__()
        bits = sorted({int(b) for b in bit_options if int(b) < 32})
        self.w = nn.ModuleDict({str(b): LSQWeight(b) for b in bits})
        self.a = nn.ModuleDict({str(b): BatchQuant(b, channel_dim) for b in bits})

    def weight(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= 32:
            return w
        try:
            return self.w[str(bits)](w)
        except KeyError:
            raise InternalError(f"no {bits}-bit weight quantizer (has {list(self.w)})") from None

    def act(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= 32:
            return x
        try:
            return self.a[str(bits)](x)
        except KeyError:
            raise InternalError(f"no {bits}-bit activation quantizer (has {list(self.a)})") from None


class FrozenWeightQuant(nn.Module):
    """A static subnet's weight quantizer: LSQ with the step inherited from the supernet."""

    def __init__(self, step: torch.Tensor, bits: int):
        super().__init__()
        self.bits = bits
        self.n, self.p = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.register_buffer("step", step.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _round_ste(torch.clamp(w / self.step, self.n, self.p)) * self.step


def set_bq_calibrating(module: nn.Module, on: bool, reset: bool = True) -> None:
    """Switch BatchQuant running-extreme accumulation on or off (``reset`` clears earlier estimates)."""
    for m in module.modules():
        if isinstance(m, BatchQuant):
            if on and reset:
                m.run_min.zero_()
                m.run_max.zero_()
                m.n_calib.zero_()
            m.calibrating = on


@torch.no_grad()
def calibrate(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """BatchNorm recalibration and BatchQuant calibration of a static subnet on a few batches."""
    from bitnas.supernets.static import recalibrate_bn

    batches = list(batches)
    recalibrate_bn(net, batches)
    set_bq_calibrating(net, True)
    net.eval()
    for x in batches:
        net(x)
    set_bq_calibrating(net, False)
    return net.eval()
