"""IncStaticPtq: static post-training quantization with Intel Neural Compressor (ONNX flavour), QDQ format.

Only the nodes the policy puts at 8 bits are quantized (weights per-channel symmetric INT8, activations
per-tensor asymmetric UINT8); the rest stay float. ``reduce_range`` (7-bit weights) defaults to on when
the CPU lacks an INT8 dot-product instruction, where u8s8 products can saturate.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import Field

from bitnas.config import StrictModel
from bitnas.errors import InternalError, MissingDependencyError, UserError
from bitnas.fingerprint import has_vnni
from bitnas.io import atomic_write_bytes
from bitnas.passes.export_onnx import INPUT_NAME, QUANT_OPS, OnnxModel
from bitnas.pipeline import Pass, PassContext
from bitnas.space import Bits
from bitnas.supernets.evaluate import calibration_batches

POLICY_KEY = "bitnas.layer_bits"


def resolve_reduce_range(setting: bool | Literal["auto"]) -> bool:
    return (not has_vnni()) if setting == "auto" else bool(setting)


def _reader(batches: Sequence[np.ndarray], input_name: str):
    from onnx_neural_compressor import data_reader

    class _Reader(data_reader.CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(batches):
                return None
            self.i += 1
            return {input_name: batches[self.i - 1]}

        def rewind(self):
            self.i = 0

    return _Reader()


def inc_quantize_qdq(src: Path, dst: Path, nodes: Iterable[str], calib: Sequence[np.ndarray],
                     reduce_range: bool, input_name: str = INPUT_NAME,
                     calibrate_method: str = "minmax") -> None:
    """Quantize ``nodes`` of ``src`` to INT8 QDQ with INC and write ``dst``; node names are kept."""
    try:
        from onnx_neural_compressor.quantization import quantize
        from onnx_neural_compressor.quantization.config import StaticQuantConfig
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    except ImportError as exc:
        raise MissingDependencyError("onnx-neural-compressor", f"static PTQ ({exc})") from None
    nodes = list(nodes)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    logging.getLogger("onnx_neural_compressor").setLevel(logging.ERROR)
    cfg = StaticQuantConfig(
        _reader(calib, input_name), calibrate_method=method, quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        reduce_range=reduce_range, nodes_to_quantize=nodes, execution_provider="CPUExecutionProvider",
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    tmp = dst.with_name(dst.name + ".inc.onnx")
    quantize(str(src), str(tmp), cfg)
    model = onnx.load(str(tmp))
    tmp.unlink(missing_ok=True)
    wanted = set(nodes)
    for node in model.graph.node:
        if node.op_type in QUANT_OPS and node.name.endswith("_quant") and node.name[:-6] in wanted:
            node.name = node.name[:-6]
    atomic_write_bytes(dst, model.SerializeToString())


def write_layer_bits(path: Path, layer_bits: dict[str, Bits]) -> None:
    """Record each layer's (w_bits, a_bits) in the model's metadata."""
    model = onnx.load(str(path))
    for p in list(model.metadata_props):
        if p.key == POLICY_KEY:
            model.metadata_props.remove(p)
    model.metadata_props.add(key=POLICY_KEY, value=json.dumps({k: list(v) for k, v in layer_bits.items()}))
    atomic_write_bytes(path, model.SerializeToString())


def read_layer_bits(model: onnx.ModelProto) -> dict[str, Bits]:
    for p in model.metadata_props:
        if p.key == POLICY_KEY:
            return {k: tuple(v) for k, v in json.loads(p.value).items()}
    return {}


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of Conv/Gemm nodes whose weight arrives through a DequantizeLinear (i.e. run in INT8)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for n in model.graph.node:
        if n.op_type in QUANT_OPS and len(n.input) > 1:
            p = producers.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                out.add(n.name)
    return out


class IncStaticPtq(Pass):
    """INT8 static PTQ of the layers the policy puts at 8 bits; float elsewhere."""

    class Config(StrictModel):
        calibration_batches: int = Field(4, ge=1, description="training batches used for calibration")
        calibration_batch_size: int = Field(64, ge=1, description="images per calibration batch")
        calibrate_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="range estimator")
        reduce_range: bool | Literal["auto"] = Field("auto", description="7-bit weights; auto: on without VNNI")
        filename: str = Field("int8.onnx", description="file written in the work folder")

    def run(self, model: OnnxModel, ctx: PassContext) -> OnnxModel:
        candidate = ctx.need("candidate", self.name)
        data = ctx.need("data", self.name)
        policy = candidate.policy_dict
        bits = {layer: tuple(policy.get(layer, (32, 32))) for layer in model.layers}
        unsupported = {k: v for k, v in bits.items() if v not in ((8, 8), (32, 32))}
        if unsupported:
            name, b = next(iter(unsupported.items()))
            raise UserError(f"IncStaticPtq runs INT8 or float per layer; layer '{name}' asks for W{b[0]}A{b[1]}")
        nodes = [k for k, v in bits.items() if v == (8, 8)]
        dst = ctx.workdir / self.config.filename
        reduce_range = resolve_reduce_range(self.config.reduce_range)
        ctx.results.setdefault("quantization", {}).update({
            "engine": "onnx-neural-compressor", "format": "QDQ", "weights": "int8 per-channel symmetric",
            "activations": "uint8 per-tensor asymmetric", "reduce_range": reduce_range,
            "calibration": {"method": self.config.calibrate_method, "batches": self.config.calibration_batches,
                            "batch_size": self.config.calibration_batch_size},
            "int8_layers": len(nodes), "float_layers": len(bits) - len(nodes),
        })
        if not nodes:
            shutil.copyfile(model.path, dst)
        else:
            # the same batches the search's simulated quantization calibrates on, so the two agree
            batches = [b.numpy() for b in calibration_batches(data, self.config.calibration_batches,
                                                              self.config.calibration_batch_size, ctx.seed)]
            inc_quantize_qdq(model.path, dst, nodes, batches, reduce_range,
                             calibrate_method=self.config.calibrate_method)
        write_layer_bits(dst, bits)
        got = quantized_nodes(onnx.load(str(dst)))
        if got != set(nodes):
            raise InternalError(f"quantizer put INT8 on {sorted(got)} but the policy asks for {sorted(nodes)}")
        return OnnxModel(path=dst, layers=model.layers, float_path=model.float_path)
