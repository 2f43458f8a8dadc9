"""Any PyTorch supernet through a small adapter: the user gives ``space`` and ``extract``, bitnas the rest.

A user's adapter is any object with

- ``space``: a ``bitnas.space.SearchSpace``. Its arch genes are the user's; if it has no policy genes,
  bitnas adds one per quantizable layer (conv, linear) of the largest subnet (options ``bits``, default
  FP32 and INT8), named after the layer;
- ``extract(candidate) -> nn.Module``: the static subnet with the supernet's weights, any plain PyTorch
  module (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``, activations as modules or functions, residual
  adds in ``forward``) that ``torch.fx`` can trace;

and optionally ``layers(candidate)`` (a hand-written layer list, checked against the graph like a family's),
``input_shape`` (C, H, W), ``bits``, ``name``, ``load_pretrained(path)`` (weights the project's
``train.init`` names; an ``nn.Module`` adapter without it loads a weights-only state dict).

bitnas lifts the extracted module into its own static form (each Conv2d with its BatchNorm and activation,
each Linear, becomes a quantizable unit named after the module's path), and derives the ``LayerSpec``s from
the ONNX graph of that subnet, the way nn-Meter detects kernels: memoized per architecture, so search pays
one export per distinct subnet. An op no layer pattern covers (a Concat, a MaxPool padded unlike a conv)
is refused by name, with the module that computes it. A project names the adapter as ``family: {name: "package.module:attr"}``.
"""

from __future__ import annotations

import operator
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bitnas.errors import ConfigError, UnknownLayerError, UserError
from bitnas.space import FLOAT_BITS, Bits, Candidate, Gene, LayerSpec, SearchSpace
from bitnas.supernets.static import AddRequant, ConvUnit, FcUnit, QuantUnit, StaticNet

DEFAULT_BITS: tuple[Bits, ...] = (FLOAT_BITS, (8, 8))
ENUMERATION_SAMPLES = 64  # random subnets (besides the smallest and largest) whose layers a LUT must hold

_ACT_MODULES: tuple[tuple[type, str], ...] = ((nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.Hardswish, "hswish"))
_ACT_FUNCTIONS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hswish"}


def is_adapter(obj: Any) -> bool:
    """True for an object with a ``space`` and an ``extract`` that is not already a bitnas family."""
    return hasattr(obj, "extract") and hasattr(obj, "space") and not hasattr(obj, "build")


# ---------------------------------------------------------------------------------------------- lifting
def _activation(node: Any, modules: dict[str, nn.Module]) -> str | None:
    """The activation a traced node applies (one bitnas fuses into the layer before it), or None."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.GELU) and mod.approximate == "none":
            return "gelu"
        for cls, act in _ACT_MODULES:
            if type(mod) is cls:
                return act
        if type(mod) is nn.Hardtanh and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return "relu6"
    elif node.op == "call_function":
        if node.target is F.gelu and node.kwargs.get("approximate", "none") == "none":
            return "gelu"
        return _ACT_FUNCTIONS.get(node.target)
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _only_user(node: Any) -> Any:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _replace(gm: torch.fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, attr = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, module)


def lift(module: nn.Module, where: str = "extract(candidate)") -> StaticNet:
    """``module`` as a bitnas static net: every Conv2d (with the BatchNorm2d and activation that follow it
    alone) and every Linear (with its activation) becomes a quantizable unit named after its module path."""
    import torch.fx

    if not isinstance(module, nn.Module):
        raise UserError(f"{where} returned {type(module).__name__}, not a torch.nn.Module")
    try:
        gm = torch.fx.symbolic_trace(module.eval())
    except Exception as exc:  # noqa: BLE001 - a module fx cannot trace is the user's to change
        first = str(exc).strip().splitlines()
        raise UserError(f"{where}: torch.fx cannot trace {type(module).__name__} ({first[0] if first else exc}); "
                        "bitnas needs a static subnet without data-dependent control flow") from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = modules[node.target]
        if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
            raise UnknownLayerError(f"{where}: module '{node.target}' is a {type(mod).__name__}; bitnas profiles "
                                    "Conv2d, Linear, LayerNorm and attention layers")
        if isinstance(mod, nn.Conv2d):
            if mod.dilation != (1, 1) or mod.padding_mode != "zeros":
                raise UnknownLayerError(f"{where}: conv '{node.target}' has dilation {mod.dilation} and padding "
                                        f"mode '{mod.padding_mode}'; bitnas profiles undilated, zero-padded convs")
            tail, bn = node, None
            nxt = _only_user(tail)
            if nxt is not None and nxt.op == "call_module" and isinstance(modules[nxt.target], nn.BatchNorm2d):
                bn, tail = modules[nxt.target], nxt
            act = _activation(nxt, modules) if (nxt := _only_user(tail)) is not None else None
            if act is not None:
                tail = nxt
            unit: nn.Module = ConvUnit(node.target, mod, bn, act or "none")
        elif isinstance(mod, nn.Linear):
            nxt = _only_user(node)
            act = _activation(nxt, modules) if nxt is not None else None
            tail = nxt if act is not None else node
            unit = FcUnit(node.target, mod, act or "none")
        else:
            continue
        _replace(gm, node.target, unit)
        if tail is not node:  # the unit now computes the BatchNorm and activation: drop their nodes
            tail.replace_all_uses_with(node)
            n = tail
            while n is not node:
                prev = n.args[0]
                gm.graph.erase_node(n)
                n = prev
    _requantized_adds(gm)
    return StaticNet(_flattened(gm)).eval()


def _is_add(node: Any) -> bool:
    return ((node.op == "call_function" and node.target in (operator.add, torch.add))
            or (node.op == "call_method" and node.target == "add"))


def _requantized_adds(gm: Any) -> None:
    """After each Add (or its Relu) that units read directly, an ``AddRequant`` of those readers: the
    quantization the compiler gives that Add's output where they are quantized convolutions."""
    for node in list(gm.graph.nodes):
        if not _is_add(node):
            continue
        modules = dict(gm.named_modules())
        tail, nxt = node, _only_user(node)
        if nxt is not None and _activation(nxt, modules) == "relu":
            tail = nxt
        readers = [modules[u.target] for u in tail.users
                   if u.op == "call_module" and isinstance(modules[u.target], QuantUnit)]
        if not readers:
            continue
        sources = [modules[a.target] if getattr(a, "op", None) == "call_module" else None for a in node.args[:2]]
        target = f"{tail.name}_requant"
        gm.add_submodule(target, AddRequant(readers, sources))
        with gm.graph.inserting_after(tail):
            requant = gm.graph.call_module(target, (tail,))
        tail.replace_all_uses_with(requant, delete_user_cb=lambda user, r=requant: user is not r)
    gm.recompile()


