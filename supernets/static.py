"""Static sub-network modules: what ``extract`` returns, what exports to ONNX and what gets quantized."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import Bits
from bitnas.supernets.quant import (
    ActQuant,
    fake_quant_bias,
    fake_quant_weight,
    has_int32_bias,
    set_calibrating,
    weight_scale,
)

_ACTS = {"relu6": lambda x: F.relu6(x), "relu": F.relu, "hswish": F.hardswish, "gelu": F.gelu,
         "none": lambda x: x}
# activations the static quantizer fuses into the layer: its output is quantized with the range of the
# activation's output, which clamps exactly as the activation does; after any other activation (h-swish,
# GELU: HardSigmoid and Mul, Erf, once ONNX Runtime has inlined them) the layer's output is quantized
# before the activation, which then runs in float
_FUSED_ACTS = ("none", "relu", "relu6")


class QuantUnit(nn.Module):
    """A quantizable layer: conv (+BN, +activation) or pool+linear, with optional simulated quantization."""

    def __init__(self, layer_name: str, act: str = "none"):
        super().__init__()
        self.layer_name = layer_name
        self.act = act
        self.w_bits = 32
        self.a_bits = 32
        self.reduce_range = False
        self.in_q: ActQuant | None = None
        self.out_q: ActQuant | None = None

    def set_bits(self, bits: Bits, reduce_range: bool = False) -> None:
        self.w_bits, self.a_bits = int(bits[0]), int(bits[1])
        self.reduce_range = reduce_range
        quantized = self.w_bits < 32
        self.in_q = ActQuant(self.a_bits) if quantized else None
        self.out_q = ActQuant(self.a_bits) if quantized else None

    def _q_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.in_q(x) if self.in_q is not None else x

    def _q_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_q(x) if self.out_q is not None else x

    def _act_q(self, y: torch.Tensor) -> torch.Tensor:
        """The activation and the output quantization, in the order the static quantizer puts them."""
        if self.act in _FUSED_ACTS:
            return self._q_out(_ACTS[self.act](y))
        return _ACTS[self.act](self._q_out(y))

    def _quantizing(self) -> bool:
        # activation ranges are calibrated on the float model, as the static quantizer does
        return self.in_q is not None and not self.in_q.calibrating

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w, self.w_bits, self.reduce_range) if self._quantizing() else w

    def _bias(self, b: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
        # layers stored as INT8 values (5-8 bits) carry an INT32 bias; packed 2-4-bit layers a float one
        if b is None or not self._quantizing() or not has_int32_bias(self.w_bits):
            return b
        return fake_quant_bias(b, self.in_q.qparams()[0], weight_scale(w, self.w_bits, self.reduce_range))


class ConvUnit(QuantUnit):
    """Conv2d + BatchNorm2d (or a folded bias) + activation."""

    def __init__(self, layer_name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: str):
        super().__init__(layer_name, act)
        self.conv = conv
        self.bn = bn

    def fold_bn(self) -> None:
        """Fold the BatchNorm into the conv's weight and bias (eval-mode statistics)."""
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight / std
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        groups=conv.groups, bias=True)
        with torch.no_grad():
            new.weight.copy_(conv.weight * gamma.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new.bias.copy_((bias - bn.running_mean) * gamma + bn.bias)
        self.conv, self.bn = new, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._q_in(x)
        c = self.conv
        y = F.conv2d(x, self._weight(c.weight), self._bias(c.bias, c.weight), c.stride, c.padding, c.dilation,
                     c.groups)
        if self.bn is not None:
            y = self.bn(y)
        return self._act_q(y)


class FcUnit(QuantUnit):
    """A fully connected layer (+ activation) on whatever its input is (a user's own network's ``nn.Linear``)."""

    def __init__(self, layer_name: str, fc: nn.Linear, act: str = "none"):
        super().__init__(layer_name, act)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._q_in(x)
        fc = self.fc
        return self._act_q(F.linear(x, self._weight(fc.weight), self._bias(fc.bias, fc.weight)))


class LinearUnit(FcUnit):
    """Global average pooling + fully connected layer (+ activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def leading_inputs(fc: nn.Linear, cin: int) -> nn.Linear:
    """A copy of ``fc`` reading only its first ``cin`` inputs (an elastic classifier's active subnet)."""
    out = nn.Linear(cin, fc.out_features, bias=fc.bias is not None)
    with torch.no_grad():
        out.weight.copy_(fc.weight[:, :cin])
        if fc.bias is not None:
            out.bias.copy_(fc.bias)
    return out


class TokenLinearUnit(FcUnit):
    """A linear layer applied to every token, computed on a 2-D view so it exports as one ``Gemm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(*shape[:-1], self.fc.out_features)


class SE(nn.Module):
    """Static squeeze-and-excitation (float): GlobalAveragePool, Gemm, Relu, Gemm, HardSigmoid, Mul."""

    def __init__(self, layer_name: str, c: int, r: int):
        super().__init__()
        self.layer_name = layer_name
        self.reduce = nn.Linear(c, r)
        self.expand = nn.Linear(r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        return x * F.hardsigmoid(self.expand(s))[:, :, None, None]


class Pool(nn.Module):
    """A float max or average pool (``op`` ``maxpool``/``avgpool``, padded as a conv of its kernel is). Its
    ONNX node is named ``<layer_name>.maxpool`` or ``<layer_name>.averagepool``: ``layer_name`` is the scope
    (``stem``, ``s1.b0``) it belongs to."""

    def __init__(self, layer_name: str, op: str, kernel: int, stride: int):
        super().__init__()
        self.layer_name, self.op, self.kernel, self.stride = layer_name, op, kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel // 2 if self.kernel % 2 else 0
        if self.op == "maxpool":
            return F.max_pool2d(x, self.kernel, self.stride, p)
        return F.avg_pool2d(x, self.kernel, self.stride, p, count_include_pad=False)


# what stands, in an ``AddRequant``'s sources, for the input of the block it belongs to
BLOCK_INPUT = "block input"


class AddRequant(nn.Module):
    """The quantization the compiler gives a residual Add's output (or its Relu's, ResNet's Add, Relu)
    where quantized convolutions read it: once, with their input range, for every reader, the skip path
    into the next Add included (``inc_ptq.requantize_adds``), so the runtime runs the Add as an integer
    kernel. ``readers`` are the units that read that output directly, ``sources`` what writes the Add's
    inputs (units, the ``AddRequant`` of an earlier Add, ``None`` for anything else, ``BLOCK_INPUT`` until
    ``StaticNet`` links the step before the block). It applies when every source's output is quantized as
    the graph's DequantizeLinear (``output_quantized``), at least one reader is quantized and every
    quantized one is a convolution with 8-bit activations (the compiler leaves an Add whose readers'
    activations are narrower float, as ``SubByteActivations`` gives those layers ranges of their own).
    Readers and sources are held by reference, not as submodules."""

    def __init__(self, readers: Iterable[QuantUnit] = (), sources: Iterable[Any] = ()):
        super().__init__()
        self.link(readers, sources)

    def link(self, readers: Iterable[Any] | None = None, sources: Iterable[Any] | None = None,
             block_input: Any = BLOCK_INPUT) -> None:
        """Set the readers and/or the sources; ``block_input`` stands in for ``BLOCK_INPUT`` among them."""
        if readers is not None:
            self.__dict__["_readers"] = tuple(readers)
        if sources is not None:
            self.__dict__["_sources"] = tuple(sources)
        self.__dict__["_sources"] = tuple(block_input if s is BLOCK_INPUT else s for s in self.__dict__["_sources"])

    def relink(self, replace: Mapping[int, Any]) -> None:
        """Readers and sources replaced by ``replace[id(old)]`` where it has them (EdMIPS's composites)."""
        self.link([replace.get(id(u), u) for u in self.__dict__["_readers"]],
                  [replace.get(id(s), s) for s in self.__dict__["_sources"]])

    def quantizer(self) -> ActQuant | None:
        quantized = [u for u in self.__dict__["_readers"] if u.in_q is not None]
        if not quantized or any(not isinstance(u, ConvUnit) or u.a_bits != 8 for u in quantized):
            return None
        return quantized[0].in_q

    def _composite(self) -> bool:
        readers = self.__dict__["_readers"]
        return bool(readers) and all(hasattr(u, "activation_probs") for u in readers)

    def applied(self) -> float | torch.Tensor:
        """1 where this Add runs quantized, 0 where float; over EdMIPS's composites, the probability."""
        readers = self.__dict__["_readers"]
        if self._composite():
            p = self._reader_probability(readers)
        else:
            p = 1.0 if self.quantizer() is not None else 0.0
        for s in self.__dict__["_sources"]:
            p = p * output_quantized(s)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.applied()
        if isinstance(p, float):  # decided: quantized with the readers' input range, or float
            return self.quantizer()(x) if p else x
        quantize = self.__dict__["_readers"][0].input_quantizer(8)  # EdMIPS: in expectation
        return p * quantize(x) + (1 - p) * x

    @staticmethod
    def _reader_probability(readers) -> float | torch.Tensor:
        """The readers' rule in expectation over readers that mix bit options (EdMIPS's composite units, each
        with ``activation_probs()``: activation bits -> probability, and ``input_quantizer(bits)``): the
        probability that some reader runs 8-bit activations and none narrower ones. Equal to the rule on the
        selected units when every selector is one-hot."""
        if not all(isinstance(u.unit, ConvUnit) for u in readers):
            return 0.0
        probs = [u.activation_probs() for u in readers]
        if not all(8 in p for p in probs):
            return 0.0
        at_8_or_float = torch.stack([p[8] + p.get(32, 0.0) for p in probs]).prod()
        float_only = torch.stack([torch.as_tensor(p.get(32, 0.0)) for p in probs]).prod()
        return at_8_or_float - float_only


def output_quantized(source: Any) -> float | torch.Tensor:
    """1 where the compiled graph's Add reads ``source``'s output from a DequantizeLinear, else 0 (a
    probability for EdMIPS's composite units): a quantized unit whose activation is none or ReLU (its output
    quantization comes after them; ``requantize_adds`` reads past a ReLU of a zero-point-0 DequantizeLinear),
    or a quantized earlier Add."""
    if isinstance(source, AddRequant):
        return source.applied()
    unit = getattr(source, "unit", source)
    if not isinstance(unit, ConvUnit) or unit.act not in ("none", "relu"):
        return 0.0
    if hasattr(source, "activation_probs"):
        return 1 - source.activation_probs().get(32, 0.0)
    return 1.0 if unit.in_q is not None else 0.0


def output_source(m: nn.Module | None) -> Any:
    """What writes body step ``m``'s output, as an ``AddRequant`` source."""
    if isinstance(m, nn.Sequential) and len(m):
        return output_source(m[len(m) - 1])
    if isinstance(getattr(m, "requant", None), AddRequant):
        return m.requant
    if isinstance(m, QuantUnit):
        return m
    out = getattr(m, "output_source", None)
    return out() if callable(out) else None


def input_readers(m: nn.Module) -> list[QuantUnit]:
    """The units of body step ``m`` that read its input as it is (no pool or reshape before them)."""
    if isinstance(m, (LinearUnit, TokenLinearUnit)):
        return []
    if isinstance(m, QuantUnit):
        return [m]
    readers = getattr(m, "input_readers", None)
    return list(readers()) if callable(readers) else []


class InvertedResidual(nn.Module):
    """Expand (none at expansion 1), depthwise, optional squeeze-excite, project, optional residual add:
    a MobileNetV2 or MobileNetV3 block."""

    def __init__(self, expand: ConvUnit | None, dw: ConvUnit, project: ConvUnit, residual: bool,
                 se: SE | None = None):
        super().__init__()
        self.expand, self.dw, self.se, self.project, self.residual = expand, dw, se, project, residual
        self.requant = AddRequant(sources=(project, BLOCK_INPUT)) if residual else None

    def output_source(self) -> QuantUnit:
        return self.project

    def input_readers(self) -> list[QuantUnit]:
        return [self.expand if self.expand is not None else self.dw]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.expand(x) if self.expand is not None else x)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return self.requant(x + y) if self.residual else y


class StaticNet(nn.Module):
    """A plain sequence of modules whose quantizable layers are ``QuantUnit``s named after policy genes."""

    def __init__(self, body: Iterable[nn.Module] | nn.Module):
        super().__init__()
        self.body = body if isinstance(body, nn.Module) else nn.Sequential(*body)
        if isinstance(self.body, nn.Sequential):  # a step ending in an Add is read by the next step
            steps = list(self.body)
            for prev, m, nxt in zip([None] + steps, steps, steps[1:] + [None]):
                if isinstance(getattr(m, "requant", None), AddRequant):
                    m.requant.link(input_readers(nxt) if nxt is not None else (), block_input=output_source(prev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def units(self) -> list[QuantUnit]:
        """Quantizable layers in forward order (the order their Conv/Gemm nodes appear in ONNX)."""
        return [m for m in self.modules() if isinstance(m, QuantUnit)]


def fold_bn(net: StaticNet) -> StaticNet:
    """A copy of ``net`` with every BatchNorm folded into its conv (equal outputs in eval mode)."""
    net = copy.deepcopy(net).eval()
    for u in net.units():
        if isinstance(u, ConvUnit):
            u.fold_bn()
    return net


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate BatchNorm statistics of ``net`` in place on a few batches (cumulative average)."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return net
    saved = [(bn.momentum,) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    for x in batches:
        net(x)
    for bn, (momentum,) in zip(bns, saved):
        bn.momentum = momentum
    return net.eval()


@torch.no_grad()
def quantize_net(net: StaticNet, policy: Mapping[str, Bits], calib: Iterable[torch.Tensor],
                 reduce_range: bool = False) -> StaticNet:
    """A BN-folded copy of ``net`` simulating ``policy``, activation ranges calibrated on ``calib``."""
    q = fold_bn(net)
    for u in q.units():
        u.set_bits(policy.get(u.layer_name, (32, 32)), reduce_range)
    set_calibrating(q, True)
    for x in calib:
        q(x)
    set_calibrating(q, False)
    return q.eval()
