"""Elastic MobileNetV3 family (QFA's space, scaled by its definition) with mixed-precision QAT quantizers.

Blocks have elastic kernel (centre crop of the largest), expansion (leading channels) and depth (the last
blocks of a stage skipped); stages use ReLU or h-swish and optional squeeze-and-excitation as MobileNetV3
does. Every quantizable conv owns LSQ weight and BatchQuant input quantizers per bitwidth (``BitQuantizers``);
``forward(x, candidate)`` simulates the candidate's policy, and ``extract`` copies the active path, its
quantizers included, into a static ``StaticNet``. A definition with ``qat=False`` (``mbv3-tiny``: INT8 or
FP32 per layer) has no quantizers: its supernet trains in float and ``extract`` gives the float subnet that
post-training quantization takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.errors import InternalError
from bitnas.space import FLOAT_BITS, Bits, Candidate, LayerSpec, SearchSpace
from bitnas.supernets.mbv2 import ElasticBN, _crop
from bitnas.supernets.paper_spaces import mbv3_genes
from bitnas.supernets.qat import BatchQuant, BitQuantizers, FrozenWeightQuant
from bitnas.supernets.static import SE, ConvUnit, InvertedResidual, LinearUnit, StaticNet


@dataclass(frozen=True)
class MBV3Stage:
    width: int
    stride: int
    act: str  # "relu" or "hswish"
    se: bool


@dataclass(frozen=True)
class MBV3Def:
    """The family's shape and choices; the space comes from ``paper_spaces.mbv3_genes``."""

    name: str
    stages: tuple[MBV3Stage, ...]
    depths: tuple[int, ...] = (2, 3, 4)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    conv_bits: tuple[Bits, ...] = tuple((w, a) for w in (2, 3, 4) for a in (2, 3, 4))
    stem_bits: tuple[Bits, ...] = (FLOAT_BITS,)
    head_bits: tuple[Bits, ...] = ((8, 8),)
    classifier_bits: tuple[Bits, ...] = ((8, 8),)
    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    stem_channels: int = 16
    stem_stride: int = 2
    head_channels: int = 64
    qat: bool = True  # False: trained in float and quantized after training (no LSQ/BatchQuant quantizers)
    description: str = ""

    def space(self) -> SearchSpace:
        genes = mbv3_genes(len(self.stages), self.depths, self.kernels, self.expands, self.conv_bits,
                           self.stem_bits, self.head_bits, self.classifier_bits)
        return SearchSpace(self.name, genes, self.description)

    def bit_widths(self) -> set[int]:
        """The bitwidths the supernet's QAT quantizers cover (none when quantized after training)."""
        if not self.qat:
            return set()
        out = set()
        for opts in (self.conv_bits, self.stem_bits, self.head_bits, self.classifier_bits):
            for w, a in opts:
                out.update((w, a))
        return out

    def with_bits(self, conv_bits: Sequence[Bits]) -> MBV3Def:
        """The same family with other per-conv bit options (e.g. the float stage of training)."""
        return replace(self, conv_bits=tuple(conv_bits))


def qfa_mbv3_tiny(in_channels: int = 1, image_size: int = 16, num_classes: int = 10) -> MBV3Def:
    """QFA's MobileNetV3 space scaled to digits: 3 stages of up to 3 blocks, narrow widths."""
    return MBV3Def(
        name="qfa-mbv3-tiny",
        stages=(MBV3Stage(12, 1, "relu", False), MBV3Stage(16, 2, "hswish", True),
                MBV3Stage(24, 2, "hswish", True)),
        depths=(2, 3), kernels=(3, 5), expands=(2, 3, 4),
        conv_bits=tuple((w, a) for w in (2, 3, 4, 32) for a in (2, 3, 4, 32)),
        in_channels=in_channels, image_size=image_size, num_classes=num_classes,
        stem_channels=8, stem_stride=2, head_channels=48,
        description="QFA MobileNetV3 scaled to 16x16 digits: 3 stages x 2-3 blocks, W/A bits {2,3,4,32}",
    )


