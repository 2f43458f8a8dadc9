"""EdMIPS on the supernet: differentiable per-layer bitwidth search, swept over the cost weight eta.

For one architecture, the sub-network with inherited supernet weights (BatchNorm recalibrated and
folded, as it deploys) gets, per quantizable layer, a softmax over its weight bit choices (alpha) and one
over its activation bit choices (beta) (eq. 11). Each layer becomes a composite layer with one shared
weight tensor (eq. 16): ``conv(sum_j pi_b_j Q_a_j(x), sum_i pi_a_i Q_w_i(W))``, its output likewise mixed
over the activation quantizers. The loss is cross-entropy plus ``eta`` times the expected cost
normalized by the all-float cost (eq. 6), where a layer's cost is a function of its expected bitwidths
(eq. 13): BitOps ``E[b_w] E[b_a] MACs`` (eq. 12), or the LUT latency interpolated piecewise-linearly in
``E[b_w] E[b_a]`` between the latencies the LUT measured for the layer's bit choices. The sweep over
``etas`` runs in ascending order, each value warm-started from the previous one's alpha and beta. Each
result is discretized by winner-take-all (eq. 18) or by the most frequent outcome of ``trials`` multinomial
draws (eq. 19), restricted to the (w_bits, a_bits) pairs the space allows for the layer.

Weights. By default (``weight_steps=0``, ``lr_weights=0``) the composite network's weights stay the
inherited ones and only alpha and beta learn. ``lr_weights > 0`` alone trains the shared weights (eq. 16)
together with alpha and beta in one forward-backward pass on the same batch (the paper's default, sec. 4.6).
``weight_steps > 0`` (with ``lr_weights > 0``) is the paper's alternating optimization: before each alpha/beta
update, ``weight_steps`` updates of the shared weights with alpha and beta fixed (cross-entropy on the
weight split), then one alpha/beta update with the weights fixed (cross-entropy plus the cost term on the
held-out split). Both splits come from the data's train split, a fixed ``holdout_ratio`` share of it (drawn
from ``seed``) held out for alpha and beta; the val split is never read here, as the true evaluation measures
accuracy on it. The weights keep training through the whole eta sweep (warm-started like alpha and beta),
quantized through the composite layers, so at low bits they adapt to the mixed quantizers the sweep is
choosing between; activation ranges stay the ones calibrated on the inherited float weights.

The weights trained inside a sweep are this searcher's internal proxy only: they rank bit choices and are
dropped when the sweep ends (the supernet is never written). The true evaluation the driver runs on each
discretized candidate is the project's (``search.evaluation``): the candidate's subnet with the supernet's
inherited weights (BatchNorm recalibrated), quantized at its policy, and measured on the val split
(simulated quantization, the compiled model, or after QAFT), exactly as for any other searcher's candidates.

How it fits the ask/tell driver: one ``ask`` runs the sweep for one architecture and asks the distinct,
feasible discretized policies (one candidate per eta); ``tell`` records their true objectives. The first
ask uses the largest architecture (``start="largest"``) or a random one, later ones alternate between mutations of the evaluated front's
architectures and random architectures (EdMIPS itself searches bits only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitnas.errors import ConfigError
from bitnas.searchers.base import CheapFn, Objective
from bitnas.searchers.common import HistorySearcher
from bitnas.searchers.pareto import non_dominated
from bitnas.space import Candidate, LayerSpec, SearchSpace


class CompositeUnit(nn.Module):
    """EdMIPS composite layer over a static ``QuantUnit`` (read-only): shared weights, mixed quantizers."""

    def __init__(self, unit: nn.Module, pairs: Sequence[tuple[int, int]], reduce_range: bool = False):
        super().__init__()
        from bitnas.supernets.quant import ActQuant

        self.unit = unit
        self.pairs = [tuple(int(b) for b in p) for p in pairs]
        self.w_bits = sorted({p[0] for p in self.pairs})
        self.a_bits = sorted({p[1] for p in self.pairs})
        self.reduce_range = reduce_range
        self.alpha = nn.Parameter(torch.full((len(self.w_bits),), 0.01))
        self.beta = nn.Parameter(torch.full((len(self.a_bits),), 0.01))
        self.in_q = nn.ModuleList([ActQuant(b) for b in self.a_bits])
        self.out_q = nn.ModuleList([ActQuant(b) for b in self.a_bits])

    def probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return F.softmax(self.alpha, 0), F.softmax(self.beta, 0)

    def activation_probs(self) -> dict[int, torch.Tensor]:
        """Activation bits -> the selector's probability (what an ``AddRequant`` reading this unit weighs)."""
        return dict(zip(self.a_bits, F.softmax(self.beta, 0)))

    def input_quantizer(self, bits: int) -> nn.Module:
        return self.in_q[self.a_bits.index(bits)]

    def expected_bits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[b_w], E[b_a]) of eq. 13."""
        pa, pb = self.probs()
        return (pa * torch.tensor(self.w_bits, dtype=pa.dtype)).sum(), (pb * torch.tensor(self.a_bits, dtype=pb.dtype)).sum()

    def _mix(self, qs: nn.ModuleList, x: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
        return sum(p * q(x) for p, q in zip(pb, qs))

    def _bias(self, layer: nn.Module, pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor | None:
        """Expected bias: INT32-rounded at scale ``in_scale * w_scale`` for quantized pairs, as deployed."""
        from bitnas.supernets.quant import fake_quant_bias, weight_scale

        if layer.bias is None:
            return None
        out = torch.zeros_like(layer.bias)
        for p, wb in zip(pa, self.w_bits):
            for q, ab, r in zip(self.in_q, self.a_bits, pb):
                if wb >= 32 or ab >= 32:
                    b = layer.bias
                else:
                    b = fake_quant_bias(layer.bias, q.qparams()[0], weight_scale(layer.weight, wb, self.reduce_range))
                out = out + p * r * b
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bitnas.supernets.quant import fake_quant_weight

        u = self.unit
        pa, pb = self.probs()
        linear = hasattr(u, "fc")
        if linear:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        x = self._mix(self.in_q, x, pb)
        layer = u.fc if linear else u.conv
        if self.in_q[0].calibrating:  # activation ranges come from the float model, as in quantize_net
            w, bias = layer.weight, layer.bias
        else:
            w = sum(p * fake_quant_weight(layer.weight, b, self.reduce_range) for p, b in zip(pa, self.w_bits))  # eq. 16
            bias = self._bias(layer, pa, pb)
        if linear:
            y = F.linear(x, w, bias)
        else:
            y = F.conv2d(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            y = F.relu6(y) if u.act == "relu6" else F.relu(y) if u.act == "relu" else y
        return self._mix(self.out_q, y, pb)

    def discretize(self, how: str, rng: np.random.Generator, trials: int) -> tuple[int, int]:
        """The allowed (w_bits, a_bits) pair: winner-take-all (eq. 18) or most drawn of ``trials`` (eq. 19)."""
        pa, pb = (p.detach().numpy().astype(np.float64) for p in self.probs())
        joint = np.array([pa[self.w_bits.index(w)] * pb[self.a_bits.index(a)] for w, a in self.pairs])
        if how == "multinomial":
            counts = rng.multinomial(trials, joint / joint.sum())
            return self.pairs[int(np.argmax(counts))]
        return self.pairs[int(np.argmax(joint))]


def _interp(x: torch.Tensor, knots: Sequence[tuple[float, float]]) -> torch.Tensor:
    """Piecewise-linear interpolation through sorted ``(x, y)`` knots, linear beyond the ends."""
    if len(knots) == 1:
        return torch.as_tensor(knots[0][1], dtype=x.dtype) + 0 * x
    y = torch.as_tensor(knots[0][1], dtype=x.dtype)
    for k in range(len(knots) - 1):
        (x0, y0), (x1, y1) = knots[k], knots[k + 1]
        slope = (y1 - y0) / (x1 - x0)
        lo = (x - x0) if k == 0 else torch.clamp(x - x0, min=0.0)
        seg = lo if k == len(knots) - 2 else torch.clamp(lo, max=x1 - x0)
        y = y + slope * seg
    return y


def _trainable(on: Sequence[torch.Tensor], off: Sequence[torch.Tensor]) -> None:
    for p in on:
        p.requires_grad_(True)
    for p in off:
        p.requires_grad_(False)


def _endless(data: Any, split: str, batch: int, rng: np.random.Generator):
    """Shuffled batches of ``split``, reshuffled at the end of each pass, for ever."""
    while True:
        empty = True
        for xy in data.batches(split, batch, rng):
            empty = False
            yield xy
        if empty:
            raise ConfigError(f"edmips: the {split} split holds no images")


def holdout_split(data: Any, ratio: float, seed: int) -> Any:
    """A data set of ``data``'s train split only: ``ratio`` of it (a seeded draw) as its ``val`` split, the
    rest as its ``train`` split. ``data`` is an in-memory ``Dataset`` or an ``ImageFolderDataset``."""
    from bitnas.supernets.data import Dataset, ImageFolderDataset

    n = data.count("train")
    if n < 2:
        raise ConfigError(f"edmips: alternating training splits the train split in two; it holds {n} image(s)")
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    k = min(max(int(round(ratio * n)), 1), n - 1)
    held, kept = np.sort(perm[:k]), np.sort(perm[k:])
    if isinstance(data, Dataset):
        return Dataset(f"{data.name}[train split]", data.x_train[kept], data.y_train[kept], data.x_train[held],
                       data.y_train[held], data.num_classes, data.preprocess)
    if isinstance(data, ImageFolderDataset):
        files, labels = [str(f) for f in data.files("train")], data.labels("train")
        return ImageFolderDataset(f"{data.name}[train split]", data.root,
                                  {"train": [files[i] for i in kept], "val": [files[i] for i in held]},
                                  {"train": labels[kept], "val": labels[held]}, data.classes, data.preprocess,
                                  data.workers)
    raise ConfigError(f"edmips: alternating training (weight_steps > 0) needs an in-memory or image-folder data "
                      f"set to hold part of its train split out; {type(data).__name__} is neither")


class EdmipsSearcher(HistorySearcher):
    """EdMIPS bit search on supernet sub-networks; one eta sweep (a small front) per ask."""

    needs_supernet = True
    option_bounds = {"warm_steps": (0, None)}  # (lowest, highest) where the generic rule does not fit

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], seed: int = 0,
                 constraints: Mapping[str, float] | None = None, cheap: CheapFn | None = None,
                 pop_size: int = 20, batch_size: int | None = None, supernet: Any = None, data: Any = None,
                 lut: Any = None, cost: Literal["latency", "bitops"] = "latency",
                 etas: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0), steps: int = 20, warm_steps: int = 8,
                 batch: int = 32, lr: float = 0.1, lr_weights: float = 0.0, weight_steps: int = 0,
                 holdout_ratio: float = 0.5, discretize: Literal["wta", "multinomial"] = "wta", trials: int = 50,
                 calib_batches: int = 2, reduce_range: bool = False, start: Literal["largest", "random"] = "largest"):
        super().__init__(space, objectives, seed, constraints, cheap, pop_size, batch_size)
        if supernet is None or data is None:
            raise ConfigError("edmips needs the trained supernet and its data (it trains bit selectors on them)")
        if cost not in ("latency", "bitops"):
            raise ConfigError(f"edmips: unknown cost '{cost}' (latency or bitops)")
        if cost == "latency" and lut is None:
            raise ConfigError("edmips: cost 'latency' needs a latency table (or use cost: bitops)")
        if discretize not in ("wta", "multinomial"):
            raise ConfigError(f"edmips: unknown discretization '{discretize}' (wta or multinomial)")
        if start not in ("largest", "random"):
            raise ConfigError(f"edmips: unknown start '{start}' (largest or random)")
        if not etas:
            raise ConfigError("edmips: etas must hold at least one value")
        if weight_steps > 0 and lr_weights <= 0:
            raise ConfigError("edmips: weight_steps (alternating weight training) needs lr_weights > 0, the "
                              "weights' learning rate")
        if not 0.0 < holdout_ratio < 1.0:
            raise ConfigError(f"edmips: holdout_ratio must be between 0 and 1 (exclusive), not {holdout_ratio}")
        self.supernet, self.data, self.lut, self.cost = supernet, data, lut, cost
        self.etas = sorted(float(e) for e in etas)
        self.steps, self.warm_steps, self.batch = int(steps), int(warm_steps), int(batch)
        self.lr, self.lr_weights = float(lr), float(lr_weights)
        self.weight_steps, self.holdout_ratio = int(weight_steps), float(holdout_ratio)
        self._splits: Any = None
        self.discretize, self.trials = discretize, int(trials)
        self.calib_batches, self.reduce_range = int(calib_batches), reduce_range
        self.start = start
        self.rounds = 0
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- architectures
    def _arch_values(self, c: Candidate) -> dict[str, Any]:
        return c.arch_dict

    def _next_arch(self) -> dict[str, Any]:
        if self.rounds == 1 and self.start == "largest":
            return self.space.largest().arch_dict
        if self.X and self.rounds % 2 == 0:
            front = [self.X[i] for i in np.flatnonzero(non_dominated(self.F))]
            parent = front[self.rng.integers(len(front))]
            values = self.space.values(parent)
            for g in self.space.arch_genes:
                if self.rng.random() < 0.2:
                    values[g.name] = g.options[self.rng.integers(len(g.options))]
            return {g.name: values[g.name] for g in self.space.arch_genes}
        return self.space.sample(self.rng).arch_dict

    # ----------------------------------------------------------------- the composite network
    def build(self, arch: Mapping[str, Any]) -> tuple[nn.Module, list[CompositeUnit], list[LayerSpec]]:
        """The composite network of ``arch`` (a copy; the supernet is only read) and its layers."""
        from bitnas.supernets.evaluate import calibration_batches, prepare_subnet
        from bitnas.supernets.quant import set_calibrating
        from bitnas.supernets.static import AddRequant, QuantUnit, fold_bn

        base = self.space.make(dict(arch))
        calib = calibration_batches(self.data, self.calib_batches, self.batch, self.seed)
        net = fold_bn(prepare_subnet(self.supernet, base, calib))
        units: list[CompositeUnit] = []
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, QuantUnit):
                    comp = CompositeUnit(child, self.space.gene(child.layer_name).options, self.reduce_range)
                    setattr(parent, name, comp)
                    units.append(comp)
        composite = {id(u.unit): u for u in units}
        for m in net.modules():  # a residual Add's quantization reads the composites now
            if isinstance(m, AddRequant):
                m.relink(composite)
        order = [s.name for s in self.supernet.layers(base)]
        units.sort(key=lambda u: order.index(u.unit.layer_name))
        set_calibrating(net, True)
        with torch.no_grad():
            for x in calib:
                net(x)
        set_calibrating(net, False)
        for p in net.parameters():
            p.requires_grad_(False)
        for u in units:
            u.alpha.requires_grad_(True)
            u.beta.requires_grad_(True)
        return net.eval(), units, self.supernet.layers(base)

    def _cost_terms(self, units: Sequence[CompositeUnit], specs: Sequence[LayerSpec]):
        """Per unit, a function of (E[b_w], E[b_a]) giving its cost, and the all-float reference cost."""
        by_name = {s.name: s for s in specs}
        fns, ref = [], 0.0
        for u in units:
            spec = by_name[u.unit.layer_name]
            if self.cost == "bitops":
                macs = float(spec.macs)
                fns.append(lambda ew, ea, m=macs: ew * ea * m)
                ref += max(w * a for w, a in u.pairs) * macs
            else:
                pts: dict[float, list[float]] = {}
                for w, a in u.pairs:
                    pts.setdefault(float(w * a), []).append(self.lut.layer_latency(spec.with_bits((w, a))))
                knots = sorted((x, float(np.mean(v))) for x, v in pts.items())
                fns.append(lambda ew, ea, k=knots: _interp(ew * ea, k))
                ref += max(y for _, y in knots)
        return fns, max(ref, 1e-12)

    def expected_cost(self, units: Sequence[CompositeUnit], fns) -> torch.Tensor:
        return sum(fn(*u.expected_bits()) for u, fn in zip(units, fns))

    @property
    def training(self) -> str:
        """How the composite network's weights learn: ``frozen``, ``joint`` or ``alternating``."""
        return "alternating" if self.weight_steps > 0 else "joint" if self.lr_weights > 0 else "frozen"

    def splits(self) -> Any:
        """The data alternating training reads: its ``train`` split is the weight split, its ``val`` split the
        held-out split alpha and beta learn on; both are parts of the data's train split, fixed by ``seed``."""
        if self._splits is None:
            self._splits = holdout_split(self.data, self.holdout_ratio, self.seed)
        return self._splits

    def sweep(self, arch: Mapping[str, Any]) -> list[Candidate]:
        """Run the eta sweep on ``arch``; one discretized candidate per eta, in eta order."""
        torch.manual_seed(self.seed * 7919 + self.rounds)
        net, units, specs = self.build(arch)
        fns, ref = self._cost_terms(units, specs)
        params = [p for u in units for p in (u.alpha, u.beta)]
        weights = [p for n, p in net.named_parameters() if not n.endswith(("alpha", "beta"))]
        mode = self.training
        rng = np.random.default_rng([self.seed, self.rounds, 3])
        if mode == "alternating":
            data = self.splits()
            weight_batches = _endless(data, "train", self.batch, np.random.default_rng([self.seed, self.rounds, 4]))
            arch_batches = _endless(data, "val", self.batch, rng)
            opt = torch.optim.Adam(params, lr=self.lr)
            wopt = torch.optim.Adam(weights, lr=self.lr_weights)
        else:
            groups = [{"params": params, "lr": self.lr}]
            if mode == "joint":
                for p in weights:
                    p.requires_grad_(True)
                groups.append({"params": weights, "lr": self.lr_weights})
            opt = torch.optim.Adam(groups)
            arch_batches = _endless(self.data, "train", self.batch, rng)
        out = []
        for k, eta in enumerate(self.etas):
            weight_loss = arch_loss = None
            for _ in range(self.steps if k == 0 else self.warm_steps):
                if mode == "alternating":  # 1) alpha, beta fixed: the shared weights on the weight split
                    _trainable(weights, params)
                    for _ in range(self.weight_steps):
                        x, y = next(weight_batches)
                        wopt.zero_grad()
                        loss = F.cross_entropy(net(x), y)
                        loss.backward()
                        wopt.step()
                        weight_loss = float(loss.detach())
                    _trainable(params, weights)  # 2) weights fixed: alpha, beta on the held-out split
                x, y = next(arch_batches)
                opt.zero_grad()
                ce = F.cross_entropy(net(x), y)
                loss = ce + eta * self.expected_cost(units, fns) / ref  # eq. 6
                loss.backward()
                opt.step()
                arch_loss = float(ce.detach())
            drng = np.random.default_rng([self.seed, self.rounds, k])
            policy = {u.unit.layer_name: u.discretize(self.discretize, drng, self.trials) for u in units}
            with torch.no_grad():
                exp_cost = float(self.expected_cost(units, fns))
            rec = {"round": self.rounds, "eta": eta, "expected_cost": exp_cost, "relative_cost": exp_cost / ref,
                   "training": mode, "arch_loss": arch_loss}
            if mode == "alternating":
                rec["weight_loss"] = weight_loss
            self.history.append(rec)
            out.append(self.space.make(dict(arch), policy))
        return out

    def ask(self) -> list[Candidate]:
        # a few sweeps on fresh architectures, then fill with new random candidates (each sweep trains)
        for _ in range(3):
            self.rounds += 1
            taken = set(self.seen)
            out = []
            for c in self.sweep(self._next_arch()):
                if c.id not in taken and self.feasible(c):
                    taken.add(c.id)
                    out.append(c)
            if out:
                return out
        return self.fill([], self.batch_size)