def _flattened(gm: Any) -> Any:
    """``gm`` with every module it calls a direct child under a unique name (``stages_0_1_conv1``).

    The ONNX exporter names a node's scope after the modules on the call stack, each by the last
    non-numeric atom of its path; a traced graph calls nested modules directly, so two ``conv1`` of two
    blocks would share a scope. Flat, unique children give every node one owner; every module keeps its
    path as ``layer_name``, which names its nodes.
    """
    import torch.fx

    graph = gm.graph
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            flat = node.target.replace(".", "_")
            flat = f"m_{flat}" if flat[:1].isdigit() else flat
            if not hasattr(mod, "layer_name"):
                mod.layer_name = node.target
            root[flat] = mod
            node.target = flat
        elif node.op == "get_attr":
            root[node.target] = operator_attr(gm, node.target)
    out = torch.fx.GraphModule(root, graph, class_name=type(gm).__name__)
    out.graph.lint()
    return out


def operator_attr(module: nn.Module, path: str) -> Any:
    """The attribute at dotted ``path`` below ``module`` (a parameter, buffer or constant)."""
    obj: Any = module
    for atom in path.split("."):
        obj = getattr(obj, atom)
    return obj


# ---------------------------------------------------------------------------------------------- supernet
def _with_policy_genes(space: SearchSpace, layer_names: list[str], bits: tuple[Bits, ...]) -> SearchSpace:
    genes = list(space.genes) + [Gene(n, tuple(tuple(b) for b in bits), "policy") for n in layer_names]
    return SearchSpace(space.name, genes, space.description)


