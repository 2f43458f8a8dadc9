"""OpenVINO on the CPU, reading the ONNX file directly (QDQ format)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bitnas.backends.base import Backend, Runner, register
from bitnas.errors import ArtifactError
from bitnas.onnxio import load_onnx


@register
class OpenVinoBackend(Backend):
    name = "openvino"
    package = "openvino"

    @classmethod
    def _available(cls) -> bool:
        import openvino  # noqa: F401

        return True

    def fingerprint(self):
        import openvino as ov

        fp = super().fingerprint()
        fp["runtime_version"] = ov.get_version()
        return fp

    def compile(self, onnx_path: str | Path) -> Runner:
        import openvino as ov

        load_onnx(onnx_path, check=False)
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            # keep float layers in float32: some CPUs would otherwise run them in bf16
            "INFERENCE_PRECISION_HINT": "f32",
        }
        try:
            compiled = core.compile_model(str(onnx_path), "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{onnx_path}: OpenVINO cannot compile the model: {exc}") from None
        request = compiled.create_infer_request()
        n_out = len(compiled.outputs)

        def run(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            request.infer(dict(inputs))
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]

        return run
