"""once-for-all supernets (the ``ofa`` package's ``OFAMobileNetV3`` and ``OFAProxylessNASNets``), read natively.

The supernet keeps its weights under the ``ofa`` package's own state-dict keys, so a once-for-all
checkpoint loads as it is, and a subnet computes what ``ofa``'s ``set_active_subnet(ks, e, d)`` followed
by ``get_active_subnet(preserve_weight=True)`` computes:

- a 3x3 stride-2 first conv and a fixed first block (depthwise 3x3, project; MobileNetV3's has a residual);
- stages of elastic inverted-residual blocks: the first ``depth`` blocks of a stage run (ProxylessNAS's last
  stage is one fixed block); a block's middle width is ``make_divisible(round(cin * expand), 8)`` (its
  leading channels); its depthwise kernel is cut from the largest by the kernel transformation matrices
  (7x7 centre -> ``7to5_matrix`` -> 5x5 centre -> ``5to3_matrix`` -> 3x3); MobileNetV3's SE squeezes to
  ``make_divisible(mid // 4, 8)``;
- the head: MobileNetV3's final expand (1x1, BN, h-swish), global pooling, feature mix (1x1 conv without
  BN, h-swish) and classifier; ProxylessNAS's feature mix (1x1, BN, ReLU6), pooling and classifier.

Nothing here imports ``ofa``. Layer and gene names follow bitnas's MobileNet families: ``first_conv``,
``first_block.dw``/``.project``, ``s{stage}.b{block}.expand_conv``/``.dw``/``.se``/``.project``,
``final_expand`` (MobileNetV3), ``feature_mix``, ``classifier``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.errors import ConfigError
from bitnas.space import FLOAT_BITS, Bits, Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.static import SE, ConvUnit, InvertedResidual, LinearUnit, StaticNet, TokenLinearUnit


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
    """The once-for-all (and TF MobileNet) rounding of a channel count to a multiple of ``divisor``."""
    min_val = divisor if min_val is None else min_val
    new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class OFAStage:
    width: int  # before the width multiplier
    stride: int
    act: str
    se: bool = False
    elastic: bool = True  # False: one fixed block (ProxylessNAS's last stage)


@dataclass(frozen=True)
class Layout:
    """The fixed skeleton of a once-for-all network (before the width multiplier)."""

    kind: str
    first: int
    first_act: str
    first_block: int
    first_block_act: str
    first_block_shortcut: bool  # an identity shortcut when the first block keeps the width
    stages: tuple[OFAStage, ...]
    final_expand: int | None  # MobileNetV3's 1x1 expand before the pooling; None: the feature mix is there
    mix: int
    bn_eps: float


LAYOUTS = {
    "mbv3": Layout("mbv3", 16, "hswish", 16, "relu", True,
                   (OFAStage(24, 2, "relu"), OFAStage(40, 2, "relu", True), OFAStage(80, 2, "hswish"),
                    OFAStage(112, 1, "hswish", True), OFAStage(160, 2, "hswish", True)), 960, 1280, 1e-5),
    "proxyless": Layout("proxyless", 32, "relu6", 16, "relu6", False,
                        (OFAStage(24, 2, "relu6"), OFAStage(40, 2, "relu6"), OFAStage(80, 2, "relu6"),
                         OFAStage(96, 1, "relu6"), OFAStage(192, 2, "relu6"), OFAStage(320, 1, "relu6", elastic=False)),
                        None, 1280, 1e-3),
}


@dataclass(frozen=True)
class OFADef:
    """A once-for-all configuration: layout, width multiplier, elastic choices, classes, input shape."""

    name: str
    kind: str = "mbv3"
    width_mult: float = 1.0
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    bits: tuple[Bits, ...] = (FLOAT_BITS, (8, 8))
    description: str = ""

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.kind]

    def width(self, base: int) -> int:
        return make_divisible(base * self.width_mult, 8)

    def stage_depths(self, s: int) -> tuple[int, ...]:
        return tuple(self.depths) if self.layout.stages[s].elastic else (1,)

    @property
    def head(self) -> tuple[str, ...]:
        return ("final_expand", "feature_mix", "classifier") if self.layout.final_expand else ("feature_mix",
                                                                                              "classifier")

    def space(self) -> SearchSpace:
        bits = tuple(self.bits)
        genes = [Gene("first_conv", bits, "policy"), Gene("first_block.dw", bits, "policy"),
                 Gene("first_block.project", bits, "policy")]
        for s in range(len(self.layout.stages)):
            depths = self.stage_depths(s)
            if len(depths) > 1:
                genes.append(Gene(f"s{s}.depth", depths))
            for b in range(max(depths)):
                cond = None if b < min(depths) else (f"s{s}.depth", b + 1)
                genes.append(Gene(f"s{s}.b{b}.kernel", tuple(self.kernels), "arch", cond))
                genes.append(Gene(f"s{s}.b{b}.expand", tuple(self.expands), "arch", cond))
                for part in ("expand_conv", "dw", "project"):
                    genes.append(Gene(f"s{s}.b{b}.{part}", bits, "policy", cond))
        genes += [Gene(n, bits, "policy") for n in self.head]
        return SearchSpace(self.name, genes, self.description)


_CHOICES = "depth {2,3,4}, kernel {3,5,7}, expansion {3,4,6}; INT8/FP32 per layer"


def ofa_mbv3_w10(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000) -> OFADef:
    return OFADef("ofa-mbv3-w1.0", "mbv3", 1.0, num_classes=num_classes, in_channels=in_channels,
                  image_size=image_size, description="once-for-all MobileNetV3 w1.0 "
                                                     f"(ofa_mbv3_d234_e346_k357_w1.0): 5 stages x {_CHOICES}")


def ofa_mbv3_w12(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000) -> OFADef:
    return replace(ofa_mbv3_w10(in_channels, image_size, num_classes), name="ofa-mbv3-w1.2", width_mult=1.2,
                   description=f"once-for-all MobileNetV3 w1.2 (ofa_mbv3_d234_e346_k357_w1.2): 5 stages x {_CHOICES}")


def ofa_proxyless_w13(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000) -> OFADef:
    return OFADef("ofa-proxyless-w1.3", "proxyless", 1.3, num_classes=num_classes, in_channels=in_channels,
                  image_size=image_size,
                  description="once-for-all ProxylessNAS (MobileNetV2 blocks) w1.3 (ofa_proxyless_d234_e346_k357_w1.3):"
                              f" 5 elastic stages x {_CHOICES}, then one fixed block")


SPACES = {"ofa-mbv3-w1.0": ofa_mbv3_w10, "ofa-mbv3-w1.2": ofa_mbv3_w12, "ofa-proxyless-w1.3": ofa_proxyless_w13}


@dataclass(frozen=True)
class OFABlock:
    """One active elastic block of a subnet."""

    stage: int
    index: int  # within the stage
    ofa_index: int  # in ``blocks``
    cin: int
    mid: int
    cout: int
    kernel: int
    stride: int
    hw: int  # input side
    act: str
    se: bool
    residual: bool

    @property
    def out_hw(self) -> int:
        return (self.hw - 1) // self.stride + 1


def plan(d: OFADef, arch: dict[str, Any]) -> list[OFABlock]:
    """The active elastic blocks of ``arch`` in order."""
    hw = (d.image_size - 1) // 2 + 1  # after the first conv; the first block keeps it
    cin, out, first = d.width(d.layout.first_block), [], 1
    for s, st in enumerate(d.layout.stages):
        cout = d.width(st.width)
        for b in range(arch.get(f"s{s}.depth", 1)):
            stride = st.stride if b == 0 else 1
            k, e = arch[f"s{s}.b{b}.kernel"], arch[f"s{s}.b{b}.expand"]
            out.append(OFABlock(s, b, first + b, cin, make_divisible(round(cin * e), 8), cout, k, stride, hw,
                                st.act, st.se, stride == 1 and cin == cout))
            hw, cin = out[-1].out_hw, cout
        first += max(d.stage_depths(s))
    return out


def se_mid(c: int) -> int:
    return make_divisible(c // 4, 8)


# --------------------------------------------------------------------------- modules under ofa's key names
class _BN(nn.Module):
    """``DynamicBatchNorm2d``: the leading channels of one BatchNorm (``.bn``)."""

    def __init__(self, c: int, eps: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # training: batch statistics, the running ones of the leading channels updated in place (as ofa does)
        c, bn = x.shape[1], self.bn
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c], self.training,
                            bn.momentum, bn.eps)

    def slice(self, c: int) -> nn.BatchNorm2d:
        return _slice_bn(self.bn, c)


class _PointConv(nn.Module):
    """``DynamicConv2d`` (1x1): the leading output and input channels (``.conv``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def filter(self, cout: int, cin: int) -> torch.Tensor:
        return self.conv.weight[:cout, :cin]


class _DepthConv(nn.Module):
    """``DynamicSeparableConv2d``: the depthwise kernel, smaller kernels through the transformation matrices."""

    def __init__(self, c: int, kernels: tuple[int, ...], stride: int):
        super().__init__()
        self.kernels, self.stride = tuple(sorted(kernels)), stride
        self.conv = nn.Conv2d(c, c, max(kernels), stride, groups=c, bias=False)
        for small, large in zip(self.kernels, self.kernels[1:]):
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))

    def filter(self, c: int, k: int) -> torch.Tensor:
        w = self.conv.weight[:c]
        for large, small in zip(self.kernels[::-1], self.kernels[-2::-1]):
            if large <= k:
                break
            lo = large // 2 - small // 2
            centre = w[:, :, lo:lo + small, lo:lo + small].reshape(-1, small * small)
            w = F.linear(centre, getattr(self, f"{large}to{small}_matrix")).reshape(c, 1, small, small)
        return w


