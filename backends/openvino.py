"""OpenVINO on the CPU, reading the ONNX file directly (QDQ format)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from bitnas.api import CPU_BITS, Target
from bitnas.backends.base import Backend, Runner, Timer, register, register_target
from bitnas.errors import ArtifactError
from bitnas.onnxio import load_onnx


def import_openvino() -> ModuleType:
    """``import openvino`` with its usage telemetry off. OpenVINO's model-conversion tools initialize their
    telemetry at import and, with no consent file in the home folder, send an event (a child process looks up
    an analytics host). Their own switch declines it when ``CI=true`` at that moment; it is set for the import
    alone, so nothing is sent later either, no consent file is written, and the environment is left as it was."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        import openvino
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved
    return openvino


@register
class OpenVinoBackend(Backend):
    name = "openvino"
    package = "openvino"

    @classmethod
    def _available(cls) -> bool:
        import_openvino()
        return True

    def fingerprint(self):
        ov = import_openvino()

        fp = super().fingerprint()
        fp["runtime_version"] = ov.get_version()
        return fp

    def _compiled(self, onnx_path: str | Path):
        ov = import_openvino()

        load_onnx(onnx_path, check=False)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # keep float layers in float32: some CPUs would otherwise run them in bf16
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            return core.compile_model(str(onnx_path), "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{onnx_path}: OpenVINO cannot compile the model: {exc}") from None

    def timer(self, onnx_path: str | Path, inputs: Mapping[str, np.ndarray], runner: Runner | None = None) -> Timer:
        """Inputs bound once as shared-memory tensors; a timed call is one synchronous ``infer()``.

        Passing a dict to ``infer`` converts every array and wraps the outputs on each call (~70 us here),
        which is larger than most subnets' own compute and noisier.
        """
        ov = import_openvino()

        compiled = self._compiled(onnx_path)
        request = compiled.create_infer_request()
        arrays = {k: np.ascontiguousarray(v) for k, v in inputs.items()}  # kept alive: the tensors share them
        for port in compiled.inputs:
            name = port.get_any_name()
            if name not in arrays:
                raise ArtifactError(f"{onnx_path}: no value given for the model's input '{name}'")
            request.set_tensor(port, ov.Tensor(arrays[name], shared_memory=True))

        def call(request=request, keep=arrays):
            request.infer()

        return call

    def compile(self, onnx_path: str | Path) -> Runner:
        compiled = self._compiled(onnx_path)
        request = compiled.create_infer_request()
        n_out = len(compiled.outputs)

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            request.infer(dict(inputs))
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]

        return run


register_target(Target(
    name="openvino-cpu", backend="openvino", bit_options=CPU_BITS, int4_weights=True, bundle=True,
    verify_backends=("ort", "openvino", "tvm"),
    description="this CPU through OpenVINO's CPU plugin, reading the QDQ ONNX file (FP32; INT8, weights of 2-7 bits stored as INT4 or in INT8)",
))