def mbv3_tiny(in_channels: int = 1, image_size: int = 16, num_classes: int = 10) -> MBV3Def:
    """``qfa-mbv3-tiny``'s shape with INT8 or FP32 per layer, trained in float and quantized after training."""
    both = (FLOAT_BITS, (8, 8))
    return replace(qfa_mbv3_tiny(in_channels, image_size, num_classes), name="mbv3-tiny", conv_bits=both,
                   stem_bits=both, head_bits=both, classifier_bits=both, qat=False,
                   description="MobileNetV3 (SE, h-swish) for 16x16 digits: 3 stages x 2-3 blocks, INT8/FP32 "
                               "per layer, post-training quantization")


@dataclass(frozen=True)
class MBV3Block:
    stage: int
    index: int
    cin: int
    mid: int
    cout: int
    kernel: int
    stride: int
    hw: int
    act: str
    se: bool
    residual: bool


def _conv_out(hw: int, k: int, s: int) -> int:
    return (hw + 2 * (k // 2) - k) // s + 1


def plan(d: MBV3Def, arch: dict[str, Any]) -> list[MBV3Block]:
    """The active blocks of ``arch`` in order."""
    out, cin, hw = [], d.stem_channels, _conv_out(d.image_size, 3, d.stem_stride)
    for s, st in enumerate(d.stages):
        for b in range(arch[f"s{s}.depth"]):
            stride = st.stride if b == 0 else 1
            k, e = arch[f"s{s}.b{b}.kernel"], arch[f"s{s}.b{b}.expand"]
            out.append(MBV3Block(s, b, cin, cin * e, st.width, k, stride, hw, st.act, st.se,
                                 stride == 1 and cin == st.width))
            hw, cin = _conv_out(hw, k, stride), st.width
    return out


def se_reduced(mid: int) -> int:
    return max(4, mid // 4)


class QElasticConv(nn.Module):
    """Shared conv weight + ElasticBN + per-bitwidth quantizers; slices channels, crops kernels."""

    def __init__(self, cin: int, cout: int, kmax: int, stride: int, depthwise: bool, bits: set[int]):
        super().__init__()
        self.depthwise, self.stride = depthwise, stride
        self.weight = nn.Parameter(torch.empty(cout, 1 if depthwise else cin, kmax, kmax))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bn = ElasticBN(cout)
        self.q = BitQuantizers(bits)

    def _slice(self, w: torch.Tensor, cin: int, cout: int, k: int) -> torch.Tensor:
        return _crop(w[:cout] if self.depthwise else w[:cout, :cin], k)

    def forward(self, x: torch.Tensor, cout: int, k: int, act: str, bits: Bits) -> torch.Tensor:
        cin = x.shape[1]
        cout = cin if self.depthwise else cout
        x = self.q.act(x, bits[1])
        w = self._slice(self.q.weight(self.weight, bits[0]), cin, cout, k)  # quantize whole, then slice
        y = self.bn(F.conv2d(x, w, None, self.stride, k // 2, 1, cin if self.depthwise else 1))
        return _act(y, act)

    def extract(self, name: str, cin: int, cout: int, k: int, act: str, bits: Bits,
                quantizers: bool = True) -> QConvUnit:
        cout = cin if self.depthwise else cout
        conv = nn.Conv2d(cin, cout, k, self.stride, k // 2, groups=cin if self.depthwise else 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self._slice(self.weight, cin, cout, k))
        return QConvUnit(name, conv, self.bn.slice(cout), act, *(_frozen(self.q, bits) if quantizers else ()))


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(y)
    if act == "hswish":
        return F.hardswish(y)
    return y


def _frozen(q: BitQuantizers, bits: Bits) -> tuple[FrozenWeightQuant | None, BatchQuant | None]:
    import copy

    w, a = int(bits[0]), int(bits[1])
    wq = FrozenWeightQuant(q.w[str(w)].step, w) if w < 32 else None
    aq = copy.deepcopy(q.a[str(a)]) if a < 32 else None
    return wq, aq


class QConvUnit(ConvUnit):
    """A static conv unit that also carries QAT quantizers inherited from the supernet (LSQ, BatchQuant)."""

    def __init__(self, layer_name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: str,
                 wq: FrozenWeightQuant | None = None, aq: BatchQuant | None = None):
        super().__init__(layer_name, conv, bn, act)
        self.wq, self.aq = wq, aq

    def fold_bn(self) -> None:
        if self.wq is not None:
            raise InternalError(f"layer {self.layer_name}: cannot fold BatchNorm under an LSQ weight quantizer; "
                                "extract with quantizers=False for post-training quantization")
        super().fold_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wq is None and self.aq is None:
            return super().forward(x)
        if self.aq is not None:
            x = self.aq(x)
        c = self.conv
        w = self.wq(c.weight) if self.wq is not None else c.weight
        y = F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        if self.bn is not None:
            y = self.bn(y)
        return _act(y, self.act)


class QLinearUnit(LinearUnit):
    """Pool + classifier with inherited QAT quantizers."""

    def __init__(self, layer_name: str, fc: nn.Linear, wq: FrozenWeightQuant | None = None,
                 aq: BatchQuant | None = None):
        super().__init__(layer_name, fc)
        self.wq, self.aq = wq, aq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.wq is None and self.aq is None:
            return super().forward(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.aq is not None:
            x = self.aq(x)
        w = self.wq(self.fc.weight) if self.wq is not None else self.fc.weight
        return F.linear(x, w, self.fc.bias)


class ElasticSE(nn.Module):
    """Squeeze-and-excitation on the leading channels (float, as QFA keeps SE layers)."""

    def __init__(self, mid_max: int):
        super().__init__()
        r = se_reduced(mid_max)
        self.reduce = nn.Linear(mid_max, r)
        self.expand = nn.Linear(r, mid_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, r = x.shape[1], se_reduced(x.shape[1])
        s = x.mean((2, 3))
        s = F.relu(F.linear(s, self.reduce.weight[:r, :c], self.reduce.bias[:r]))
        s = F.hardsigmoid(F.linear(s, self.expand.weight[:c, :r], self.expand.bias[:c]))
        return x * s[:, :, None, None]

    def extract(self, name: str, c: int) -> SE:
        r = se_reduced(c)
        se = SE(name, c, r)
        with torch.no_grad():
            se.reduce.weight.copy_(self.reduce.weight[:r, :c])
            se.reduce.bias.copy_(self.reduce.bias[:r])
            se.expand.weight.copy_(self.expand.weight[:c, :r])
            se.expand.bias.copy_(self.expand.bias[:c])
        return se


class ElasticMBV3Block(nn.Module):
    def __init__(self, cin: int, cout: int, kmax: int, emax: int, stride: int, se: bool, bits: set[int]):
        super().__init__()
        mid = cin * emax
        self.expand_conv = QElasticConv(cin, mid, 1, 1, False, bits)
        self.dw = QElasticConv(mid, mid, kmax, stride, True, bits)
        self.se = ElasticSE(mid) if se else None
        self.project = QElasticConv(mid, cout, 1, 1, False, bits)


class MBV3Supernet(nn.Module):
    """Weight-sharing MobileNetV3 supernet with mixed-precision quantizers (``Supernet`` protocol)."""

    family = "mbv3"

    @property
    def quantization_aware(self) -> bool:
        """Whether ``extract`` carries the supernet's trained LSQ/BatchQuant quantizers (QFA's BatchQuant
        spaces): a subnet's quantized accuracy is then measured as it is, after calibration, not by
        post-training quantization."""
        return bool(self.d.qat)

    def __init__(self, d: MBV3Def):
        super().__init__()
        self.d = d
        self.space = d.space()
        bits = d.bit_widths()
        self.stem = QElasticConv(d.in_channels, d.stem_channels, 3, d.stem_stride, False, bits)
        blocks, cin = {}, d.stem_channels
        for s, st in enumerate(d.stages):
            for b in range(max(d.depths)):
                c = cin if b == 0 else st.width
                blocks[f"s{s}_b{b}"] = ElasticMBV3Block(c, st.width, max(d.kernels), max(d.expands),
                                                        st.stride if b == 0 else 1, st.se, bits)
            cin = st.width
        self.blocks = nn.ModuleDict(blocks)
        self.head = QElasticConv(cin, d.head_channels, 1, 1, False, bits)
        self.classifier = nn.Linear(d.head_channels, d.num_classes)
        self.classifier_q = BitQuantizers(bits)

    def _values(self, candidate: Candidate) -> tuple[dict[str, Any], dict[str, Bits]]:
        c = self.space.validate(candidate)
        return c.arch_dict, c.policy_dict

    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        arch, pol = self._values(candidate)
        d = self.d
        if not d.qat:  # quantized after training: the supernet computes the float network
            pol = {k: FLOAT_BITS for k in pol}
        x = self.stem(x, d.stem_channels, 3, "hswish", pol["stem"])
        for bp in plan(d, arch):
            blk, n = self.blocks[f"s{bp.stage}_b{bp.index}"], f"s{bp.stage}.b{bp.index}"
            y = blk.expand_conv(x, bp.mid, 1, bp.act, pol[f"{n}.expand_conv"])
            y = blk.dw(y, bp.mid, bp.kernel, bp.act, pol[f"{n}.dw"])
            if blk.se is not None:
                y = blk.se(y)
            y = blk.project(y, bp.cout, 1, "none", pol[f"{n}.project"])
            x = x + y if bp.residual else y
        x = self.head(x, d.head_channels, 1, "hswish", pol["head"])
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        wb, ab = pol["classifier"]
        x = self.classifier_q.act(x, ab)
        return F.linear(x, self.classifier_q.weight(self.classifier.weight, wb), self.classifier.bias)

    def extract(self, candidate: Candidate, quantizers: bool | None = None) -> StaticNet:
        """A static subnet with inherited weights and quantizers, equal to ``forward(x, candidate)``.

        ``quantizers=False`` leaves the LSQ/BatchQuant quantizers out: a float subnet for post-training
        quantization (``quantize_net``, the INT8 compile path). The default is the definition's: with QAT
        quantizers when the supernet was trained with them (``qat``), the float subnet otherwise.
        """
        arch, pol = self._values(candidate)
        d = self.d
        q = d.qat if quantizers is None else quantizers
        if q and not d.qat:
            raise InternalError(f"space '{d.name}' is quantized after training: its supernet has no QAT "
                                "quantizers to extract")
        body: list[nn.Module] = [self.stem.extract("stem", d.in_channels, d.stem_channels, 3, "hswish",
                                                   pol["stem"], q)]
        for bp in plan(d, arch):
            blk, n = self.blocks[f"s{bp.stage}_b{bp.index}"], f"s{bp.stage}.b{bp.index}"
            body.append(InvertedResidual(
                blk.expand_conv.extract(f"{n}.expand_conv", bp.cin, bp.mid, 1, bp.act, pol[f"{n}.expand_conv"],
                                        q),
                blk.dw.extract(f"{n}.dw", bp.mid, bp.mid, bp.kernel, bp.act, pol[f"{n}.dw"], q),
                blk.project.extract(f"{n}.project", bp.mid, bp.cout, 1, "none", pol[f"{n}.project"], q),
                bp.residual, se=blk.se.extract(f"{n}.se", bp.mid) if blk.se is not None else None))
        cin = plan(d, arch)[-1].cout
        body.append(self.head.extract("head", cin, d.head_channels, 1, "hswish", pol["head"], q))
        fc = nn.Linear(d.head_channels, d.num_classes)
        fc.load_state_dict(self.classifier.state_dict())
        body.append(QLinearUnit("classifier", fc, *(_frozen(self.classifier_q, pol["classifier"]) if q else ())))
        return StaticNet(body).eval()

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        """Every layer of the candidate in forward order (SE layers float, not policy genes)."""
        arch, pol = self._values(candidate)
        d = self.d

        def spec(name, bits=FLOAT_BITS, **kw):
            return LayerSpec(name=name, **kw).with_bits(bits)

        out = [spec("stem", pol["stem"], op="conv", cin=d.in_channels, cout=d.stem_channels, kernel=3,
                    stride=d.stem_stride, hw=d.image_size, act="hswish")]
        hw = out[0].out_hw
        for bp in plan(d, arch):
            n = f"s{bp.stage}.b{bp.index}"
            out.append(spec(f"{n}.expand_conv", pol[f"{n}.expand_conv"], op="conv", cin=bp.cin, cout=bp.mid,
                            hw=bp.hw, act=bp.act))
            out.append(spec(f"{n}.dw", pol[f"{n}.dw"], op="conv", cin=bp.mid, cout=bp.mid, kernel=bp.kernel,
                            stride=bp.stride, groups=bp.mid, hw=bp.hw, act=bp.act))
            hw = out[-1].out_hw
            if bp.se:
                out.append(spec(f"{n}.se", op="se", cin=bp.mid, cout=se_reduced(bp.mid), hw=hw))
            out.append(spec(f"{n}.project", pol[f"{n}.project"], op="conv", cin=bp.mid, cout=bp.cout, hw=hw,
                            residual=bp.residual))
        cin = plan(d, arch)[-1].cout
        out.append(spec("head", pol["head"], op="conv", cin=cin, cout=d.head_channels, hw=hw, act="hswish"))
        out.append(spec("classifier", pol["classifier"], op="linear", cin=d.head_channels, cout=d.num_classes,
                        hw=hw))
        return out

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float LayerSpec any candidate of the space can produce (bits excluded)."""
        d = self.d
        seen: dict[str, LayerSpec] = {}

        def add(**kw) -> None:
            ls = LayerSpec(**kw)
            seen.setdefault(ls.key, ls)

        add(op="conv", cin=d.in_channels, cout=d.stem_channels, kernel=3, stride=d.stem_stride, hw=d.image_size,
            act="hswish")
        hw, cins = _conv_out(d.image_size, 3, d.stem_stride), {d.stem_channels}
        for st in d.stages:
            for b in range(max(d.depths)):
                stride = st.stride if b == 0 else 1
                out_hw = _conv_out(hw, 3, stride)  # the same for every odd kernel with 'same' padding
                for cin in cins if b == 0 else {st.width}:
                    for e in d.expands:
                        mid = cin * e
                        add(op="conv", cin=cin, cout=mid, hw=hw, act=st.act)
                        for k in d.kernels:
                            add(op="conv", cin=mid, cout=mid, kernel=k, stride=stride, groups=mid, hw=hw, act=st.act)
                        if st.se:
                            add(op="se", cin=mid, cout=se_reduced(mid), hw=out_hw)
                        add(op="conv", cin=mid, cout=st.width, hw=out_hw, residual=stride == 1 and cin == st.width)
                hw = out_hw
            cins = {st.width}
        for cin in cins:
            add(op="conv", cin=cin, cout=d.head_channels, hw=hw, act="hswish")
        add(op="linear", cin=d.head_channels, cout=d.num_classes, hw=hw)
        return list(seen.values())


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, qat_train, register_family

    register_family(BuiltinFamily("mbv3", MBV3Supernet, {"qfa-mbv3-tiny": qfa_mbv3_tiny, "mbv3-tiny": mbv3_tiny},
                                  qat_train, "elastic MobileNetV3 with SE and h-swish (QFA)"))


_register()
