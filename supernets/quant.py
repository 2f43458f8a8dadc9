"""Simulated quantization matching the deployed QDQ graph.

Weights: per-output-channel symmetric, ``2**(b-1)-1`` levels each side (``reduce_range`` drops one bit, as
ONNX Runtime does for 8-bit weights on CPUs without an INT8 dot-product instruction). Activations:
per-tensor asymmetric unsigned, range from min/max calibration of the float model, quantized at the input
and output of every quantized layer where the static quantizer puts its QuantizeLinear/DequantizeLinear
pairs (a layer's output after its fused ReLU/Clip).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def weight_qmax(bits: int, reduce_range: bool = False) -> int:
    eff = bits - 1 if (reduce_range and bits == 8) else bits
    return 2 ** (eff - 1) - 1


# weights of this many bits and more are stored as INT8 values (below it, packed INT4) and their layer's bias as
# INT32 at ``input scale x weight scale``: the runtimes fuse such a layer into an integer kernel (ONNX Runtime's
# QLinearConv, for 5-7-bit weights too), which rounds the bias to that grid
INT32_BIAS_MIN_BITS = 5


def has_int32_bias(w_bits: int) -> bool:
    """Whether a quantized layer of ``w_bits`` weight bits carries an INT32 bias (else a float one)."""
    return INT32_BIAS_MIN_BITS <= w_bits <= 8


def stored_scale(scale: np.ndarray, bits: int) -> np.ndarray:
    """A sub-byte weight scale as the artifact stores it: half precision, with few enough significant bits
    that every ``q * scale`` (|q| <= 2**(bits-1)-1) is exact in half precision too.

    ONNX Runtime multiplies a packed weight by its half-precision scale in half precision, OpenVINO in
    single: with such a scale both get the very weights the simulation uses.
    """
    scale = np.asarray(scale, np.float32)
    if bits >= 8:
        return scale
    mant_bits = 11 - int(np.ceil(np.log2(2 ** (bits - 1))))  # 11 significant bits in float16, less q's
    m, e = np.frexp(scale.astype(np.float64))
    rounded = np.ldexp(np.round(m * 2.0 ** mant_bits) / 2.0 ** mant_bits, e)
    return rounded.astype(np.float16).astype(np.float32)


def weight_scale(w: torch.Tensor, bits: int, reduce_range: bool = False) -> torch.Tensor:
    """Per-output-channel symmetric scale, shape ``(C,)``; below 8 bits as stored (``stored_scale``)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    scale = amax / weight_qmax(bits, reduce_range)
    if bits >= 8:
        return scale
    return torch.from_numpy(stored_scale(scale.cpu().numpy(), bits)).to(scale.device)


def fake_quant_weight(w: torch.Tensor, bits: int, reduce_range: bool = False) -> torch.Tensor:
    """Per-channel (dim 0) symmetric fake quantization; 32 bits returns ``w`` unchanged."""
    if bits >= 32:
        return w
    qmax = weight_qmax(bits, reduce_range)
    scale = weight_scale(w, bits, reduce_range).reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(w / scale), -qmax, qmax)
    # straight-through estimator so the same function serves quantization-aware fine-tuning
    return w + (q * scale - w).detach()


class ActQuant(nn.Module):
    """Per-tensor asymmetric activation fake-quantizer with min/max calibration."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.calibrating = True
        self.seen = False

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of the calibrated range, which always contains zero."""
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)
        qmax = 2 ** self.bits - 1
        scale = torch.clamp((hi - lo) / qmax, min=1e-8)
        return scale, torch.clamp(torch.round(-lo / scale), 0, qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits >= 32:
            return x
        if self.calibrating:
            lo, hi = x.detach().min(), x.detach().max()
            if self.seen:
                lo, hi = torch.minimum(lo, self.lo), torch.maximum(hi, self.hi)
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.seen = True
            return x
        scale, zero = self.qparams()
        qmax = 2 ** self.bits - 1
        q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
        return x + ((q - zero) * scale - x).detach()


def fake_quant_bias(b: torch.Tensor, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """INT32 bias with scale ``in_scale * w_scale`` per channel, as QDQ graphs store it."""
    scale = (in_scale * w_scale).clamp_min(1e-12)
    return b + (torch.round(b / scale) * scale - b).detach()


def set_calibrating(module: nn.Module, on: bool) -> None:
    for m in module.modules():
        if isinstance(m, ActQuant):
            m.calibrating = on