class _SEFc(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce = nn.Conv2d(c, se_mid(c), 1)
        self.expand = nn.Conv2d(se_mid(c), c, 1)


class _DynSE(nn.Module):
    """``DynamicSE``: the leading channels of the squeeze and excite convs (``.fc.reduce``, ``.fc.expand``)."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = _SEFc(c)

    def weights(self, c: int) -> tuple[torch.Tensor, ...]:
        r, fc = se_mid(c), self.fc
        return (fc.reduce.weight[:r, :c, 0, 0], fc.reduce.bias[:r], fc.expand.weight[:c, :r, 0, 0],
                fc.expand.bias[:c])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rw, rb, ew, eb = self.weights(x.shape[1])
        s = F.relu(F.linear(x.mean((2, 3)), rw, rb))
        return x * F.hardsigmoid(F.linear(s, ew, eb))[:, :, None, None]

    def extract(self, name: str, c: int) -> SE:
        se = SE(name, c, se_mid(c))
        with torch.no_grad():
            for dst, src in zip((se.reduce.weight, se.reduce.bias, se.expand.weight, se.expand.bias), self.weights(c)):
                dst.copy_(src)
        return se


class _Stage(nn.Module):
    """A ``nn.Sequential`` stand-in whose parameter names are those of ofa's ``conv``/``bn`` (+``se``) stacks."""

    def __init__(self, **mods: nn.Module):
        super().__init__()
        for k, m in mods.items():
            self.add_module(k, m)


class _MBConv(nn.Module):
    """``DynamicMBConvLayer``: ``inverted_bottleneck``, ``depth_conv`` (+ ``se``), ``point_linear``."""

    def __init__(self, cin: int, cout: int, d: OFADef, stride: int, use_se: bool):
        super().__init__()
        mid, eps = make_divisible(round(cin * max(d.expands)), 8), d.layout.bn_eps
        self.inverted_bottleneck = _Stage(conv=_PointConv(cin, mid), bn=_BN(mid, eps))
        dc = {"conv": _DepthConv(mid, d.kernels, stride), "bn": _BN(mid, eps)}
        if use_se:
            dc["se"] = _DynSE(mid)
        self.depth_conv = _Stage(**dc)
        self.point_linear = _Stage(conv=_PointConv(mid, cout), bn=_BN(cout, eps))


class _Residual(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int, eps: float, bn: bool = True) -> _Stage:
    mods: dict[str, nn.Module] = {"conv": nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)}
    if bn:
        mods["bn"] = nn.BatchNorm2d(cout, eps=eps)
    return _Stage(**mods)


