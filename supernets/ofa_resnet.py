"""once-for-all ResNet-50 (the ``ofa`` package's ``OFAResNets``), read natively.

The supernet keeps its weights under the ``ofa`` package's own state-dict keys, so a once-for-all
checkpoint (``ofa_resnet50_d=0,1,2_e=0.2,0.25,0.35_w=0.65,0.8,1.0``) loads as it is, and a subnet computes
what ``ofa``'s ``set_active_subnet(d, e, w)`` followed by ``get_active_subnet(preserve_weight=True)``
computes:

- the input stem: a 3x3 stride-2 conv, an optional residual 3x3 conv (``stem.extra``; ofa skips it when
  the stem's depth is not the largest), a 3x3 conv, each with BatchNorm and ReLU; then a 3x3 stride-2
  max pool. Width multiplier ``stem.w0`` sets the first two convs (``make_divisible(make_divisible(64 w) // 2)``
  channels), ``stem.w1`` the third (``make_divisible(64 w)``);
- four stages of ``base + extra`` bottlenecks (base depths 2, 2, 4, 2; widths 256, 512, 1024, 2048 times
  the stage's width multiplier ``s{s}.width``): 1x1, 3x3 (strided in a stage's first block), 1x1, ReLU after
  the residual add. A bottleneck's middle width is ``make_divisible(round(out * expand), 8)`` (its leading
  channels). A stage's first block adds a downsampled shortcut (``avgpool_conv``): a ``stride`` x ``stride``
  average pool (none at stride 1), a 1x1 conv and BatchNorm;
- global average pooling and the classifier.

Convs take the leading channels of the largest; BatchNorm the leading statistics. Layer and gene names are
those of the SimQ-NAS OFA-ResNet50 space (``paper_spaces.resnet_genes``): ``stem.conv1``..``stem.conv3``,
``stem.maxpool``, ``s{s}.b{b}.conv1``..``conv3``, ``s{s}.b0.averagepool``, ``s{s}.b0.shortcut``,
``classifier``. Nothing here imports ``ofa``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.errors import ConfigError
from bitnas.space import FLOAT_BITS, Bits, Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.ofa import (
    _BN,
    _Classifier,
    _copy_conv,
    _key_variants,
    _Stage,
    load_ofa_weights,
    make_divisible,
    read_state_dict,
)
from bitnas.supernets.paper_spaces import INT8_OR_FLOAT, resnet_genes
from bitnas.supernets.resnet import Bottleneck, StemResidual
from bitnas.supernets.static import ConvUnit, LinearUnit, Pool, StaticNet, leading_inputs

BASE_DEPTHS = (2, 2, 4, 2)
STAGE_WIDTHS = (256, 512, 1024, 2048)
STRIDES = (1, 2, 2, 2)
STEM_WIDTH = 64
BN_EPS = 1e-5


@dataclass(frozen=True)
class OFAResNetDef:
    """An ``OFAResNets`` configuration: elastic extra depths, expansions, width multipliers; classes, input."""

    name: str = "ofa-resnet50"
    depths: tuple[int, ...] = (0, 1, 2)  # extra blocks per stage (ofa's depth_list)
    expands: tuple[float, ...] = (0.2, 0.25, 0.35)
    widths: tuple[float, ...] = (0.65, 0.8, 1.0)
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    bits: tuple[Bits, ...] = INT8_OR_FLOAT
    description: str = ""

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ConfigError(f"space '{self.name}': once-for-all ResNet runs at input sides that are multiples "
                              f"of 32 (every downsampling halves an even map), not {self.image_size}")

    def space(self) -> SearchSpace:
        genes = resnet_genes(BASE_DEPTHS, self.depths, self.expands, self.widths, self.bits)
        if len(self.depths) == 1:  # ofa never skips the stem's residual conv with one depth
            genes = [Gene("stem.extra", (1,)) if g.name == "stem.extra" else g for g in genes]
        return SearchSpace(self.name, genes, self.description)


def ofa_resnet50(in_channels: int = 3, image_size: int = 224, num_classes: int = 1000) -> OFAResNetDef:
    return OFAResNetDef("ofa-resnet50", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                        description="once-for-all ResNet-50 (ofa_resnet50_d=0,1,2_e=0.2,0.25,0.35_w=0.65,0.8,1.0): "
                                    "stem depth, extra depth {0,1,2} x4, expansion {0.2,0.25,0.35} x18, width "
                                    "{0.65,0.8,1.0} x6; INT8/FP32 per layer")

SPACES = {"ofa-resnet50": ofa_resnet50}


def stem_widths(wm: float) -> tuple[int, int]:
    """(first two convs, third conv) of the input stem at width multiplier ``wm``."""
    out = make_divisible(STEM_WIDTH * wm, 8)
    return make_divisible(out // 2, 8), out


def stage_width(s: int, wm: float) -> int:
    return make_divisible(STAGE_WIDTHS[s] * wm, 8)


def mid_width(cout: int, expand: float) -> int:
    return make_divisible(round(cout * expand), 8)


def _half(hw: int) -> int:  # a 3x3 stride-2 conv or pool padded by 1
    return (hw - 1) // 2 + 1


@dataclass(frozen=True)
class BlockPlan:
    """One active bottleneck of a subnet."""

    stage: int
    index: int  # within the stage
    ofa_index: int  # in ``blocks``
    cin: int
    mid: int
    cout: int
    stride: int
    hw: int  # input side

    @property
    def out_hw(self) -> int:
        return (self.hw - 1) // self.stride + 1

    @property
    def name(self) -> str:
        return f"s{self.stage}.b{self.index}"


def plan(d: OFAResNetDef, arch: dict[str, Any]) -> tuple[int, int, list[BlockPlan]]:
    """(stem conv1/conv2 width, stem conv3 width, the active bottlenecks in order)."""
    w0, w1 = stem_widths(arch["stem.w0"])[0], stem_widths(arch["stem.w1"])[1]
    hw, cin, first, out = _half(_half(d.image_size)), w1, 0, []
    for s, base in enumerate(BASE_DEPTHS):
        cout = stage_width(s, arch[f"s{s}.width"])
        for b in range(base + arch[f"s{s}.extra"]):
            stride = STRIDES[s] if b == 0 else 1
            out.append(BlockPlan(s, b, first + b, cin, mid_width(cout, arch[f"s{s}.b{b}.expand"]), cout, stride, hw))
            hw, cin = out[-1].out_hw, cout
        first += base + max(d.depths)
    return w0, w1, out


# --------------------------------------------------------------------------- modules under ofa's key names
class _DynConv(nn.Module):
    """``DynamicConv2d``: the leading output and input channels of one conv (``.conv``), padded 'same'."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

    def filter(self, cout: int, cin: int) -> torch.Tensor:
        return self.conv.weight[:cout, :cin]

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, self.filter(cout, x.shape[1]), None, c.stride, c.padding)


