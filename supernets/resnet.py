"""Elastic ResNet bottleneck family (OFA-ResNet50's dimensions): elastic depth, expansion and width.

The stem is conv1, an optional residual conv and conv3; stage ``s`` runs ``base + extra`` bottlenecks
(1x1 reduce, 3x3, 1x1 expand, ReLU after the residual add), the first with a strided 1x1 projection
shortcut. Widths take the leading channels of the largest width multiplier; a bottleneck's mid channels
are ``expand * out`` of its stage's active width. Float supernet (SimQ-NAS quantizes OFA-ResNet50
post-training), static subnets made of ``ConvUnit``s so the skeleton's compile path applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import FLOAT_BITS, Bits, Candidate, LayerSpec, SearchSpace
from bitnas.supernets.mbv2 import ElasticConv
from bitnas.supernets.paper_spaces import INT8_OR_FLOAT, resnet_genes
from bitnas.supernets.static import (
    BLOCK_INPUT,
    AddRequant,
    ConvUnit,
    LinearUnit,
    QuantUnit,
    StaticNet,
    leading_inputs,
    output_source,
)


@dataclass(frozen=True)
class ResNetDef:
    """Shape and choices of an elastic ResNet; the space comes from ``paper_spaces.resnet_genes``."""

    name: str
    stem_channels: int = 8
    stage_widths: tuple[int, ...] = (16, 32)
    stage_strides: tuple[int, ...] = (1, 2)
    base_depths: tuple[int, ...] = (1, 1)
    extra_depths: tuple[int, ...] = (0, 1)
    expands: tuple[float, ...] = (0.25, 0.5)
    widths: tuple[float, ...] = (0.75, 1.0)
    in_channels: int = 1
    image_size: int = 16
    num_classes: int = 10
    bits: tuple[Bits, ...] = INT8_OR_FLOAT
    description: str = ""

    def space(self) -> SearchSpace:
        return SearchSpace(self.name, resnet_genes(self.base_depths, self.extra_depths, self.expands, self.widths,
                                                   self.bits), self.description)


def ofa_resnet_tiny(in_channels: int = 1, image_size: int = 16, num_classes: int = 10) -> ResNetDef:
    """OFA-ResNet's elastic dimensions scaled to digits: 2 stages of 1-2 bottlenecks."""
    return ResNetDef(name="ofa-resnet-tiny", in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                     description="elastic bottleneck ResNet for 16x16 digits: extra depth {0,1}, expansion "
                                 "{0.25,0.5}, width {0.75,1.0}; INT8/FP32 per layer")


def _ch(base: int, mult: float) -> int:
    return max(1, int(round(base * mult)))


@dataclass(frozen=True)
class BottleneckPlan:
    stage: int
    index: int
    cin: int
    mid: int
    cout: int
    stride: int
    hw: int


def plan(d: ResNetDef, arch: dict[str, Any]) -> tuple[int, int, list[BottleneckPlan]]:
    """(stem conv1 width, stem conv3 width, the active bottlenecks in order)."""
    w0, w1 = _ch(d.stem_channels, arch["stem.w0"]), _ch(d.stem_channels, arch["stem.w1"])
    cin, hw, out = w1, d.image_size, []
    for s, base in enumerate(d.stage_widths):
        cout = _ch(base, arch[f"s{s}.width"])
        for b in range(d.base_depths[s] + arch[f"s{s}.extra"]):
            stride = d.stage_strides[s] if b == 0 else 1
            mid = max(1, int(round(cout * arch[f"s{s}.b{b}.expand"])))
            out.append(BottleneckPlan(s, b, cin, mid, cout, stride, hw))
            hw, cin = (hw - 1) // stride + 1, cout
    return w0, w1, out