class AdaptedSupernet(nn.Module):
    """A user's supernet behind bitnas's ``Supernet`` protocol (see the module docstring)."""

    def __init__(self, adapter: Any, input_shape: tuple[int, int, int], where: str):
        super().__init__()
        self.adapter = adapter
        self.where = where
        if isinstance(adapter, nn.Module):
            self.net = adapter  # a registered child: eval(), state_dict() and parameters() reach it
        self.input_shape = tuple(int(v) for v in input_shape)
        self._layers: dict[tuple, list[LayerSpec]] = {}
        self._unprofiled: dict[tuple, str] = {}
        space = adapter.space
        if not isinstance(space, SearchSpace):
            raise ConfigError(f"{where}: its 'space' is a {type(space).__name__}, not a bitnas.space.SearchSpace")
        self.space = space
        self.has_layers = callable(getattr(adapter, "layers", None))
        if not space.policy_genes:
            bits = tuple(tuple(b) for b in getattr(adapter, "bits", DEFAULT_BITS))
            largest = self._graph_layers(space.largest())
            from bitnas.latency_luts.profiler import FLOAT_OPS

            self.space = _with_policy_genes(space, [s.name for s in largest if s.op not in FLOAT_OPS], bits)

    # the protocol ------------------------------------------------------------------------------------
    def extract(self, candidate: Candidate) -> StaticNet:
        c = self.space.validate(candidate)
        return lift(self.adapter.extract(c), f"{self.where}: extract(candidate {c.id})")

    def layers(self, candidate: Candidate) -> list[LayerSpec]:
        c = self.space.validate(candidate)
        if self.has_layers:
            return list(self.adapter.layers(c))
        policy = c.policy_dict
        return [s.with_bits(tuple(policy.get(s.name, FLOAT_BITS))) for s in self._graph_layers(c)]

    def all_layer_specs(self) -> list[LayerSpec]:
        import numpy as np

        rng = np.random.default_rng(0)
        samples = int(getattr(self.adapter, "enumeration_samples", ENUMERATION_SAMPLES))
        seen: dict[str, LayerSpec] = {}
        for c in [self.space.smallest(), self.space.largest()] + [self.space.sample(rng) for _ in range(samples)]:
            for s in self.layers(c):
                f = s.with_bits(FLOAT_BITS)
                seen.setdefault(f.key, f)
        return list(seen.values())

    def load_pretrained(self, path: Path) -> list[str]:
        fn = getattr(self.adapter, "load_pretrained", None)
        if fn is not None:
            return list(fn(path) or [])
        if not isinstance(self.adapter, nn.Module):
            raise ConfigError(f"{self.where}: train.init names {path}, but the adapter has no load_pretrained(path)")
        from bitnas.supernets.families import read_weights

        state = read_weights(Path(path), "state dict")
        own = self.adapter.state_dict()
        for key, value in state.items():
            if key not in own:
                raise UserError(f"{path}: key '{key}' is not a parameter or buffer of {type(self.adapter).__name__}")
            if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(f"{path}: '{key}' has shape {shape}, the supernet's has {tuple(own[key].shape)}")
        missing = [k for k in own if k not in state]
        if missing:
            raise UserError(f"{path}: no value for '{missing[0]}' ({len(missing)} of the supernet's keys missing)")
        self.adapter.load_state_dict(state)
        return []

    def weights_fingerprint(self) -> str:
        """A hash of the weights every subnet inherits (the largest subnet's, lifted)."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.extract(self.space.largest()).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # derived layers ----------------------------------------------------------------------------------
    def _graph_layers(self, c: Candidate) -> list[LayerSpec]:
        """The candidate's float layers, read from the ONNX graph of its lifted subnet (memoized by arch)."""
        key = c.arch
        if key in self._unprofiled:
            raise UnknownLayerError(self._unprofiled[key])
        if key not in self._layers:
            from bitnas.passes.export_onnx import export_static, module_scopes
            from bitnas.supernets.graphcheck import graph_layers, unprofiled_nodes

            static = self.extract(c)
            with tempfile.TemporaryDirectory(prefix="bitnas-adapter-") as tmp:
                exported = export_static(static, Path(tmp) / "subnet.onnx", self.input_shape)
                import onnx

                model = onnx.load(str(exported.path))
            bad = unprofiled_nodes(model)
            if bad:
                scopes = module_scopes(static)
                node = bad[0]
                qn = scopes.get(node.name.rsplit("/", 1)[0], (node.name, None))[0]
                qn = qn[len("body."):] if qn.startswith("body.") else "" if qn == "body" else qn
                msg = (f"{self.where}: module '{qn or '(top level)'}' computes {node.op_type} (ONNX node "
                       f"{node.name}), which bitnas cannot profile; layers it profiles: Conv2d (+BatchNorm, "
                       f"activation, residual add), max and average pooling padded as a conv is, global pooling + "
                       f"Linear, Linear on tokens, LayerNorm, attention, squeeze-excite")
                self._unprofiled[key] = msg
                raise UnknownLayerError(msg)
            self._layers[key] = graph_layers(model)
        return list(self._layers[key])


class AdapterFamily:
    """The family record of an adapter: one space, the adapter's supernet, no training of its own."""

    pretrained = True  # train.epochs may be 0 without train.init: the adapter carries its weights

    def __init__(self, adapter: Any, ref: str):
        self.adapter = adapter
        self.ref = ref
        self.name = str(getattr(adapter, "name", "") or ref)
        self._net: AdaptedSupernet | None = None

    def spaces(self) -> dict[str, str]:
        space = self.adapter.space
        return {space.name: getattr(space, "description", "")}

    def build(self, space: str, in_channels: int, image_size: int, num_classes: int) -> AdaptedSupernet:
        want = (in_channels, image_size, image_size)
        shape = tuple(getattr(self.adapter, "input_shape", want))
        if shape != want:
            raise ConfigError(f"family '{self.ref}': the adapter's supernet reads {list(shape)} inputs, the "
                              f"project's data are {list(want)}")
        if self._net is None:
            self._net = AdaptedSupernet(self.adapter, shape, f"family '{self.ref}'")
        return self._net

    def train(self, supernet: AdaptedSupernet, data: Any, settings: Any, checkpoint: Path | None = None,
              progress: Callable | None = None) -> dict[str, Any]:
        if settings.epochs:
            raise ConfigError(f"family '{self.ref}' is an adapter of a trained supernet, which bitnas does not "
                              "train; set train.epochs: 0")
        return {"fingerprint": settings.init or supernet.weights_fingerprint(), "epochs": 0,
                "note": "adapter: the supernet's weights as given"}