class _ConvLayer(nn.Module):
    """``DynamicConvLayer`` (and a bottleneck's ``conv1``..``conv3``): ``.conv``, ``.bn``, then ReLU or nothing."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv, self.bn, self.relu = _DynConv(cin, cout, k, stride), _BN(cout, BN_EPS), relu

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        y = self.bn(self.conv(x, cout))
        return F.relu(y) if self.relu else y

    def extract(self, name: str, cin: int, cout: int, act: str | None = None) -> ConvUnit:
        c = self.conv.conv
        return ConvUnit(name, _copy_conv(self.conv.filter(cout, cin), c.stride[0], 1), self.bn.slice(cout),
                        act or ("relu" if self.relu else "none"))


class _Block(nn.Module):
    """``DynamicResNetBottleneckBlock``: ``conv1``, ``conv2``, ``conv3``, ``downsample`` (``avgpool_conv``)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, downsample: bool):
        super().__init__()
        self.stride = stride
        self.conv1 = _ConvLayer(cin, mid)
        self.conv2 = _ConvLayer(mid, mid, 3, stride)
        self.conv3 = _ConvLayer(mid, cout, relu=False)
        self.downsample = _Stage(conv=_DynConv(cin, cout), bn=_BN(cout, BN_EPS)) if downsample else None

    def forward(self, x: torch.Tensor, bp: BlockPlan) -> torch.Tensor:
        res = x
        if self.downsample is not None:
            pooled = F.avg_pool2d(x, self.stride, self.stride, 0, ceil_mode=True) if self.stride > 1 else x
            res = self.downsample.bn(self.downsample.conv(pooled, bp.cout))
        y = self.conv3(self.conv2(self.conv1(x, bp.mid), bp.mid), bp.cout)
        return F.relu(y + res)