class Bottleneck(nn.Module):
    """Static bottleneck: reduce, 3x3, expand, shortcut (identity, a projection conv, or a pool and a conv),
    ReLU after the add."""

    def __init__(self, conv1: ConvUnit, conv2: ConvUnit, conv3: ConvUnit, shortcut: nn.Module | None):
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.shortcut = conv1, conv2, conv3, shortcut
        self.requant = AddRequant(sources=(conv3, output_source(shortcut) if shortcut is not None else BLOCK_INPUT))

    def input_readers(self) -> list[QuantUnit]:
        return [self.conv1] + ([self.shortcut] if isinstance(self.shortcut, QuantUnit) else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.requant(F.relu(y + (self.shortcut(x) if self.shortcut is not None else x)))


class StemResidual(nn.Module):
    """The stem's optional residual conv."""

    def __init__(self, conv: ConvUnit):
        super().__init__()
        self.conv = conv
        self.requant = AddRequant(sources=(conv, BLOCK_INPUT))

    def input_readers(self) -> list[QuantUnit]:
        return [self.conv]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.requant(x + self.conv(x))


class ResNetSupernet(nn.Module):
    """Weight-sharing elastic bottleneck ResNet (``Supernet`` protocol)."""

    family = "resnet"

    def __init__(self, d: ResNetDef):
        super().__init__()
        self.d, self.space = d, d.space()
        sw = _ch(d.stem_channels, max(d.widths))
        self.stem1 = ElasticConv(d.in_channels, sw, 3, 1, False)
        self.stem2 = ElasticConv(sw, sw, 3, 1, False)
        self.stem3 = ElasticConv(sw, sw, 3, 1, False)
        blocks, cin = {}, sw
        for s, base in enumerate(d.stage_widths):
            cout = _ch(base, max(d.widths))
            mid = max(1, int(round(cout * max(d.expands))))
            for b in range(d.base_depths[s] + max(d.extra_depths)):
                stride = d.stage_strides[s] if b == 0 else 1
                c = cin if b == 0 else cout
                mods = {"conv1": ElasticConv(c, mid, 1, 1, False), "conv2": ElasticConv(mid, mid, 3, stride, False),
                        "conv3": ElasticConv(mid, cout, 1, 1, False)}
                if b == 0:
                    mods["shortcut"] = ElasticConv(c, cout, 1, stride, False)
                blocks[f"s{s}_b{b}"] = nn.ModuleDict(mods)
            cin = cout
        self.blocks = nn.ModuleDict(blocks)
        self.classifier = nn.Linear(cin, d.num_classes)

    def _arch(self, candidate: Candidate) -> dict[str, Any]:
        return self.space.validate(candidate).arch_dict

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        arch = self._arch(candidate)
        w0, w1, bps = plan(self.d, arch)
        x = F.relu(self.stem1(x, w0, 3, "none"))
        if arch["stem.extra"]:
            x = x + F.relu(self.stem2(x, w0, 3, "none"))
        x = F.relu(self.stem3(x, w1, 3, "none"))
        for bp in bps:
            m = self.blocks[f"s{bp.stage}_b{bp.index}"]
            y = F.relu(m["conv1"](x, bp.mid, 1, "none"))
            y = F.relu(m["conv2"](y, bp.mid, 3, "none"))
            y = m["conv3"](y, bp.cout, 1, "none")
            x = F.relu(y + (m["shortcut"](x, bp.cout, 1, "none") if "shortcut" in m else x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.classifier.weight[:, :x.shape[1]], self.classifier.bias)

    def extract(self, candidate: Candidate) -> StaticNet:
        """A static subnet with inherited weights, equal to ``forward(x, candidate)``."""
        arch = self._arch(candidate)
        w0, w1, bps = plan(self.d, arch)
        body: list[nn.Module] = [self.stem1.extract("stem.conv1", self.d.in_channels, w0, 3, "relu")]
        if arch["stem.extra"]:
            body.append(StemResidual(self.stem2.extract("stem.conv2", w0, w0, 3, "relu")))
        body.append(self.stem3.extract("stem.conv3", w0, w1, 3, "relu"))
        for bp in bps:
            m, n = self.blocks[f"s{bp.stage}_b{bp.index}"], f"s{bp.stage}.b{bp.index}"
            body.append(Bottleneck(
                m["conv1"].extract(f"{n}.conv1", bp.cin, bp.mid, 1, "relu"),
                m["conv2"].extract(f"{n}.conv2", bp.mid, bp.mid, 3, "relu"),
                m["conv3"].extract(f"{n}.conv3", bp.mid, bp.cout, 1, "none"),
                m["shortcut"].extract(f"{n}.shortcut", bp.cin, bp.cout, 1, "none") if "shortcut" in m else None))
        body.append(LinearUnit("classifier", leading_inputs(self.classifier, bps[-1].cout)))
        return StaticNet(body).eval()

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Every conv and the classifier of the candidate, in forward order, with its bits."""
        c = self.space.validate(candidate)
        arch, pol, d = c.arch_dict, c.policy_dict, self.d
        w0, w1, bps = plan(d, arch)

        def spec(name, **kw):
            return LayerSpec(name=name, **kw).with_bits(pol.get(name, FLOAT_BITS))

        hw = d.image_size
        out = [spec("stem.conv1", op="conv", cin=d.in_channels, cout=w0, kernel=3, hw=hw, act="relu")]
        if arch["stem.extra"]:
            out.append(spec("stem.conv2", op="conv", cin=w0, cout=w0, kernel=3, hw=hw, act="relu", residual=True))
        out.append(spec("stem.conv3", op="conv", cin=w0, cout=w1, kernel=3, hw=hw, act="relu"))
        for bp in bps:
            n = f"s{bp.stage}.b{bp.index}"
            out.append(spec(f"{n}.conv1", op="conv", cin=bp.cin, cout=bp.mid, hw=bp.hw, act="relu"))
            out.append(spec(f"{n}.conv2", op="conv", cin=bp.mid, cout=bp.mid, kernel=3, stride=bp.stride, hw=bp.hw,
                            act="relu"))
            hw = out[-1].out_hw
            # Conv, Add (of the shortcut or the block input), Relu
            out.append(spec(f"{n}.conv3", op="conv", cin=bp.mid, cout=bp.cout, hw=hw, act="relu", residual=True,
                            act_after_add=True))
            if bp.index == 0:
                out.append(spec(f"{n}.shortcut", op="conv", cin=bp.cin, cout=bp.cout, stride=bp.stride, hw=bp.hw))
        out.append(spec("classifier", op="linear", cin=bps[-1].cout, cout=d.num_classes, hw=hw))
        return out

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float LayerSpec any candidate of the space can produce (bits excluded)."""
        d = self.d
        seen: dict[str, LayerSpec] = {}

        def add(**kw) -> None:
            ls = LayerSpec(**kw)
            seen.setdefault(ls.key, ls)

        hw = d.image_size
        stem = [_ch(d.stem_channels, w) for w in d.widths]
        for w0 in stem:
            add(op="conv", cin=d.in_channels, cout=w0, kernel=3, hw=hw, act="relu")
            add(op="conv", cin=w0, cout=w0, kernel=3, hw=hw, act="relu", residual=True)
            for w1 in stem:
                add(op="conv", cin=w0, cout=w1, kernel=3, hw=hw, act="relu")
        cins = set(stem)
        for s, base in enumerate(d.stage_widths):
            couts = {_ch(base, w) for w in d.widths}
            for b in range(d.base_depths[s] + max(d.extra_depths)):
                stride = d.stage_strides[s] if b == 0 else 1
                out_hw = (hw - 1) // stride + 1
                for cout in couts:
                    for cin in cins if b == 0 else {cout}:
                        for e in d.expands:
                            mid = max(1, int(round(cout * e)))
                            add(op="conv", cin=cin, cout=mid, hw=hw, act="relu")
                            add(op="conv", cin=mid, cout=mid, kernel=3, stride=stride, hw=hw, act="relu")
                            add(op="conv", cin=mid, cout=cout, hw=out_hw, act="relu", residual=True, act_after_add=True)
                        if b == 0:
                            add(op="conv", cin=cin, cout=cout, stride=stride, hw=hw)
                hw = out_hw
            cins = couts
        for cin in cins:
            add(op="linear", cin=cin, cout=d.num_classes, hw=hw)
        return list(seen.values())


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, qat_train, register_family

    register_family(BuiltinFamily("resnet", ResNetSupernet, {"ofa-resnet-tiny": ofa_resnet_tiny}, qat_train,
                                  "elastic bottleneck ResNet (OFA-ResNet)"))


_register()
