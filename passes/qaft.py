"""Qaft: quantization-aware fine-tuning of an extracted subnet at its policy's bitwidths.

The subnet's BatchNorm is folded, the policy's weight and activation quantizers are inserted (ranges
calibrated as the static quantizer will calibrate them) and the weights are trained through the fake
quantizers with straight-through gradients, distilling from the float subnet. The pass returns the float
subnet with the fine-tuned weights; the PTQ pass then quantizes it. ``qaft_finetune`` is the same step as
a function, for use inside a search's evaluator (BOMP-NAS fine-tunes 1 epoch in the loop, 5 at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from bitnas.api import TaskData
from bitnas.config import StrictModel
from bitnas.pipeline import Pass, PassContext
from bitnas.space import Bits
from bitnas.supernets.evaluate import calibration_batches
from bitnas.supernets.static import StaticNet, quantize_net


def qaft_finetune(net: StaticNet, policy: Mapping[str, Bits], data: TaskData, epochs: int = 1, lr: float = 1e-3,
                  batch_size: int = 64, calib: list[torch.Tensor] | None = None, reduce_range: bool = False,
                  distill: bool = True, seed: int = 0) -> StaticNet:
    """Fine-tune ``net`` through fake quantization of ``policy``; returns the quantized (simulated) net."""
    calib = calib if calib is not None else calibration_batches(data, 4, 64, seed)
    q = quantize_net(net, policy, calib, reduce_range)
    teacher = None
    if distill:
        from bitnas.supernets.static import fold_bn

        teacher = fold_bn(net).eval()
    params = [p for n, p in q.named_parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * int(np.ceil(data.count("train") / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    torch.manual_seed(seed)
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, 7919, epoch])
        q.train()
        for x, y in data.batches("train", batch_size, rng):
            out = q(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x), 1)
                loss = 0.5 * loss + 0.5 * F.kl_div(F.log_softmax(out, 1), soft, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return q.eval()


def strip_quantizers(q: StaticNet) -> StaticNet:
    """The float network underneath a simulated-quantization net (weights kept)."""
    for u in q.units():
        u.set_bits((32, 32))
    return q.eval()


class Qaft(Pass):
    """Quantization-aware fine-tuning for ``epochs`` at the candidate's policy; 0 epochs passes through."""

    class Config(StrictModel):
        epochs: int = Field(1, ge=0, description="fine-tuning epochs over the training split")
        lr: float = Field(1e-3, gt=0, description="peak SGD learning rate (cosine decay)")
        batch_size: int = Field(64, ge=1, description="training batch size")
        distill: bool = Field(True, description="distill from the float subnet")
        reduce_range: bool | Literal["auto"] = Field("auto", description="7-bit INT8 weights as the PTQ pass will use; auto: no VNNI")

    def run(self, model: StaticNet, ctx: PassContext) -> StaticNet:
        from bitnas.passes.inc_ptq import resolve_reduce_range

        if self.config.epochs == 0:
            return model
        candidate = ctx.need("candidate", self.name)
        data = ctx.need("data", self.name)
        q = qaft_finetune(model, candidate.policy_dict, data, self.config.epochs, self.config.lr,
                          self.config.batch_size, reduce_range=resolve_reduce_range(self.config.reduce_range),
                          distill=self.config.distill, seed=ctx.seed)
        ctx.results["qaft"] = self.config.model_dump(mode="json")
        return strip_quantizers(q)