class OFAResNetSupernet(nn.Module):
    """A once-for-all ResNet-50 supernet (``Supernet`` protocol) with the ``ofa`` package's state-dict keys."""

    family = "ofa-resnet"

    def __init__(self, d: OFAResNetDef):
        super().__init__()
        self.d, self.space = d, d.space()
        wmax = max(d.widths)
        m0, m1 = stem_widths(wmax)
        self.input_stem = nn.ModuleList([_ConvLayer(d.in_channels, m0, 3, 2), StemResidual(_ConvLayer(m0, m0, 3)),
                                         _ConvLayer(m0, m1, 3)])
        blocks, cin = [], m1
        for s, base in enumerate(BASE_DEPTHS):
            cout = stage_width(s, wmax)
            for b in range(base + max(d.depths)):
                stride = STRIDES[s] if b == 0 else 1
                # ofa's rule on the width lists: an identity shortcut when stride 1 and the widths agree
                blocks.append(_Block(cin, cout, mid_width(cout, max(d.expands)), stride, b == 0))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classifier = _Stage(linear=_Classifier(cin, d.num_classes))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.d.in_channels, self.d.image_size, self.d.image_size)

    def _arch(self, candidate: Candidate) -> dict[str, Any]:
        return self.space.validate(candidate).arch_dict

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load a once-for-all ResNet checkpoint (``train.init``); a classifier for another number of classes
        is left out (the head is trained anew)."""
        state = read_state_dict(path)
        d = infer_definition(state, path, in_channels=self.d.in_channels, image_size=self.d.image_size,
                             num_classes=self.d.num_classes)
        for f in ("depths", "expands", "widths", "in_channels"):
            if getattr(d, f) != getattr(self.d, f):
                raise ConfigError(f"{path}: checkpoint has {f} {getattr(d, f)}, the space '{self.d.name}' "
                                  f"{getattr(self.d, f)}")
        n = _find(state, "classifier.linear.linear.weight")
        notes, skip = [], ()
        if n is not None and n.shape[0] != self.d.num_classes:
            skip = ("classifier.",)
            notes.append(f"classifier for {n.shape[0]} classes left out: the data have {self.d.num_classes}; the "
                         "head is trained anew (set train.epochs)")
        load_ofa_weights(self, state, path, skip)
        return notes

    # ---------------------------------------------------------------- the dynamic network
    def forward(self, x: torch.Tensor, candidate: Candidate) -> torch.Tensor:
        """The candidate's float subnet, computed on the shared weights (training and accuracy)."""
        arch = self._arch(candidate)
        w0, w1, bps = plan(self.d, arch)
        s0, s1, s2 = self.input_stem
        x = s0(x, w0)
        if arch["stem.extra"]:
            x = x + s1.conv(x, w0)
        x = F.max_pool2d(s2(x, w1), 3, 2, 1)
        for bp in bps:
            x = self.blocks[bp.ofa_index](x, bp)
        lin = self.classifier.linear.linear
        return F.linear(x.mean((2, 3)), lin.weight[:, :x.shape[1]], lin.bias)

    # ---------------------------------------------------------------- static subnets
    def extract(self, candidate: Candidate) -> StaticNet:
        """The candidate's static float subnet with inherited weights (BatchNorm unfolded, eval mode)."""
        arch = self._arch(candidate)
        w0, w1, bps = plan(self.d, arch)
        s0, s1, s2 = self.input_stem
        body: list[nn.Module] = [s0.extract("stem.conv1", self.d.in_channels, w0)]
        if arch["stem.extra"]:
            body.append(StemResidual(s1.conv.extract("stem.conv2", w0, w0)))
        body += [s2.extract("stem.conv3", w0, w1), Pool("stem", "maxpool", 3, 2)]
        for bp in bps:
            m, n = self.blocks[bp.ofa_index], bp.name
            shortcut = None
            if m.downsample is not None:
                ds = m.downsample
                conv = ConvUnit(f"{n}.shortcut", _copy_conv(ds.conv.filter(bp.cout, bp.cin), 1, 1),
                                ds.bn.slice(bp.cout), "none")
                shortcut = nn.Sequential(Pool(n, "avgpool", bp.stride, bp.stride), conv) if bp.stride > 1 else conv
            body.append(Bottleneck(m.conv1.extract(f"{n}.conv1", bp.cin, bp.mid),
                                   m.conv2.extract(f"{n}.conv2", bp.mid, bp.mid),
                                   m.conv3.extract(f"{n}.conv3", bp.mid, bp.cout), shortcut))
        body.append(LinearUnit("classifier", leading_inputs(self.classifier.linear.linear, bps[-1].cout)))
        return StaticNet(body).eval()

    # ---------------------------------------------------------------- what the LUT prices
    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        c = self.space.validate(candidate)
        arch, pol, d = c.arch_dict, c.policy_dict, self.d
        w0, w1, bps = plan(d, arch)
        return [s.with_bits(pol.get(s.name, FLOAT_BITS)) for s in
                _stem_specs(d, w0, w1, bool(arch["stem.extra"])) + [ls for bp in bps for ls in _block_specs(bp)]
                + [LayerSpec("linear", bps[-1].cout, d.num_classes, hw=bps[-1].out_hw, name="classifier")]]

    def fusion_units(self) -> list[tuple[LayerSpec, ...]]:
        """Every stem variant and every bottleneck a subnet can have (float, with its shortcut): a block's
        input side and stride are fixed by its position; its widths by the stage's and the previous
        stage's width choice and its expansion."""
        d, units = self.d, {}

        def add(specs: list[LayerSpec]) -> None:
            units.setdefault(tuple(s.key for s in specs), tuple(specs))

        for a in d.widths:
            for b in d.widths:
                for extra in sorted({bool(v) for v in self.space.gene("stem.extra").options}):
                    add(_stem_specs(d, stem_widths(a)[0], stem_widths(b)[1], extra)[:-1])
        cins, hw = sorted({stem_widths(w)[1] for w in d.widths}), _half(_half(d.image_size))
        for s in range(len(BASE_DEPTHS)):
            couts = sorted({stage_width(s, w) for w in d.widths})
            for b in range(2):  # a stage's first block, and any other (all alike)
                stride = STRIDES[s] if b == 0 else 1
                for cout in couts:
                    for cin in cins if b == 0 else [cout]:
                        for e in d.expands:
                            add(_block_specs(BlockPlan(s, b, 0, cin, mid_width(cout, e), cout, stride,
                                                       hw if b == 0 else (hw - 1) // STRIDES[s] + 1)))
            cins, hw = couts, (hw - 1) // STRIDES[s] + 1
        return list(units.values())

    def all_layer_specs(self) -> list[LayerSpec]:
        """Every distinct float LayerSpec of the space: the layers of every fusion unit, the stem's max pool
        and the classifier at every width."""
        d, seen = self.d, {}
        last_hw = _half(_half(d.image_size)) // 8
        lone = [_stem_specs(d, stem_widths(w)[0], stem_widths(w)[1], False)[-1] for w in d.widths] + [
            LayerSpec("linear", stage_width(3, w), d.num_classes, hw=last_hw, name="classifier") for w in d.widths]
        for ls in [s for u in self.fusion_units() for s in u] + lone:
            seen.setdefault(ls.key, ls)
        return list(seen.values())


def _stem_specs(d: OFAResNetDef, w0: int, w1: int, extra: bool) -> list[LayerSpec]:
    h = _half(d.image_size)
    out = [LayerSpec("conv", d.in_channels, w0, 3, 2, hw=d.image_size, act="relu", name="stem.conv1")]
    if extra:
        out.append(LayerSpec("conv", w0, w0, 3, hw=h, act="relu", residual=True, name="stem.conv2"))
    out += [LayerSpec("conv", w0, w1, 3, hw=h, act="relu", name="stem.conv3"),
            LayerSpec("maxpool", w1, w1, 3, 2, hw=h, name="stem.maxpool")]
    return out


def _block_specs(bp: BlockPlan) -> list[LayerSpec]:
    n = bp.name
    out = [LayerSpec("conv", bp.cin, bp.mid, hw=bp.hw, act="relu", name=f"{n}.conv1"),
           LayerSpec("conv", bp.mid, bp.mid, 3, bp.stride, hw=bp.hw, act="relu", name=f"{n}.conv2"),
           # Conv, Add (of the shortcut or the block input), Relu
           LayerSpec("conv", bp.mid, bp.cout, hw=bp.out_hw, act="relu", residual=True, act_after_add=True,
                     name=f"{n}.conv3")]
    if bp.index == 0:
        if bp.stride > 1:
            out.append(LayerSpec("avgpool", bp.cin, bp.cin, bp.stride, bp.stride, hw=bp.hw, name=f"{n}.averagepool"))
        out.append(LayerSpec("conv", bp.cin, bp.cout, hw=bp.out_hw, name=f"{n}.shortcut"))
    return out


# --------------------------------------------------------------------------- once-for-all checkpoints
OFA_NAME = re.compile(r"ofa_resnet50_d=(?P<d>[0-9,]+)_e=(?P<e>[0-9.,]+?)_w=(?P<w>[0-9.,]+?)(?:\.pth?)?$")


def _find(state: dict[str, torch.Tensor], key: str) -> torch.Tensor | None:
    return next((state[k] for k in _key_variants(key) if k in state), None)


def _numbers(text: str, kind: type) -> tuple:
    return tuple(kind(v) for v in text.split(",") if v)


def infer_definition(state: dict[str, torch.Tensor], path: str | Path, in_channels: int | None = None,
                     image_size: int = 224, num_classes: int | None = None) -> OFAResNetDef:
    """The ``OFAResNets`` configuration a checkpoint holds: the largest width from the stem and the last
    stage, the largest expansion from the first block's middle width, the largest extra depth from the
    number of blocks; the choice lists from the checkpoint's once-for-all name
    (``ofa_resnet50_d=0,1,2_e=0.2,0.25,0.35_w=0.65,0.8,1.0``), else the released ones."""
    path = Path(path)

    def need(key: str) -> torch.Tensor:
        t = _find(state, key)
        if t is None:
            raise ConfigError(f"{path}: not an OFAResNets checkpoint: no '{key}'")
        return t

    first, stem = need("input_stem.0.conv.conv.weight"), need("input_stem.2.conv.conv.weight")
    n_blocks = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    if (n_blocks - sum(BASE_DEPTHS)) % len(BASE_DEPTHS) or n_blocks < sum(BASE_DEPTHS):
        raise ConfigError(f"{path}: holds {n_blocks} bottlenecks, not {sum(BASE_DEPTHS)} plus the same number of "
                          "extra blocks per stage")
    dmax = (n_blocks - sum(BASE_DEPTHS)) // len(BASE_DEPTHS)
    m = OFA_NAME.search(path.name)
    depths = _numbers(m.group("d"), int) if m else tuple(range(dmax + 1))
    expands = _numbers(m.group("e"), float) if m else (0.2, 0.25, 0.35)
    widths = _numbers(m.group("w"), float) if m else (0.65, 0.8, 1.0)
    last = need(f"blocks.{n_blocks - 1}.conv3.conv.conv.weight")
    if (stem.shape[0], last.shape[0]) != (stem_widths(max(widths))[1], stage_width(3, max(widths))):
        raise ConfigError(f"{path}: stem width {stem.shape[0]} and last stage width {last.shape[0]} are not those "
                          f"of width multiplier {max(widths)} (the largest of {list(widths)})")
    if max(depths) != dmax:
        raise ConfigError(f"{path}: holds {dmax} extra blocks per stage, but the depths are {list(depths)}")
    mid = need("blocks.0.conv1.conv.conv.weight").shape[0]
    if mid != mid_width(stage_width(0, max(widths)), max(expands)):
        raise ConfigError(f"{path}: the first block's middle width {mid} is not that of the largest expansion "
                          f"{max(expands)}")
    classes = num_classes or need("classifier.linear.linear.weight").shape[0]
    d = OFAResNetDef("ofa-resnet50", depths, expands, widths, classes, in_channels or first.shape[1], image_size)
    if d.in_channels != first.shape[1]:
        raise ConfigError(f"{path}: the first conv reads {first.shape[1]} channels, not {d.in_channels}")
    return d


def resnet_checkpoint_space(state: dict[str, torch.Tensor], path: str | Path) -> tuple[str, str, int]:
    """(family, space, input channels) of a once-for-all ResNet checkpoint's tensors (``ofa.checkpoint_space``
    reads any once-for-all checkpoint); a configuration bitnas has no space for is refused, naming what it
    holds."""
    d = infer_definition(state, path)
    known = ofa_resnet50()
    if (known.depths, known.expands, known.widths) != (d.depths, d.expands, d.widths):
        raise ConfigError(f"{path}: holds OFAResNets depths {list(d.depths)}, expansions {list(d.expands)}, widths "
                          f"{list(d.widths)}; bitnas has the released space ofa-resnet50 (d=0,1,2_e=0.2,0.25,0.35_"
                          "w=0.65,0.8,1.0)")
    return "ofa-resnet", d.name, d.in_channels


def _register() -> None:
    from bitnas.supernets.families import BuiltinFamily, register_family, sandwich_train

    register_family(BuiltinFamily("ofa-resnet", OFAResNetSupernet, dict(SPACES), sandwich_train,
                                  "once-for-all OFAResNets (the ofa package's ResNet-50), read from its checkpoints"))


_register()
