"""ExportOnnx: a BN-folded static subnet to ONNX, with every Conv/Gemm node named after its layer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from pydantic import Field

from bitnas.config import StrictModel
from bitnas.errors import InternalError
from bitnas.io import atomic_write_bytes
from bitnas.pipeline import Pass, PassContext
from bitnas.supernets.static import StaticNet, fold_bn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
QUANT_OPS = ("Conv", "Gemm")


@dataclass
class OnnxModel:
    """An ONNX file on disk plus the layer name of each quantizable node."""

    path: Path
    layers: list[str] = field(default_factory=list)  # node names == layer names, in forward order
    float_path: Path | None = None  # the FP32 export the model was derived from


def name_layer_nodes(model: onnx.ModelProto, net: StaticNet) -> list[str]:
    """Rename Conv/Gemm nodes, in graph order, to the layer names of ``net``'s units (checked by shape)."""
    units = net.units()
    nodes = [n for n in model.graph.node if n.op_type in QUANT_OPS]
    if len(nodes) != len(units):
        raise InternalError(f"ONNX export has {len(nodes)} Conv/Gemm nodes but the subnet has {len(units)} layers")
    inits = {t.name: t for t in model.graph.initializer}
    for node, unit in zip(nodes, units):
        w = inits.get(node.input[1])
        expected = tuple(unit.conv.weight.shape) if hasattr(unit, "conv") else tuple(unit.fc.weight.shape)
        if w is None or tuple(numpy_helper.to_array(w).shape) != expected:
            raise InternalError(f"ONNX node {node.name} does not match layer {unit.layer_name}")
        node.name = unit.layer_name
    return [u.layer_name for u in units]


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
        filename: str = Field("fp32.onnx", description="file written in the work folder")

    def run(self, model: StaticNet, ctx: PassContext) -> OnnxModel:
        data = ctx.need("data", self.name)
        in_shape = tuple(data.x_train.shape[1:])
        return export_static(model, ctx.workdir / self.config.filename, in_shape, self.config.opset)
