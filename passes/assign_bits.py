"""AssignBitwidths: write the policy's (w_bits, a_bits) onto the ONNX graph, per node.

The bits go into the model's metadata (one JSON map) and each quantizable node's doc string, so the
quantization passes and the manifest read the same per-node bits from the graph itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from pydantic import Field

from bitnas.config import StrictModel, WorkFileName
from bitnas.errors import ArtifactError, InternalError
from bitnas.io import atomic_write_bytes
from bitnas.passes.export_onnx import QUANT_OPS, OnnxModel
from bitnas.pipeline import Pass, PassContext
from bitnas.space import Bits

POLICY_KEY = "bitnas.layer_bits"


def set_layer_bits(model: onnx.ModelProto, layer_bits: dict[str, Bits]) -> None:
    """Record each layer's bits in ``model`` (metadata and node doc strings)."""
    for p in list(model.metadata_props):
        if p.key == POLICY_KEY:
            model.metadata_props.remove(p)
    model.metadata_props.add(key=POLICY_KEY, value=json.dumps({k: list(v) for k, v in layer_bits.items()}))
    for node in model.graph.node:
        if node.op_type in QUANT_OPS and node.name in layer_bits:
            w, a = layer_bits[node.name]
            node.doc_string = f"bitnas: w{w}a{a}"


def read_layer_bits(model: onnx.ModelProto) -> dict[str, Bits]:
    for p in model.metadata_props:
        if p.key == POLICY_KEY:
            return {k: tuple(v) for k, v in json.loads(p.value).items()}
    return {}


def layer_bits_of(path: Path) -> dict[str, Bits]:
    """The per-layer bits recorded in the ONNX file at ``path`` (error if the graph has none)."""
    bits = read_layer_bits(onnx.load(str(path), load_external_data=False))
    if not bits:
        raise ArtifactError(f"{path}: no per-layer bits on the graph; run AssignBitwidths first")
    return bits


class AssignBitwidths(Pass):
    """Write the candidate's policy onto the exported graph."""

    class Config(StrictModel):
        filename: WorkFileName = Field("bits.onnx", description="file written in the work folder")

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        candidate = ctx.need("candidate", self.name)
        policy = candidate.policy_dict
        missing = [layer for layer in model.layers if layer not in policy]
        if missing:
            raise InternalError(f"policy of {candidate.id} has no bits for layer(s) {missing}")
        onnx_model = onnx.load(str(model.path))
        set_layer_bits(onnx_model, {layer: tuple(policy[layer]) for layer in model.layers})
        dst = ctx.workdir / self.config.filename
        atomic_write_bytes(dst, onnx_model.SerializeToString())
        return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)
