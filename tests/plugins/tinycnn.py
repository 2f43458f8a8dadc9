"""A user's own elastic CNN family: depth and width per stage, INT8 or float per layer.

It uses only bitnas's public pieces (``bitnas.api``, ``bitnas.space``, the static units and the sandwich
trainer) and is registered by reference (``tests.plugins.tinycnn:FAMILY``) or by entry point.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import FLOAT_BITS, Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.static import ConvUnit, LinearUnit, StaticNet

BITS = (FLOAT_BITS, (8, 8))
WIDTHS = ((8, 12), (12, 16))
DEPTHS = (1, 2)


def make_space() -> SearchSpace:
    genes = [Gene("stem", BITS, "policy")]
    for s, widths in enumerate(WIDTHS):
        genes += [Gene(f"s{s}.depth", DEPTHS), Gene(f"s{s}.width", widths)]
        for b in range(max(DEPTHS)):
            cond = None if b < min(DEPTHS) else (f"s{s}.depth", b + 1)
            genes.append(Gene(f"s{s}.b{b}", BITS, "policy", cond))
    genes.append(Gene("fc", BITS, "policy"))
    return SearchSpace("tinycnn", genes, "a user's elastic CNN: 2 stages, depth {1,2}, width, INT8/FP32 per layer")


class TinyCnnSupernet(nn.Module):
    """Shared conv weights; a subnet takes the leading channels and the first blocks of each stage."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.space = make_space()
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = nn.Conv2d(in_channels, 8, 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        convs, bns, cin = {}, {}, 8
        for s, widths in enumerate(WIDTHS):
            for b in range(max(DEPTHS)):
                c = cin if b == 0 else max(widths)
                convs[f"s{s}_b{b}"] = nn.Conv2d(c, max(widths), 3, 2 if b == 0 else 1, 1, bias=False)
                bns[f"s{s}_b{b}"] = nn.BatchNorm2d(max(widths))
            cin = max(widths)
        self.convs, self.bns = nn.ModuleDict(convs), nn.ModuleDict(bns)
        self.fc = nn.Linear(cin, num_classes)

    def _plan(self, c: Candidate) -> list[tuple[str, str, int, int, int, int]]:
        arch = self.space.validate(c).arch_dict
        out, cin, hw = [], 8, (self.input_shape[1] + 1) // 2
        for s in range(len(WIDTHS)):
            w = arch[f"s{s}.width"]
            for b in range(arch[f"s{s}.depth"]):
                stride = 2 if b == 0 else 1
                out.append((f"s{s}.b{b}", f"s{s}_b{b}", cin, w, stride, hw))
                hw = (hw - 1) // stride + 1
                cin = w
        return out

    def forward(self, x: torch.Tensor, c: Candidate) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for _, key, cin, w, _, _ in self._plan(c):
            conv, bn = self.convs[key], self.bns[key]
            y = F.conv2d(x, conv.weight[:w, :cin], None, conv.stride, 1)
            x = F.relu(F.batch_norm(y, bn.running_mean[:w], bn.running_var[:w], bn.weight[:w], bn.bias[:w],
                                    self.training, 0.1, bn.eps))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.fc.weight[:, :x.shape[1]], self.fc.bias)

    def layers(self, c: Candidate) -> list[LayerSpec]:
        pol = self.space.validate(c).policy_dict
        hw = self.input_shape[1]
        out = [LayerSpec("conv", self.input_shape[0], 8, 3, 2, 1, hw, "relu", name="stem").with_bits(pol["stem"])]
        cin, hw = 8, out[0].out_hw
        for name, _, ci, w, stride, h in self._plan(c):
            out.append(LayerSpec("conv", ci, w, 3, stride, 1, h, "relu", name=name).with_bits(pol[name]))
            cin, hw = w, out[-1].out_hw
        out.append(LayerSpec("linear", cin, self.fc.out_features, hw=hw, name="fc").with_bits(pol["fc"]))
        return out

    def all_layer_specs(self) -> list[LayerSpec]:
        seen: dict[str, LayerSpec] = {}
        rng = __import__("numpy").random.default_rng(0)
        cands = [self.space.largest(), self.space.smallest()] + [self.space.sample(rng) for _ in range(200)]
        for c in cands:
            for s in self.layers(c):
                f = s.with_bits(FLOAT_BITS)
                seen.setdefault(f.key, f)
        return list(seen.values())

    def extract(self, c: Candidate) -> StaticNet:
        def unit(name, conv, bn, cin, cout):
            static = nn.Conv2d(cin, cout, 3, conv.stride, 1, bias=False)
            sbn = nn.BatchNorm2d(cout)
            with torch.no_grad():
                static.weight.copy_(conv.weight[:cout, :cin])
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(sbn, attr).copy_(getattr(bn, attr)[:cout])
            return ConvUnit(name, static, sbn, "relu")

        body: list[nn.Module] = [unit("stem", self.stem, self.stem_bn, self.input_shape[0], 8)]
        cin = 8
        for name, key, ci, w, _, _ in self._plan(c):
            body.append(unit(name, self.convs[key], self.bns[key], ci, w))
            cin = w
        fc = nn.Linear(cin, self.fc.out_features)
        with torch.no_grad():
            fc.weight.copy_(self.fc.weight[:, :cin])
            fc.bias.copy_(self.fc.bias)
        body.append(LinearUnit("fc", fc))
        return StaticNet(body).eval()


class TinyCnnFamily:
    """The family record bitnas asks for: name, spaces, build, train."""

    name = "tinycnn"

    def spaces(self) -> dict[str, str]:
        return {"tinycnn": make_space().description}

    def build(self, space: str, in_channels: int, image_size: int, num_classes: int) -> TinyCnnSupernet:
        return TinyCnnSupernet(in_channels, image_size, num_classes)

    def train(self, supernet, data, settings, checkpoint=None, progress=None) -> dict[str, Any]:
        from bitnas.supernets.families import sandwich_train

        return sandwich_train(supernet, data, settings, checkpoint, progress)


FAMILY = TinyCnnFamily()
