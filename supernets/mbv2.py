"""Elastic MobileNetV2-style supernet: elastic kernel, expansion, depth and width, weights shared.

Kernels are centre crops of the largest kernel, expansion and width take the leading channels, depth
skips the last blocks of a stage (once-for-all's elastic dimensions). One ``plan`` of the active layers
drives the supernet's forward pass, ``extract``, and ``layers`` (the LUT query), so the three agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import FLOAT_BITS, Bits, Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.static import ConvUnit, InvertedResidual, LinearUnit, StaticNet


@dataclass(frozen=True)
class StageDef:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int


@dataclass(frozen=True)
class MBV2Def:
    """The family's shape: stages, elastic choices and the bit options of every quantizable layer."""

    name: str
    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    stem_channels: int = 16
    stem_stride: int = 2
    stages: tuple[StageDef, ...] = ()
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    head_channels: int = 64
    bit_options: tuple[Bits, ...] = (FLOAT_BITS, (8, 8))
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_depth(self) -> tuple[int, ...]:
        return tuple(max(s.depths) for s in self.stages)


def _block(s: int, b: int) -> str:
    return f"s{s}.b{b}"


def build_space(d: MBV2Def) -> SearchSpace:
    genes: list[Gene] = []
    bits = tuple(d.bit_options)
    genes.append(Gene("stem", bits, "policy"))
    for s, st in enumerate(d.stages):
        genes.append(Gene(f"s{s}.depth", st.depths))
        genes.append(Gene(f"s{s}.width", st.widths))
        for b in range(max(st.depths)):
            cond = None if b < min(st.depths) else (f"s{s}.depth", b + 1)
            genes.append(Gene(f"{_block(s, b)}.kernel", d.kernels, "arch", cond))
            genes.append(Gene(f"{_block(s, b)}.expand", d.expands, "arch", cond))
            for part in ("expand_conv", "dw", "project"):
                genes.append(Gene(f"{_block(s, b)}.{part}", bits, "policy", cond))
    genes.append(Gene("head", bits, "policy"))
    genes.append(Gene("classifier", bits, "policy"))
    return SearchSpace(d.name, genes, d.description)


@dataclass(frozen=True)
class BlockPlan:
    stage: int
    index: int
    cin: int
    mid: int
    cout: int
    kernel: int
    stride: int
    hw: int
    residual: bool