class _FirstBlock(nn.Module):
    """The fixed first block (``MBConvLayer`` with expansion 1): ``depth_conv``, ``point_linear``."""

    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.depth_conv = _conv_bn(cin, cin, 3, 1, cin, eps)
        self.point_linear = _conv_bn(cin, cout, 1, 1, 1, eps)


class _Classifier(nn.Module):
    def __init__(self, cin: int, n: int):
        super().__init__()
        self.linear = nn.Linear(cin, n)


_ACT = {"relu": F.relu, "relu6": F.relu6, "hswish": F.hardswish, "none": lambda y: y}


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    return _ACT[act](y)


def _copy_conv(weight: torch.Tensor, stride: int, groups: int) -> nn.Conv2d:
    cout, cin_g, k, _ = weight.shape
    conv = nn.Conv2d(cin_g * groups, cout, k, stride, k // 2, groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def _slice_bn(bn: nn.BatchNorm2d, c: int | None = None) -> nn.BatchNorm2d:
    c = bn.num_features if c is None else c
    out = nn.BatchNorm2d(c, eps=bn.eps)
    with torch.no_grad():
        for a in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, a).copy_(getattr(bn, a)[:c])
    return out.eval()


class OFASupernet(nn.Module):
    """A once-for-all supernet (``Supernet`` protocol) with the ``ofa`` package's state-dict keys."""

    def __init__(self, d: OFADef):
        super().__init__()
        self.d, L = d, d.layout
        self.family = f"ofa-{d.kind}"
        self.space = d.space()
        eps, w0, w1 = L.bn_eps, d.width(L.first), d.width(L.first_block)
        self.first_conv = _conv_bn(d.in_channels, w0, 3, 2, 1, eps)
        blocks: list[nn.Module] = [_Residual(_FirstBlock(w0, w1, eps))]
        cin = w1
        for s, st in enumerate(L.stages):
            for b in range(max(d.stage_depths(s))):
                blocks.append(_Residual(_MBConv(cin, d.width(st.width), d, st.stride if b == 0 else 1, st.se)))
                cin = d.width(st.width)
        self.blocks = nn.ModuleList(blocks)
        mix = d.width(L.mix)
        if L.final_expand:
            self.final_expand_layer = _conv_bn(cin, d.width(L.final_expand), 1, 1, 1, eps)
            self.feature_mix_layer = _conv_bn(d.width(L.final_expand), mix, 1, 1, 1, eps, bn=False)
        else:
            self.feature_mix_layer = _conv_bn(cin, mix, 1, 1, 1, eps)
        self.classifier = _Classifier(mix, d.num_classes)

    @property
    def _first_residual(self) -> bool:
        L = self.d.layout
        return L.first_block_shortcut and self.d.width(L.first) == self.d.width(L.first_block)

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load a once-for-all checkpoint (``train.init``). It must hold this space's configuration; a
        classifier for another number of classes is left out (the head is trained anew)."""
        state = read_state_dict(path)
        d = infer_definition(state, path, in_channels=self.d.in_channels, image_size=self.d.image_size,
                             num_classes=self.d.num_classes)
        mine = replace(self.d, num_classes=d.num_classes)
        for f in ("kind", "width_mult", "kernels", "expands", "depths", "in_channels"):
            if getattr(d, f) != getattr(mine, f):
                raise ConfigError(f"{path}: checkpoint has {f} {getattr(d, f)}, the space '{self.d.name}' "
                                  f"{getattr(mine, f)}")
        n = state["classifier.linear.weight"].shape[0] if "classifier.linear.weight" in state else None
        notes, skip = [], ()
        if n is not None and n != self.d.num_classes:
            skip = ("classifier.",)
            notes.append(f"classifier for {n} classes left out: the data have {self.d.num_classes}; the head is "
                         "trained anew (set train.epochs)")
        load_ofa_weights(self, state, path, skip)
        return notes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.d.in_channels, self.d.image_size, self.d.image_size)

    def _arch(self, candidate: Candidate) -> dict[str, Any]:
        return self.space.validate(candidate).arch_dict

    # ---------------------------------------------------------------- the dynamic network
    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        """The candidate's float subnet, computed on the shared weights (training and accuracy)."""
        L, fc, fb = self.d.layout, self.first_conv, self.blocks[0].conv
        x = _act(fc.bn(fc.conv(x)), L.first_act)
        y = _act(fb.depth_conv.bn(fb.depth_conv.conv(x)), L.first_block_act)
        y = fb.point_linear.bn(fb.point_linear.conv(y))
        x = x + y if self._first_residual else y
        for bp in plan(self.d, self._arch(candidate)):
            m = self.blocks[bp.ofa_index].conv
            y = _act(m.inverted_bottleneck.bn(F.conv2d(x, m.inverted_bottleneck.conv.filter(bp.mid, bp.cin))),
                     bp.act)
            dc = m.depth_conv
            y = F.conv2d(y, dc.conv.filter(bp.mid, bp.kernel), None, bp.stride, bp.kernel // 2, 1, bp.mid)
            y = _act(dc.bn(y), bp.act)
            if bp.se:
                y = dc.se(y)
            y = m.point_linear.bn(F.conv2d(y, m.point_linear.conv.filter(bp.cout, bp.mid)))
            x = x + y if bp.residual else y
        fm = self.feature_mix_layer
        if L.final_expand:
            fe = self.final_expand_layer
            x = F.hardswish(fe.bn(fe.conv(x)))
            x = F.hardswish(fm.conv(x.mean((2, 3), keepdim=True))).flatten(1)
        else:
            x = F.relu6(fm.bn(fm.conv(x))).mean((2, 3))
        return self.classifier.linear(x)

    # ---------------------------------------------------------------- static subnets
    def extract(self, candidate: Candidate) -> StaticNet:
        """The candidate's static float subnet with inherited weights (BatchNorm unfolded, eval mode)."""
        d, L = self.d, self.d.layout
        fc, fb, w0 = self.first_conv, self.blocks[0].conv, d.width(L.first)
        body: list[nn.Module] = [ConvUnit("first_conv", _copy_conv(fc.conv.weight, 2, 1),
                                          _slice_bn(fc.bn), L.first_act)]
        body.append(InvertedResidual(
            None, ConvUnit("first_block.dw", _copy_conv(fb.depth_conv.conv.weight, 1, w0),
                           _slice_bn(fb.depth_conv.bn), L.first_block_act),
            ConvUnit("first_block.project", _copy_conv(fb.point_linear.conv.weight, 1, 1),
                     _slice_bn(fb.point_linear.bn), "none"), self._first_residual))
        for bp in plan(d, self._arch(candidate)):
            m, n = self.blocks[bp.ofa_index].conv, f"s{bp.stage}.b{bp.index}"
            ib, dc, pl = m.inverted_bottleneck, m.depth_conv, m.point_linear
            expand = ConvUnit(f"{n}.expand_conv", _copy_conv(ib.conv.filter(bp.mid, bp.cin), 1, 1),
                              ib.bn.slice(bp.mid), bp.act)
            dw = ConvUnit(f"{n}.dw", _copy_conv(dc.conv.filter(bp.mid, bp.kernel), bp.stride, bp.mid),
                          dc.bn.slice(bp.mid), bp.act)
            se = dc.se.extract(f"{n}.se", bp.mid) if bp.se else None
            project = ConvUnit(f"{n}.project", _copy_conv(pl.conv.filter(bp.cout, bp.mid), 1, 1),
                               pl.bn.slice(bp.cout), "none")
            body.append(InvertedResidual(expand, dw, project, bp.residual, se=se))
        fm, mix_w = self.feature_mix_layer, d.width(L.mix)
        cls = nn.Linear(mix_w, d.num_classes)
        cls.load_state_dict(self.classifier.linear.state_dict())
        if L.final_expand:
            fe = self.final_expand_layer
            body.append(ConvUnit("final_expand", _copy_conv(fe.conv.weight, 1, 1), _slice_bn(fe.bn),
                                 "hswish"))
            mix = nn.Linear(d.width(L.final_expand), mix_w)
            with torch.no_grad():
                mix.weight.copy_(fm.conv.weight[:, :, 0, 0])
                mix.bias.zero_()
            body += [LinearUnit("feature_mix", mix, act="hswish"), TokenLinearUnit("classifier", cls)]
        else:
            body += [ConvUnit("feature_mix", _copy_conv(fm.conv.weight, 1, 1), _slice_bn(fm.bn), "relu6"),
                     LinearUnit("classifier", cls)]
        return StaticNet(body).eval()

    # ---------------------------------------------------------------- what the LUT prices
    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        c = self.space.validate(candidate)
        pol, d, L = c.policy_dict, self.d, self.d.layout
        w0, w1 = d.width(L.first), d.width(L.first_block)

        def spec(name: str, **kw: Any) -> LayerSpec:
            return LayerSpec(name=name, **kw).with_bits(pol.get(name, FLOAT_BITS))

        hw = (d.image_size - 1) // 2 + 1
        out = [spec("first_conv", op="conv", cin=d.in_channels, cout=w0, kernel=3, stride=2, hw=d.image_size,
                    act=L.first_act),
               spec("first_block.dw", op="conv", cin=w0, cout=w0, kernel=3, groups=w0, hw=hw, act=L.first_block_act),
               spec("first_block.project", op="conv", cin=w0, cout=w1, hw=hw, residual=self._first_residual)]
        for bp in plan(d, c.arch_dict):
            n = f"s{bp.stage}.b{bp.index}"
            out.append(spec(f"{n}.expand_conv", op="conv", cin=bp.cin, cout=bp.mid, hw=bp.hw, act=bp.act))
            out.append(spec(f"{n}.dw", op="conv", cin=bp.mid, cout=bp.mid, kernel=bp.kernel, stride=bp.stride,
                            groups=bp.mid, hw=bp.hw, act=bp.act))
            if bp.se:
                out.append(spec(f"{n}.se", op="se", cin=bp.mid, cout=se_mid(bp.mid), hw=bp.out_hw))
            out.append(spec(f"{n}.project", op="conv", cin=bp.mid, cout=bp.cout, hw=bp.out_hw,
                            residual=bp.residual))
            hw = bp.out_hw
        last, mix = d.width(L.stages[-1].width), d.width(L.mix)
        if L.final_expand:
            fe = d.width(L.final_expand)
            out.append(spec("final_expand", op="conv", cin=last, cout=fe, hw=hw, act="hswish"))
            out.append(spec("feature_mix", op="linear", cin=fe, cout=mix, hw=hw, act="hswish"))
            out.append(spec("classifier", op="dense", cin=mix, cout=d.num_classes, hw=1))
        else:
            out.append(spec("feature_mix", op="conv", cin=last, cout=mix, hw=hw, act="relu6"))
            out.append(spec("classifier", op="linear", cin=mix, cout=d.num_classes, hw=hw))
        return out

    def _deepest(self) -> dict[str, Any]:
        """An arch at every stage's largest depth: its plan has every block position of the space."""
        arch = {g.name: g.options[0] for g in self.space.genes if g.kind == "arch"}
        arch.update({g.name: max(g.options) for g in self.space.genes if g.name.endswith(".depth")})
        return arch

    def _block_variants(self) -> list[tuple[LayerSpec, ...]]:
        """Every block position at every kernel and expansion (float): a position's input width and side
        are fixed (these once-for-all spaces have no elastic width), so this is every block of the space."""
        out = []
        for bp in plan(self.d, self._deepest()):
            for k in self.d.kernels:
                for e in self.d.expands:
                    mid = make_divisible(round(bp.cin * e), 8)
                    specs = [LayerSpec("conv", bp.cin, mid, 1, 1, 1, bp.hw, bp.act),
                             LayerSpec("conv", mid, mid, k, bp.stride, mid, bp.hw, bp.act)]
                    if bp.se:
                        specs.append(LayerSpec("se", mid, se_mid(mid), hw=bp.out_hw))
                    specs.append(LayerSpec("conv", mid, bp.cout, 1, 1, 1, bp.out_hw, "none", bp.residual))
                    out.append(tuple(specs))
        return out

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float LayerSpec of the space: the fixed layers and every block variant's."""
        fixed = self.layers(self.space.make(self._deepest()))
        seen: dict[str, LayerSpec] = {}
        for ls in [s.with_bits(FLOAT_BITS) for s in fixed[:3] + fixed[-len(self.d.head):]] + [
                ls for blk in self._block_variants() for ls in blk]:
            seen.setdefault(ls.key, ls)
        return list(seen.values())

    def fusion_units(self) -> list[tuple[LayerSpec, ...]]:
        """The fixed first block and every elastic block variant (expand, depthwise, SE, project)."""
        first = tuple(s.with_bits(FLOAT_BITS) for s in self.layers(self.space.make(self._deepest()))[1:3])
        units = {tuple(s.key for s in u): u for u in [first, *self._block_variants()]}
        return list(units.values())


# --------------------------------------------------------------------------- once-for-all checkpoints
OFA_NAME = re.compile(r"ofa_(?P<kind>mbv3|proxyless)_d(?P<d>\d+)_e(?P<e>\d+)_k(?P<k>\d+)_w(?P<w>[0-9.]+?)"
                      r"(?:\.pth?)?$")
NETWORK = {"mbv3": "OFAMobileNetV3", "proxyless": "OFAProxylessNASNets"}
WIDTHS = (1.0, 1.2, 1.3, 0.75, 0.5, 1.25, 1.5, 2.0)


def _key_variants(key: str) -> list[str]:
    """The spellings ofa's own ``load_state_dict`` accepts for one of its state-dict keys."""
    out = [key]
    for a, b in ((".bn.bn.", ".bn."), (".conv.conv.weight", ".conv.weight"), (".linear.linear.", ".linear.")):
        if a in key:
            out.append(key.replace(a, b))
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a once-for-all checkpoint (``{'state_dict': ...}`` or a bare state dict), weights only."""
    from bitnas.supernets.families import read_weights

    path = Path(path)
    raw = read_weights(path, "once-for-all checkpoint")
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state dict of tensors")
    return {k.replace(".mobile_inverted_conv.", ".conv."): v for k, v in state.items()}


def infer_definition(state: dict[str, torch.Tensor], path: str | Path, in_channels: int | None = None,
                     image_size: int = 224, num_classes: int | None = None,
                     depths: tuple[int, ...] | None = None, expands: tuple[int, ...] | None = None) -> OFADef:
    """The once-for-all configuration a checkpoint holds: the network from its keys (MobileNetV3 has a final
    expand layer), the width from the first conv and the last stage, kernels from the transformation
    matrices, the largest expansion and depth from the shapes, the rest from the checkpoint's once-for-all
    name (``ofa_mbv3_d234_e346_k357_w1.0``) or the arguments."""
    path = Path(path)
    kind = "mbv3" if any(k.startswith("final_expand_layer.") for k in state) else "proxyless"
    L = LAYOUTS[kind]

    def need(key: str) -> torch.Tensor:
        for k in _key_variants(key):
            if k in state:
                return state[k]
        raise ConfigError(f"{path}: not an {NETWORK[kind]} checkpoint: no '{key}'")

    first = need("first_conv.conv.weight")
    last = need("final_expand_layer.conv.weight" if L.final_expand else "feature_mix_layer.conv.weight").shape[1]
    width = next((wm for wm in WIDTHS if make_divisible(L.first * wm, 8) == first.shape[0]
                  and make_divisible(L.stages[-1].width * wm, 8) == last), None)
    if width is None:
        raise ConfigError(f"{path}: first conv width {first.shape[0]} and last stage width {last} match no "
                          f"{NETWORK[kind]} width multiplier")
    m = OFA_NAME.search(path.name)
    ib = need("blocks.1.conv.inverted_bottleneck.conv.conv.weight")
    kernels = sorted({int(k.split("to")[1].split("_")[0]) for k in state if k.endswith("_matrix")}
                     | {need("blocks.1.conv.depth_conv.conv.conv.weight").shape[-1]})
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    fixed = sum(not st.elastic for st in L.stages)
    dmax = (n_blocks - 1 - fixed) // (len(L.stages) - fixed)
    if depths is None:
        depths = tuple(int(c) for c in m.group("d")) if m else tuple(range(2, dmax + 1))
    if expands is None:
        expands = tuple(int(c) for c in m.group("e")) if m else (3, 4, 6)
    if max(depths) != dmax:
        raise ConfigError(f"{path}: holds {dmax} blocks per stage, but the depths are {list(depths)}")
    if make_divisible(round(ib.shape[1] * max(expands)), 8) != ib.shape[0]:
        raise ConfigError(f"{path}: the first block's middle width ({ib.shape[0] / ib.shape[1]:.2g}x its input) "
                          f"is not the largest expansion {max(expands)}")
    name = next((n for n, f in SPACES.items() if (f().kind, f().width_mult) == (kind, width)),
                f"ofa-{kind}-w{width}")
    d = OFADef(name, kind, width, tuple(kernels), tuple(expands), tuple(depths),
               num_classes or need("classifier.linear.weight").shape[0], in_channels or first.shape[1], image_size)
    if d.in_channels != first.shape[1]:
        raise ConfigError(f"{path}: the first conv reads {first.shape[1]} channels, not {d.in_channels}")
    return d


def load_ofa_weights(net: OFASupernet, state: dict[str, torch.Tensor], path: str | Path,
                     skip: tuple[str, ...] = ()) -> None:
    """Copy a once-for-all state dict into ``net``; the first key that is missing or has another shape is
    named. Keys starting with one of ``skip`` keep ``net``'s own values."""
    own = net.state_dict()
    new = {}
    for key, t in own.items():
        if key.startswith(skip):
            new[key] = t
            continue
        for k in _key_variants(key):
            if k in state:
                if tuple(state[k].shape) != tuple(t.shape):
                    raise ConfigError(f"{path}: '{k}' has shape {list(state[k].shape)}, the supernet "
                                      f"'{net.space.name}' needs {list(t.shape)}")
                new[key] = state[k]
                break
        else:
            if key.endswith("num_batches_tracked"):
                new[key] = t
                continue
            raise ConfigError(f"{path}: no '{key}' (supernet '{net.space.name}')")
    net.load_state_dict(new)


def checkpoint_space(path: str | Path) -> tuple[str, str, int]:
    """(family, space, input channels) of a once-for-all checkpoint (MobileNetV3, ProxylessNAS or ResNet, as
    its keys say); a configuration bitnas has no space for is refused, naming what it holds."""
    state = read_state_dict(path)
    if any(k.startswith("input_stem.") for k in state):
        from bitnas.supernets.ofa_resnet import resnet_checkpoint_space

        return resnet_checkpoint_space(state, path)
    d = infer_definition(state, path)
    known = SPACES[d.name]() if d.name in SPACES else None
    if known is None or (known.kernels, known.expands, known.depths) != (d.kernels, d.expands, d.depths):
        raise ConfigError(f"{path}: holds {NETWORK[d.kind]} width {d.width_mult}, kernels {list(d.kernels)}, "
                          f"expansions {list(d.expands)}, depths {list(d.depths)}; bitnas has the released spaces "
                          f"{', '.join(SPACES)} (d234_e346_k357)")
    return f"ofa-{d.kind}", d.name, d.in_channels


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, register_family, sandwich_train

    for kind in LAYOUTS:
        register_family(BuiltinFamily(
            f"ofa-{kind}", OFASupernet, {n: f for n, f in SPACES.items() if f().kind == kind}, sandwich_train,
            f"once-for-all {NETWORK[kind]} (the ofa package's), read from its checkpoints"))


_register()
