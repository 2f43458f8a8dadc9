"""Compiler passes, one per module; importing this package registers them all."""

from bitnas.passes.assign_bits import AssignBitwidths
from bitnas.passes.export_onnx import ExportOnnx, OnnxModel
from bitnas.passes.extract import ExtractSubnet, RecalibrateBn
from bitnas.passes.inc_ptq import IncStaticPtq, OrtStaticPtq
from bitnas.passes.package import Compact, Package
from bitnas.passes.qaft import Qaft
from bitnas.passes.subbyte import SubByteWeights
from bitnas.passes.subbyte_act import SubByteActivations
from bitnas.passes.verify import Verify

__all__ = ["AssignBitwidths", "Compact", "ExportOnnx", "ExtractSubnet", "IncStaticPtq", "OnnxModel", "OrtStaticPtq", "Package",
           "Qaft", "RecalibrateBn", "SubByteActivations", "SubByteWeights", "Verify"]