def plan(d: MBV2Def, arch: dict[str, Any]) -> list[BlockPlan]:
    """The active inverted-residual blocks of ``arch``, in order."""
    blocks = []
    cin = d.stem_channels
    hw = (d.image_size + 2 - 3) // d.stem_stride + 1
    for s, st in enumerate(d.stages):
        width = arch[f"s{s}.width"]
        for b in range(arch[f"s{s}.depth"]):
            stride = st.stride if b == 0 else 1
            k, e = arch[f"{_block(s, b)}.kernel"], arch[f"{_block(s, b)}.expand"]
            blocks.append(BlockPlan(s, b, cin, cin * e, width, k, stride, hw, stride == 1 and cin == width))
            hw = (hw + 2 * (k // 2) - k) // stride + 1
            cin = width
    return blocks


def layer_specs(d: MBV2Def, arch: dict[str, Any], policy: dict[str, Bits]) -> list[LayerSpec]:
    """Every quantizable layer of the candidate, in forward order, with its bits."""
    def spec(name, **kw):
        return LayerSpec(name=name, **kw).with_bits(policy[name])

    out = [spec("stem", op="conv", cin=d.in_channels, cout=d.stem_channels, kernel=3, stride=d.stem_stride,
                hw=d.image_size, act="relu6")]
    hw, cin = out[0].out_hw, d.stem_channels
    for bp in plan(d, arch):
        n = _block(bp.stage, bp.index)
        out.append(spec(f"{n}.expand_conv", op="conv", cin=bp.cin, cout=bp.mid, hw=bp.hw, act="relu6"))
        out.append(spec(f"{n}.dw", op="conv", cin=bp.mid, cout=bp.mid, kernel=bp.kernel, stride=bp.stride,
                        groups=bp.mid, hw=bp.hw, act="relu6"))
        hw = out[-1].out_hw
        out.append(spec(f"{n}.project", op="conv", cin=bp.mid, cout=bp.cout, hw=hw, residual=bp.residual))
        cin = bp.cout
    out.append(spec("head", op="conv", cin=cin, cout=d.head_channels, hw=hw, act="relu6"))
    out.append(spec("classifier", op="linear", cin=d.head_channels, cout=d.num_classes, hw=hw))
    return out


def all_layer_specs(d: MBV2Def) -> list[LayerSpec]:
    """Every distinct float LayerSpec any candidate of the space can produce (bits excluded)."""
    seen: dict[str, LayerSpec] = {}

    def add(ls: LayerSpec) -> None:
        seen.setdefault(ls.key, ls)

    stem = LayerSpec("conv", d.in_channels, d.stem_channels, 3, d.stem_stride, 1, d.image_size, "relu6")
    add(stem)
    hw = stem.out_hw
    cins = {d.stem_channels}
    for st in d.stages:
        for b in range(max(st.depths)):
            stride = st.stride if b == 0 else 1
            in_opts = cins if b == 0 else set(st.widths)
            out_hw = (hw + 2 * 1 - 3) // stride + 1  # same for every odd kernel with 'same' padding
            for cin in in_opts:
                for e in d.expands:
                    mid = cin * e
                    add(LayerSpec("conv", cin, mid, 1, 1, 1, hw, "relu6"))
                    for k in d.kernels:
                        add(LayerSpec("conv", mid, mid, k, stride, mid, hw, "relu6"))
                    for w in st.widths:
                        add(LayerSpec("conv", mid, w, 1, 1, 1, out_hw, "none", stride == 1 and cin == w))
            hw = out_hw
        cins = set(st.widths)
    for cin in cins:
        add(LayerSpec("conv", cin, d.head_channels, 1, 1, 1, hw, "relu6"))
    add(LayerSpec("linear", d.head_channels, d.num_classes, hw=hw))
    return list(seen.values())


# --------------------------------------------------------------------------- elastic modules
def _crop(w: torch.Tensor, k: int) -> torch.Tensor:
    kmax = w.shape[-1]
    if k == kmax:
        return w
    o = (kmax - k) // 2
    return w[..., o:o + k, o:o + k]


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the leading channels of its largest width; statistics shared in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        training = self.training or self.running_mean is None
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            training, 0.1 if self.momentum is None else self.momentum, self.eps)

    def slice(self, c: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum)
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(self.running_mean[:c])
            bn.running_var.copy_(self.running_var[:c])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class ElasticConv(nn.Module):
    """Conv2d + ElasticBN over the largest shape; slices channels and centre-crops the kernel."""

    def __init__(self, cin: int, cout: int, kmax: int, stride: int, depthwise: bool):
        super().__init__()
        self.depthwise = depthwise
        self.stride = stride
        shape = (cout, 1 if depthwise else cin, kmax, kmax)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bn = ElasticBN(cout)

    def active_weight(self, cin: int, cout: int, k: int) -> torch.Tensor:
        w = self.weight[:cout] if self.depthwise else self.weight[:cout, :cin]
        return _crop(w, k)

    def forward(self, x: torch.Tensor, cout: int, k: int, act: str) -> torch.Tensor:
        cin = x.shape[1]
        if self.depthwise:
            cout = cin
        w = self.active_weight(cin, cout, k)
        y = F.conv2d(x, w, None, self.stride, k // 2, 1, cin if self.depthwise else 1)
        y = self.bn(y)
        return F.relu6(y) if act == "relu6" else y

    def extract(self, name: str, cin: int, cout: int, k: int, act: str) -> ConvUnit:
        if self.depthwise:
            cout = cin
        conv = nn.Conv2d(cin, cout, k, self.stride, k // 2, groups=cin if self.depthwise else 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.active_weight(cin, cout, k))
        return ConvUnit(name, conv, self.bn.slice(cout), act)


class ElasticBlock(nn.Module):
    def __init__(self, cin_max: int, cout_max: int, kmax: int, emax: int, stride: int):
        super().__init__()
        mid = cin_max * emax
        self.expand_conv = ElasticConv(cin_max, mid, 1, 1, False)
        self.dw = ElasticConv(mid, mid, kmax, stride, True)
        self.project = ElasticConv(mid, cout_max, 1, 1, False)


class MBV2Supernet(nn.Module):
    """The weight-sharing supernet of an ``MBV2Def`` space (implements the ``Supernet`` protocol)."""

    family = "mbv2"

    def __init__(self, d: MBV2Def):
        super().__init__()
        self.d = d
        self.space = build_space(d)
        self.stem = ElasticConv(d.in_channels, d.stem_channels, 3, d.stem_stride, False)
        blocks = {}
        cin_max = d.stem_channels
        for s, st in enumerate(d.stages):
            for b in range(max(st.depths)):
                stride = st.stride if b == 0 else 1
                cin = cin_max if b == 0 else max(st.widths)
                blocks[_block(s, b).replace(".", "_")] = ElasticBlock(cin, max(st.widths), max(d.kernels),
                                                                     max(d.expands), stride)
            cin_max = max(st.widths)
        self.blocks = nn.ModuleDict(blocks)
        self.head = ElasticConv(cin_max, d.head_channels, 1, 1, False)
        self.classifier = nn.Linear(d.head_channels, d.num_classes)

    def _arch(self, candidate: Candidate | dict[str, Any]) -> dict[str, Any]:
        if isinstance(candidate, Candidate):
            return self.space.validate(candidate).arch_dict
        return candidate

    def forward(self, x: torch.Tensor, candidate: Candidate | dict[str, Any]) -> torch.Tensor:
        arch = self._arch(candidate)
        x = self.stem(x, self.d.stem_channels, 3, "relu6")
        for bp in plan(self.d, arch):
            blk = self.blocks[f"s{bp.stage}_b{bp.index}"]
            y = blk.expand_conv(x, bp.mid, 1, "relu6")
            y = blk.dw(y, bp.mid, bp.kernel, "relu6")
            y = blk.project(y, bp.cout, 1, "none")
            x = x + y if bp.residual else y
        x = self.head(x, self.d.head_channels, 1, "relu6")
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        c = self.space.validate(candidate)
        return layer_specs(self.d, c.arch_dict, c.policy_dict)

    def all_layer_specs(self) -> list[LayerSpec]:
        return all_layer_specs(self.d)

    def fusion_units(self) -> list[tuple[LayerSpec, ...]]:
        """Every distinct inverted-residual block: the unit ONNX Runtime and OpenVINO fuse."""
        return all_blocks(self.d)

    def extract(self, candidate: Candidate) -> StaticNet:
        """A static sub-network with inherited weights computing what ``forward(x, candidate)`` computes."""
        arch = self._arch(candidate)
        d = self.d
        body: list[nn.Module] = [self.stem.extract("stem", d.in_channels, d.stem_channels, 3, "relu6")]
        for bp in plan(d, arch):
            blk = self.blocks[f"s{bp.stage}_b{bp.index}"]
            n = _block(bp.stage, bp.index)
            body.append(InvertedResidual(
                blk.expand_conv.extract(f"{n}.expand_conv", bp.cin, bp.mid, 1, "relu6"),
                blk.dw.extract(f"{n}.dw", bp.mid, bp.mid, bp.kernel, "relu6"),
                blk.project.extract(f"{n}.project", bp.mid, bp.cout, 1, "none"),
                bp.residual,
            ))
        cin = plan(d, arch)[-1].cout
        body.append(self.head.extract("head", cin, d.head_channels, 1, "relu6"))
        fc = nn.Linear(d.head_channels, d.num_classes)
        fc.load_state_dict(self.classifier.state_dict())
        body.append(LinearUnit("classifier", fc))
        return StaticNet(body).eval()


# --------------------------------------------------------------------------- named spaces
def mbv2_tiny(in_channels: int = 1, image_size: int = 32, num_classes: int = 10,
              bit_options: Sequence[Bits] = (FLOAT_BITS, (8, 8))) -> MBV2Def:
    """The demo space: three stages sized for 32x32 inputs, INT8 or float per layer."""
    return MBV2Def(
        name="mbv2-tiny",
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        stem_channels=16,
        stem_stride=2,
        stages=(
            StageDef(widths=(12, 16), depths=(1, 2, 3), stride=2),
            StageDef(widths=(16, 24), depths=(1, 2, 3), stride=2),
            StageDef(widths=(24, 32), depths=(1, 2, 3), stride=1),
        ),
        kernels=(3, 5, 7),
        expands=(3, 4, 6),
        head_channels=64,
        bit_options=tuple(bit_options),
        description=(
            "MobileNetV2-style demo space for 32x32 inputs: 3 stages, per stage depth {1,2,3} and width, "
            "per block kernel {3,5,7} and expansion {3,4,6}; per quantizable layer INT8 or float (W/A)."
        ),
    )


# BitFusion's native widths (BitBricks of 2 bits fused to 4 and 8) for weights and activations; APQ's {4, 6, 8}
BITFUSION_BITS: tuple[Bits, ...] = tuple((w, a) for w in (2, 4, 8) for a in (2, 4, 8))
APQ_BITS: tuple[Bits, ...] = tuple((w, a) for w in (4, 6, 8) for a in (4, 6, 8))
# BOMP-NAS's per-layer weight bits {4..8} with INT8 activations (Table I)
BOMP_BITS: tuple[Bits, ...] = tuple((w, 8) for w in (8, 7, 6, 5, 4))


def bitfusion_mbv2_tiny(in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> MBV2Def:
    """The demo space's shape for the BitFusion accelerator: W and A in {2, 4, 8} per layer, no float."""
    return replace(mbv2_tiny(in_channels, image_size, num_classes, BITFUSION_BITS), name="bitfusion-mbv2-tiny",
                   description="mbv2-tiny's architecture for a bit-flexible accelerator (BitFusion): per "
                               "quantizable layer W and A bits in {2,4,8}, no float layer")


def apq_mbv2_tiny(in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> MBV2Def:
    """The demo space's shape with APQ's per-layer W and A bits {4, 6, 8}, no float."""
    return replace(mbv2_tiny(in_channels, image_size, num_classes, APQ_BITS), name="apq-mbv2-tiny",
                   description="mbv2-tiny's architecture with APQ's per-layer W and A bits in {4,6,8}, no float "
                               "layer (BitFusion)")


def bomp_mbv2_tiny(in_channels: int = 1, image_size: int = 32, num_classes: int = 10) -> MBV2Def:
    """The demo space's shape with BOMP-NAS's per-layer weight bits {4..8} and INT8 activations, no float."""
    return replace(mbv2_tiny(in_channels, image_size, num_classes, BOMP_BITS), name="bomp-mbv2-tiny",
                   description="mbv2-tiny's architecture with BOMP-NAS's per-layer weight bits in {4,...,8} and "
                               "INT8 activations, no float layer (CPU targets; 4 bits stored as INT4)")


def all_blocks(d: Any) -> list[tuple[LayerSpec, LayerSpec, LayerSpec]]:
    """Every distinct float inverted-residual block (expand, depthwise, project) of an MBV2Def space."""
    seen: dict[tuple[str, ...], tuple[LayerSpec, LayerSpec, LayerSpec]] = {}
    stem = LayerSpec("conv", d.in_channels, d.stem_channels, 3, d.stem_stride, 1, d.image_size, "relu6")
    hw = stem.out_hw
    cins = {d.stem_channels}
    for st in d.stages:
        for b in range(max(st.depths)):
            stride = st.stride if b == 0 else 1
            in_opts = sorted(cins if b == 0 else set(st.widths))
            out_hw = (hw + 2 * 1 - 3) // stride + 1
            for cin in in_opts:
                for e in d.expands:
                    mid = cin * e
                    for k in d.kernels:
                        for w in st.widths:
                            blk = (LayerSpec("conv", cin, mid, 1, 1, 1, hw, "relu6"),
                                   LayerSpec("conv", mid, mid, k, stride, mid, hw, "relu6"),
                                   LayerSpec("conv", mid, w, 1, 1, 1, out_hw, "none", stride == 1 and cin == w))
                            seen.setdefault(tuple(s.key for s in blk), blk)
            hw = out_hw
        cins = set(st.widths)
    return list(seen.values())


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, register_family, sandwich_train

    spaces = {"mbv2-tiny": mbv2_tiny, "bitfusion-mbv2-tiny": bitfusion_mbv2_tiny, "apq-mbv2-tiny": apq_mbv2_tiny,
              "bomp-mbv2-tiny": bomp_mbv2_tiny}
    register_family(BuiltinFamily("mbv2", MBV2Supernet, spaces, sandwich_train,
                                  "elastic MobileNetV2 (once-for-all, APQ)"))


_register()
