"""ExportOnnx: a BN-folded static subnet to ONNX, with every Conv/Gemm node named after its layer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from pydantic import Field
from torch import nn

from bitnas.config import StrictModel, WorkFileName
from bitnas.errors import InternalError
from bitnas.io import atomic_write_bytes
from bitnas.pipeline import Pass, PassContext
from bitnas.supernets.static import QuantUnit, StaticNet, fold_bn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
QUANT_OPS = ("Conv", "Gemm")
NAMED_OPS = QUANT_OPS + ("LayerNormalization", "Softmax", "MaxPool", "AveragePool")  # named after their layer


@dataclass
class OnnxModel:
    """An ONNX file on disk plus the layer name of each quantizable node."""

    path: Path
    layers: list[str] = field(default_factory=list)  # node names == layer names, in forward order
    float_path: Path | None = None  # the FP32 export the model was derived from


def _scope_segment(qualified_name: str) -> str:
    # the TorchScript exporter names a module's scope from its last non-numeric atom on ("body.1", "expand")
    atoms = qualified_name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return qualified_name


def module_scopes(net: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Scope path -> (qualified name, module): the prefix ``torch.onnx.export`` (dynamo=False) gives node names."""
    out: dict[str, tuple[str, nn.Module]] = {}
    for qn, mod in net.named_modules():
        atoms = qn.split(".") if qn else []
        scope = "".join("/" + _scope_segment(".".join(atoms[:i + 1])) for i in range(len(atoms)))
        out[scope] = (qn, mod)
    return out


def _owner(qn: str, modules: dict[str, nn.Module], kind: type | None) -> str | None:
    """The qualified name of ``qn``'s nearest enclosing module (itself included) of ``kind``, or with a layer name."""
    atoms = qn.split(".") if qn else []
    for i in range(len(atoms), -1, -1):
        name = ".".join(atoms[:i])
        mod = modules[name]
        if (isinstance(mod, kind) if kind is not None else isinstance(getattr(mod, "layer_name", None), str)):
            return name
    return None


def name_layer_nodes(model: onnx.ModelProto, net: StaticNet) -> list[str]:
    """Name nodes after the modules whose scopes hold them; return the quantizable layers in graph order.

    A ``QuantUnit``'s one Conv/Gemm node takes the unit's ``layer_name``; any other Conv, Gemm,
    LayerNormalization or Softmax node takes the ``layer_name`` of its nearest enclosing module that has
    one, plus its module path below it (``s1.b0.se.reduce``, ``l0.ln1``, ``l0.attention``).
    """
    scopes = module_scopes(net)
    modules = dict(net.named_modules())
    inits = {t.name: t for t in model.graph.initializer}
    layers: list[str] = []
    taken: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in NAMED_OPS:
            continue
        entry = scopes.get(node.name.rsplit("/", 1)[0]) if "/" in node.name else None
        if entry is None:
            raise InternalError(f"ONNX node {node.name} ({node.op_type}) is in no module scope of the subnet")
        qn = entry[0]
        unit_qn = _owner(qn, modules, QuantUnit) if node.op_type in QUANT_OPS else None
        if unit_qn is not None:
            unit = modules[unit_qn]
            if unit.layer_name in taken:
                raise InternalError(f"layer {unit.layer_name} exports more than one Conv/Gemm node ({node.name})")
            w = inits.get(node.input[1])
            expected = tuple(unit.conv.weight.shape) if hasattr(unit, "conv") else tuple(unit.fc.weight.shape)
            if w is None or tuple(numpy_helper.to_array(w).shape) != expected:
                raise InternalError(f"ONNX node {node.name} does not match layer {unit.layer_name}")
            node.name = unit.layer_name
            layers.append(unit.layer_name)
        else:
            named = _owner(qn, modules, None)
            base = modules[named].layer_name if named is not None else ""
            rest = qn[len(named) + 1:] if named else qn
            name = stem = ".".join(p for p in (base, rest or node.op_type.lower()) if p)
            k = 1
            while name in taken:
                k += 1
                name = f"{stem}_{k}"
            node.name = name
        taken.add(node.name)
    missing = [u.layer_name for u in net.units() if u.layer_name not in layers]
    if missing:
        raise InternalError(f"layer(s) {missing} have no Conv/Gemm node in the ONNX export")
    return layers


def export_static(net: StaticNet, path: Path, in_shape: tuple[int, ...], opset: int = 17) -> OnnxModel:
    folded = fold_bn(net).eval()
    x = torch.zeros(1, *in_shape)
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            folded, (x,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    layers = name_layer_nodes(model, folded)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return OnnxModel(path=path, layers=layers, float_path=path)


class ExportOnnx(Pass):
    """Export the static subnet (BatchNorm folded) with a dynamic batch axis."""

    class Config(StrictModel):
        opset: int = Field(17, ge=13, le=21, description="ONNX opset of the exported graph")
        filename: WorkFileName = Field("fp32.onnx", description="file written in the work folder")
        check_layers: bool = Field(True, description="check the family's layers() for the candidate against the "
                                                     "exported graph (what the LUT priced is what ships)")

    def run(self, model: StaticNet, ctx: PassContext) -> OnnxModel:
        data = ctx.need("data", self.name)
        in_shape = (data.in_channels, data.image_size, data.image_size)
        out = export_static(model, ctx.workdir / self.config.filename, in_shape, self.config.opset)
        supernet, candidate = ctx.inputs.get("supernet"), ctx.inputs.get("candidate")
        if self.config.check_layers and supernet is not None and candidate is not None:
            from bitnas.space import FLOAT_BITS
            from bitnas.supernets.graphcheck import compare_layers, graph_layers

            compare_layers([s.with_bits(FLOAT_BITS) for s in supernet.layers(candidate)],
                           graph_layers(onnx.load(str(out.path))),
                           f"space '{supernet.space.name}', candidate {candidate.id}, {self.name}")
        return out
