"""Compiler passes, one per module; importing this package registers them all."""

from bitnas.passes.export_onnx import ExportOnnx, OnnxModel
from bitnas.passes.extract import ExtractSubnet, RecalibrateBn
from bitnas.passes.inc_ptq import IncStaticPtq
from bitnas.passes.package import Package
from bitnas.passes.verify import Verify

__all__ = ["ExportOnnx", "ExtractSubnet", "IncStaticPtq", "OnnxModel", "Package", "RecalibrateBn", "Verify"]
